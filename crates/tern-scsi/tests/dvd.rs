//! MMC-6 DVD drive: ISO media, tray, prevention, media events.

mod common;

use std::sync::Arc;

use common::*;
use tern_block::BlockBackend;
use tern_scsi::sense::Asc;
use tern_scsi::{DvdConfig, ScsiTarget, Status, TargetError};

/// An ISO-like file: 64 blocks of 2048 bytes, each block filled with its number.
fn iso(dir: &std::path::Path, name: &str, blocks: u64) -> Arc<dyn BlockBackend> {
    let p = dir.join(name);
    let mut bytes = Vec::new();
    for b in 0..blocks {
        bytes.extend(std::iter::repeat_n(b as u8 ^ name.len() as u8, 2048));
    }
    std::fs::write(&p, bytes).unwrap();
    tern_scsi::open_iso(&p).unwrap()
}

fn dvd_target(medium: Option<Arc<dyn BlockBackend>>) -> ScsiTarget {
    let t = ScsiTarget::new();
    t.add_dvd(
        0,
        DvdConfig {
            serial: "dvd0".into(),
            medium,
        },
    )
    .unwrap();
    t
}

fn gesn() -> Vec<u8> {
    vec![0x4A, 0x01, 0, 0, 0x10, 0, 0, 0, 8, 0]
}

fn eject() -> Vec<u8> {
    vec![0x1B, 0, 0, 0, 0x02, 0]
}

fn load() -> Vec<u8> {
    vec![0x1B, 0, 0, 0, 0x03, 0]
}

fn prevent(on: bool) -> Vec<u8> {
    vec![0x1E, 0, 0, 0, on as u8, 0]
}

