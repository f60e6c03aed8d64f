//! Persistent reservations through the target: the fence_scsi sequence,
//! every type's access matrix, unit attentions, and a file-backed store
//! shared by two targets on one image.

mod common;

use std::sync::Arc;

use common::*;
use tern_scsi::sense::Asc;
use tern_scsi::store::{FileStore, ReservationStore};
use tern_scsi::{DiskConfig, NexusId, ScsiTarget, Status};

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const PREEMPT_AND_ABORT: u8 = 5;
const REGISTER_IGNORE: u8 = 6;

fn pr(
    t: &ScsiTarget,
    n: &NexusId,
    sa: u8,
    rtype: u8,
    key: u64,
    sa_key: u64,
) -> tern_scsi::Response {
    let (cdb, p) = prout(sa, rtype, key, sa_key);
    run(t, n, 0, &cdb, &p, 0)
}

fn keys(t: &ScsiTarget, n: &NexusId) -> (u32, Vec<u64>) {
    let d = good(t, n, 0, &prin(0), &[], 4096);
    let len = be32(&d[4..8]) as usize;
    (be32(&d[0..4]), d[8..8 + len].chunks(8).map(be64).collect())
}

fn reservation(t: &ScsiTarget, n: &NexusId) -> Option<(u64, u8)> {
    let d = good(t, n, 0, &prin(1), &[], 4096);
    if be32(&d[4..8]) == 0 {
        None
    } else {
        Some((be64(&d[8..16]), d[21] & 0x0F))
    }
}

/// Runs the fence_scsi sequence between `a` on `ta` and `b` on `tb` (the
/// same target or two targets sharing the disk's reservations).
fn fence_scsi(ta: &ScsiTarget, tb: &ScsiTarget, a: &NexusId, b: &NexusId) {
    let ka = 0xA1A1_0000_0000_0001;
    let kb = 0xB2B2_0000_0000_0002;
    // Both register ignoring any existing key.
    assert_eq!(pr(ta, a, REGISTER_IGNORE, 0, 0, ka).status, Status::Good);
    assert_eq!(pr(tb, b, REGISTER_IGNORE, 0, 0, kb).status, Status::Good);
    let (generation, k) = keys(ta, a);
    assert_eq!(k, vec![ka, kb]);
    assert_eq!(generation, 2);
    // a reserves Write Exclusive, Registrants Only.
    assert_eq!(pr(ta, a, RESERVE, 5, ka, 0).status, Status::Good);
    assert_eq!(reservation(tb, b), Some((ka, 5)));
    // b's writes succeed while it is registered.
    good(tb, b, 0, &write10(7, 1, false), &[0xBB; 512], 0);
    good(ta, a, 0, &write10(8, 1, false), &[0xAA; 512], 0);
    // a preempts and aborts b.
    assert_eq!(pr(ta, a, PREEMPT_AND_ABORT, 5, ka, kb).status, Status::Good);
    assert_eq!(keys(ta, a).1, vec![ka]);
    // b hears REGISTRATIONS PREEMPTED, then its write conflicts.
    check(
        &run(tb, b, 0, &write10(7, 1, false), &[0xBB; 512], 0),
        6,
        Asc::REGISTRATIONS_PREEMPTED,
    );
    let r = run(tb, b, 0, &write10(7, 1, false), &[0xCC; 512], 0);
    assert_eq!(r.status, Status::ReservationConflict);
    assert!(r.sense.is_empty());
    // Reads are still allowed under a write-exclusive type.
    assert_eq!(good(tb, b, 0, &read10(7, 1), &[], 512), vec![0xBB; 512]);
    // b cannot re-reserve or clear; it can register again.
    assert_eq!(
        pr(tb, b, RESERVE, 5, kb, 0).status,
        Status::ReservationConflict
    );
    assert_eq!(
        pr(tb, b, CLEAR, 0, kb, 0).status,
        Status::ReservationConflict
    );
    assert_eq!(pr(tb, b, REGISTER_IGNORE, 0, 0, kb).status, Status::Good);
    good(tb, b, 0, &write10(7, 1, false), &[0xDD; 512], 0);
}

#[test]
fn fence_scsi_sequence_on_one_target() {
    let a = nexus("node-a");
    let b = NexusId::Iscsi {
        iqn: "iqn.2026-01.test:node-b".into(),
        isid: [0x80, 0, 0, 0, 0, 2],
    };
    let (t, _) = disk_target(1 << 20, false, &[&a, &b]);
    fence_scsi(&t, &t, &a, &b);
    // READ FULL STATUS names both, with a as the holder.
    let d = good(&t, &a, 0, &prin(3), &[], 4096);
    let len = be32(&d[4..8]) as usize;
    assert_eq!(d.len(), 8 + len);
    assert_eq!(d[8 + 12], 1, "a holds it");
    assert_eq!(d[8 + 13], 5);
    let a_tid = a.transport_id();
    assert_eq!(be32(&d[8 + 20..8 + 24]) as usize, a_tid.len());
    assert_eq!(&d[8 + 24..8 + 24 + a_tid.len()], &a_tid[..]);
}

#[test]
fn fence_scsi_sequence_across_two_workers_sharing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.vhdx");
    vhdx::create(&image, &vhdx::CreateOptions::dynamic(8 << 20)).unwrap();
    // One open disk (one host process); each "worker" has its own store
    // instance on the same file, as two processes would.
    let disk = tern_block::open(&tern_block::OpenOptions::new(&image)).unwrap();
    let mk = || {
        let t = ScsiTarget::new();
        let mut cfg = DiskConfig::new(disk.clone());
        cfg.serial = Some("shared-disk-1".into());
        cfg.reservations =
            Some(Arc::new(FileStore::for_image(&image)) as Arc<dyn ReservationStore>);
        t.add_disk(0, cfg).unwrap();
        t
    };
    let (ta, tb) = (mk(), mk());
    let a = nexus("vm-a");
    let b = nexus("vm-b");
    clear_ua(&ta, &a, 0);
    clear_ua(&tb, &b, 0);
    // Both report the same device identifier.
    assert_eq!(
        good(&ta, &a, 0, &inquiry(true, 0x83, 255), &[], 255),
        good(&tb, &b, 0, &inquiry(true, 0x83, 255), &[], 255)
    );
    fence_scsi(&ta, &tb, &a, &b);
    // The file holds the state: a third worker (a restart) sees it, and the
    // saved state of a file-backed target carries no reservations.
    let tc = mk();
    let c = nexus("vm-c");
    clear_ua(&tc, &c, 0);
    assert_eq!(reservation(&tc, &c).map(|r| r.1), Some(5));
    let r = run(&tc, &c, 0, &write10(0, 1, false), &[1; 512], 0);
    assert_eq!(r.status, Status::ReservationConflict);
    assert!(ta.save().unwrap().luns[0].reservations.is_none());
    assert!(dir.path().join("shared.vhdx.pr").exists());
}