#[test]
fn reads_an_iso_and_describes_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = nexus("a");
    let t = dvd_target(Some(iso(dir.path(), "a.iso", 64)));
    let inq = good(&t, &a, 0, &inquiry(false, 0, 96), &[], 96);
    assert_eq!((inq[0], inq[1]), (5, 0x80));
    clear_ua(&t, &a, 0);
    let cap = good(&t, &a, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!((be32(&cap[0..4]), be32(&cap[4..8])), (63, 2048));
    let d = good(&t, &a, 0, &read10(3, 2), &[], 4096);
    assert!(d[..2048].iter().all(|&b| b == 3 ^ 5) && d[2048..].iter().all(|&b| b == 4 ^ 5));
    assert_eq!(good(&t, &a, 0, &rw12(0xA8, 63, 1), &[], 2048).len(), 2048);
    check(
        &run(&t, &a, 0, &read10(63, 2), &[], 4096),
        5,
        Asc::LBA_OUT_OF_RANGE,
    );
    // Disk commands are not DVD commands.
    check(
        &run(&t, &a, 0, &write10(0, 1, false), &[0; 2048], 0),
        5,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    check(
        &run(&t, &a, 0, &rw16(0x88, 0, 1), &[], 2048),
        5,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    // READ TOC format 0, LBA and MSF; format 1; bad track; bad format.
    let toc = good(&t, &a, 0, &[0x43, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0], &[], 255);
    assert_eq!(&toc[0..4], &[0, 18, 1, 1]);
    assert_eq!(&toc[4..12], &[0, 0x14, 1, 0, 0, 0, 0, 0]);
    assert_eq!(&toc[12..16], &[0, 0x14, 0xAA, 0]);
    assert_eq!(be32(&toc[16..20]), 64);
    let toc = good(
        &t,
        &a,
        0,
        &[0x43, 0x02, 0, 0, 0, 0, 0, 0, 0xFF, 0],
        &[],
        255,
    );
    assert_eq!(&toc[8..12], &[0, 0, 2, 0], "track 1 at 00:02:00");
    let leadout = good(
        &t,
        &a,
        0,
        &[0x43, 0, 0, 0, 0, 0, 0xAA, 0, 0xFF, 0],
        &[],
        255,
    );
    assert_eq!(leadout.len(), 12);
    let sess = good(&t, &a, 0, &[0x43, 0, 1, 0, 0, 0, 0, 0, 0xFF, 0], &[], 255);
    assert_eq!(&sess[0..4], &[0, 10, 1, 1]);
    check(
        &run(&t, &a, 0, &[0x43, 0, 0, 0, 0, 0, 2, 0, 0xFF, 0], &[], 255),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    check(
        &run(&t, &a, 0, &[0x43, 0, 2, 0, 0, 0, 0, 0, 0xFF, 0], &[], 255),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // GET CONFIGURATION: DVD-ROM is the current profile.
    let cfg = good(&t, &a, 0, &[0x46, 0, 0, 0, 0, 0, 0, 0x04, 0, 0], &[], 1024);
    assert_eq!(be32(&cfg[0..4]) as usize, cfg.len() - 4);
    assert_eq!(&cfg[6..8], &[0, 0x10]);
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        let mut at = 8;
        while at + 4 <= cfg.len() {
            v.push(u16::from_be_bytes([cfg[at], cfg[at + 1]]));
            at += 4 + cfg[at + 3] as usize;
        }
        v
    };
    assert_eq!(codes, vec![0, 1, 2, 3, 0x10, 0x1F]);
    let one = good(
        &t,
        &a,
        0,
        &[0x46, 2, 0, 0x03, 0, 0, 0, 0x04, 0, 0],
        &[],
        1024,
    );
    assert_eq!(&one[8..12], &[0, 3, 0x03, 4]);
    check(
        &run(&t, &a, 0, &[0x46, 3, 0, 0, 0, 0, 0, 0x04, 0, 0], &[], 1024),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // READ DISC INFORMATION, MODE SENSE 2Ah.
    let di = good(&t, &a, 0, &[0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0], &[], 34);
    assert_eq!(&di[0..4], &[0, 0x20, 0x0E, 1]);
    check(
        &run(&t, &a, 0, &[0x51, 1, 0, 0, 0, 0, 0, 0, 34, 0], &[], 34),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    let m = good(&t, &a, 0, &[0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 255, 0], &[], 255);
    assert_eq!(&m[6..8], &[0, 0], "no block descriptors");
    assert_eq!(&m[8..10], &[0x2A, 0x14]);
    check(
        &run(&t, &a, 0, &[0x5A, 0, 0x08, 0, 0, 0, 0, 0, 255, 0], &[], 255),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // GESN must be polled.
    check(
        &run(&t, &a, 0, &[0x4A, 0, 0, 0, 0x10, 0, 0, 0, 8, 0], &[], 8),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    let ev = good(&t, &a, 0, &[0x4A, 1, 0, 0, 0x02, 0, 0, 0, 8, 0], &[], 8);
    assert_eq!(ev, vec![0, 2, 0x80, 0x10], "no requested class: NEA");
}

#[test]
fn empty_drive_is_not_ready() {
    let a = nexus("a");
    let t = dvd_target(None);
    clear_ua(&t, &a, 0);
    // REQUEST SENSE describes the condition, with GOOD status.
    let s = good(&t, &a, 0, &request_sense(false), &[], 252);
    assert_eq!((s[2], s[12], s[13]), (2, 0x3A, 0x01));
    check(
        &run(&t, &a, 0, &tur(), &[], 0),
        2,
        Asc::MEDIUM_NOT_PRESENT_TRAY_CLOSED,
    );
    check(
        &run(&t, &a, 0, &read10(0, 1), &[], 2048),
        2,
        Asc::MEDIUM_NOT_PRESENT_TRAY_CLOSED,
    );
    check(
        &run(&t, &a, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8),
        2,
        Asc::MEDIUM_NOT_PRESENT_TRAY_CLOSED,
    );
    check(
        &run(&t, &a, 0, &[0x43, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0], &[], 255),
        2,
        Asc::MEDIUM_NOT_PRESENT_TRAY_CLOSED,
    );
    // GET CONFIGURATION still answers: no current profile.
    let cfg = good(&t, &a, 0, &[0x46, 1, 0, 0, 0, 0, 0, 0x04, 0, 0], &[], 1024);
    assert_eq!(&cfg[6..8], &[0, 0]);
    good(&t, &a, 0, &eject(), &[], 0);
    check(
        &run(&t, &a, 0, &tur(), &[], 0),
        2,
        Asc::MEDIUM_NOT_PRESENT_TRAY_OPEN,
    );
    let ev = good(&t, &a, 0, &gesn(), &[], 8);
    assert_eq!(&ev[4..6], &[0, 0x01], "no event; tray open, no medium");
}

#[test]
fn prevent_eject_insert_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let a = nexus("a");
    let b = nexus("b");
    let t = dvd_target(Some(iso(dir.path(), "a.iso", 16)));
    clear_ua(&t, &a, 0);
    clear_ua(&t, &b, 0);
    // The guest prevents removal: its eject and the host's fail.
    good(&t, &a, 0, &prevent(true), &[], 0);
    let m = good(&t, &a, 0, &[0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 255, 0], &[], 255);
    assert_eq!(m[8 + 6] & 0x02, 0x02, "lock state");
    check(
        &run(&t, &a, 0, &eject(), &[], 0),
        5,
        Asc::MEDIUM_REMOVAL_PREVENTED,
    );
    check(
        &run(&t, &b, 0, &eject(), &[], 0),
        5,
        Asc::MEDIUM_REMOVAL_PREVENTED,
    );
    assert!(matches!(
        t.eject_medium(0, false),
        Err(TargetError::RemovalPrevented(0))
    ));
    // The host's attempt is an eject request to the guest.
    let ev = good(&t, &a, 0, &gesn(), &[], 8);
    assert_eq!(ev, vec![0, 6, 0x04, 0x10, 1, 0x02, 0, 0]);
    let ev = good(&t, &a, 0, &gesn(), &[], 8);
    assert_eq!(ev[4], 0, "reported once");
    assert!(t.medium_present(0).unwrap());
    // Changer bits are refused; ALLOW from the guest; eject works.
    check(
        &run(&t, &a, 0, &[0x1E, 0, 0, 0, 2, 0], &[], 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    good(&t, &a, 0, &prevent(false), &[], 0);
    good(&t, &a, 0, &eject(), &[], 0);
    assert!(!t.medium_present(0).unwrap());
    let ev = good(&t, &a, 0, &gesn(), &[], 8);
    assert_eq!(&ev[4..6], &[3, 0x01], "media removal, tray open");
    check(
        &run(&t, &a, 0, &tur(), &[], 0),
        2,
        Asc::MEDIUM_NOT_PRESENT_TRAY_OPEN,
    );
    // Load: the same medium comes back; the other initiator hears 28/00.
    good(&t, &a, 0, &load(), &[], 0);
    let ev = good(&t, &a, 0, &gesn(), &[], 8);
    assert_eq!(&ev[4..6], &[2, 0x02], "new media, present");
    check(
        &run(&t, &b, 0, &tur(), &[], 0),
        6,
        Asc::MEDIUM_MAY_HAVE_CHANGED,
    );
    good(&t, &b, 0, &tur(), &[], 0);
    // The host swaps the medium: NEW MEDIA and 28/00 for everyone.
    let old = t.eject_medium(0, false).unwrap();
    assert!(old.is_some());
    check(
        &run(&t, &a, 0, &tur(), &[], 0),
        2,
        Asc::MEDIUM_NOT_PRESENT_TRAY_CLOSED,
    );
    assert_eq!(good(&t, &a, 0, &gesn(), &[], 8)[4], 3);
    t.insert_medium(0, iso(dir.path(), "bb.iso", 8)).unwrap();
    let ev = good(&t, &a, 0, &gesn(), &[], 8);
    assert_eq!(&ev[4..6], &[2, 0x02]);
    check(
        &run(&t, &a, 0, &tur(), &[], 0),
        6,
        Asc::MEDIUM_MAY_HAVE_CHANGED,
    );
    let cap = good(&t, &a, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(be32(&cap[0..4]), 7);
    let d = good(&t, &a, 0, &read10(1, 1), &[], 2048);
    assert!(d.iter().all(|&b| b == 1 ^ 6));
    // Prevention is per initiator; a forced host eject overrides it.
    check(
        &run(&t, &b, 0, &tur(), &[], 0),
        6,
        Asc::MEDIUM_MAY_HAVE_CHANGED,
    );
    good(&t, &b, 0, &prevent(true), &[], 0);
    good(&t, &a, 0, &prevent(false), &[], 0);
    check(
        &run(&t, &a, 0, &eject(), &[], 0),
        5,
        Asc::MEDIUM_REMOVAL_PREVENTED,
    );
    assert!(t.insert_medium(0, iso(dir.path(), "c.iso", 4)).is_err());
    assert!(t.eject_medium(0, true).unwrap().is_some());
    // A reset ends prevention.
    t.insert_medium(0, iso(dir.path(), "c.iso", 4)).unwrap();
    t.reset();
    clear_ua(&t, &b, 0);
    good(&t, &b, 0, &eject(), &[], 0);
    // Host-side calls on a LUN of the wrong kind or none.
    assert!(matches!(
        t.resize(0, 4096, &Default::default()),
        Err(TargetError::WrongKind { .. })
    ));
    assert!(matches!(
        t.eject_medium(9, false),
        Err(TargetError::NoSuchLun(9))
    ));
}

#[test]
fn gesn_runs_past_unit_attentions() {
    let dir = tempfile::tempdir().unwrap();
    let a = nexus("a");
    let t = dvd_target(None);
    t.insert_medium(0, iso(dir.path(), "a.iso", 4)).unwrap();
    // POWER ON still pending: GESN answers anyway and leaves it.
    let r = run(&t, &a, 0, &gesn(), &[], 8);
    assert_eq!(r.status, Status::Good);
    assert_eq!(r.data_in[4], 2);
    check(&run(&t, &a, 0, &tur(), &[], 0), 6, Asc::POWER_ON_RESET);
}