#[test]
fn access_matrix_of_all_six_types_through_the_target() {
    let holder = nexus("holder");
    let registrant = nexus("registrant");
    let other = nexus("other");
    // (type, registrant read/write, other read/write); the holder may do both.
    let table = [
        (1, [true, false], [true, false]),
        (3, [false, false], [false, false]),
        (5, [true, true], [true, false]),
        (6, [true, true], [false, false]),
        (7, [true, true], [true, false]),
        (8, [true, true], [false, false]),
    ];
    for (rtype, reg, oth) in table {
        let (t, _) = disk_target(1 << 20, false, &[&holder, &registrant, &other]);
        assert_eq!(pr(&t, &holder, REGISTER, 0, 0, 1).status, Status::Good);
        assert_eq!(pr(&t, &registrant, REGISTER, 0, 0, 2).status, Status::Good);
        assert_eq!(pr(&t, &holder, RESERVE, rtype, 1, 0).status, Status::Good);
        for (n, want) in [(&holder, [true, true]), (&registrant, reg), (&other, oth)] {
            let read = run(&t, n, 0, &read10(0, 1), &[], 512).status;
            let write = run(&t, n, 0, &write10(0, 1, false), &[0; 512], 0).status;
            let expect = |ok: bool| {
                if ok {
                    Status::Good
                } else {
                    Status::ReservationConflict
                }
            };
            assert_eq!(read, expect(want[0]), "type {rtype} read");
            assert_eq!(write, expect(want[1]), "type {rtype} write");
            // SYNCHRONIZE CACHE and MODE SELECT are write-class, MODE SENSE
            // read-class; INQUIRY, READ CAPACITY and PR IN always work.
            let sync = run(&t, n, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).status;
            assert_eq!(sync, expect(want[1]), "type {rtype} sync cache");
            let ms = run(&t, n, 0, &[0x1A, 0, 0x3F, 0, 255, 0], &[], 255).status;
            assert_eq!(ms, expect(want[0]), "type {rtype} mode sense");
            good(&t, n, 0, &inquiry(false, 0, 96), &[], 96);
            good(&t, n, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
            good(&t, n, 0, &prin(0), &[], 255);
            good(&t, n, 0, &tur(), &[], 0);
        }
        // READ RESERVATION reports key 0 for all-registrants types.
        let want_key = if rtype >= 7 { 0 } else { 1 };
        assert_eq!(reservation(&t, &other), Some((want_key, rtype)));
    }
}

#[test]
fn prout_errors_and_unit_attentions() {
    let a = nexus("a");
    let b = nexus("b");
    let (t, _) = disk_target(1 << 20, false, &[&a, &b]);
    // Parameter list length must be 24.
    let (mut cdb, p) = prout(REGISTER, 0, 0, 1);
    cdb[8] = 20;
    check(
        &run(&t, &a, 0, &cdb, &p, 0),
        5,
        Asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    // Less data than the length: the transport's overrun.
    let (cdb, p) = prout(REGISTER, 0, 0, 1);
    assert!(run(&t, &a, 0, &cdb, &p[..10], 0).overrun);
    // SPEC_I_PT and ALL_TG_PT are refused.
    let (cdb, mut p) = prout(REGISTER, 0, 0, 1);
    p[20] = 0x04;
    check(
        &run(&t, &a, 0, &cdb, &p, 0),
        5,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    // REGISTER AND MOVE is not supported; bad type; bad scope.
    let (mut cdb, p) = prout(REGISTER, 0, 0, 1);
    cdb[1] = 7;
    check(&run(&t, &a, 0, &cdb, &p, 0), 5, Asc::INVALID_FIELD_IN_CDB);
    assert_eq!(pr(&t, &a, REGISTER, 0, 0, 1).status, Status::Good);
    check(&pr(&t, &a, RESERVE, 2, 1, 0), 5, Asc::INVALID_FIELD_IN_CDB);
    check(
        &pr(&t, &a, RESERVE, 0x11, 1, 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // Unregistered nexus: everything but REGISTER conflicts.
    for sa in [RESERVE, RELEASE, CLEAR, PREEMPT] {
        assert_eq!(
            pr(&t, &b, sa, 1, 0, 1).status,
            Status::ReservationConflict,
            "sa {sa}"
        );
    }
    // A reservation key that is not ours.
    assert_eq!(
        pr(&t, &a, RESERVE, 1, 9, 0).status,
        Status::ReservationConflict
    );
    // RELEASE of another type.
    assert_eq!(pr(&t, &a, RESERVE, 6, 1, 0).status, Status::Good);
    check(&pr(&t, &a, RELEASE, 1, 1, 0), 5, Asc::INVALID_RELEASE_OF_PR);
    // b registers, a releases a registrants-only type: b hears 2A/04.
    assert_eq!(pr(&t, &b, REGISTER, 0, 0, 2).status, Status::Good);
    assert_eq!(pr(&t, &a, RELEASE, 6, 1, 0).status, Status::Good);
    check(
        &run(&t, &b, 0, &tur(), &[], 0),
        6,
        Asc::RESERVATIONS_RELEASED,
    );
    // a clears: b hears 2A/03; the generation went up.
    let (g, _) = keys(&t, &a);
    assert_eq!(pr(&t, &a, CLEAR, 0, 1, 0).status, Status::Good);
    assert_eq!(keys(&t, &a), (g + 1, vec![]));
    // REQUEST SENSE reports (and clears) the UA.
    let s = good(&t, &b, 0, &request_sense(false), &[], 252);
    assert_eq!((s[2], s[12], s[13]), (6, 0x2A, 0x03));
    good(&t, &b, 0, &tur(), &[], 0);
    // REPORT CAPABILITIES; APTPL is reported after a REGISTER with it.
    let c = good(&t, &a, 0, &prin(2), &[], 255);
    assert_eq!(c, vec![0, 8, 0x01, 0x80, 0xEA, 0x01, 0, 0]);
    let (cdb, mut p) = prout(REGISTER, 0, 0, 5);
    p[20] = 1;
    good(&t, &a, 0, &cdb, &p, 0);
    assert_eq!(good(&t, &a, 0, &prin(2), &[], 255)[3], 0x81);
    // PR IN with a bad service action; allocation length cuts the data.
    check(
        &run(&t, &a, 0, &prin(4), &[], 255),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    let mut short = prin(0);
    short[7] = 0;
    short[8] = 4;
    assert_eq!(good(&t, &a, 0, &short, &[], 255).len(), 4);
    // PREEMPT of a key nobody holds conflicts; of key 0 is invalid.
    assert_eq!(
        pr(&t, &a, PREEMPT, 1, 5, 77).status,
        Status::ReservationConflict
    );
    check(
        &pr(&t, &a, PREEMPT, 1, 5, 0),
        5,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
}

#[test]
fn reservations_survive_save_and_restore() {
    let a = nexus("a");
    let b = nexus("b");
    let (t, disk) = disk_target(1 << 20, false, &[&a, &b]);
    assert_eq!(pr(&t, &a, REGISTER, 0, 0, 1).status, Status::Good);
    assert_eq!(pr(&t, &a, RESERVE, 1, 1, 0).status, Status::Good);
    let saved = t.save().unwrap();
    let json = serde_json::to_string(&saved).unwrap();
    let back: tern_scsi::state::TargetSaved = serde_json::from_str(&json).unwrap();
    // A fresh target (the migration destination) with the same disk.
    let t2 = ScsiTarget::new();
    t2.add_disk(0, DiskConfig::new(disk)).unwrap();
    t2.restore(&back).unwrap();
    // Initiators already seen stay seen: no POWER ON on the destination.
    assert_eq!(reservation(&t2, &b), Some((1, 1)));
    assert_eq!(
        run(&t2, &b, 0, &write10(0, 1, false), &[0; 512], 0).status,
        Status::ReservationConflict
    );
    good(&t2, &a, 0, &write10(0, 1, false), &[0; 512], 0);
}
