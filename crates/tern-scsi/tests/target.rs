//! The target: LUN addressing, unit attentions, hot add/remove, resize,
//! saved state.

mod common;

use common::*;
use tern_scsi::fuzzing::mem_disk;
use tern_scsi::sense::Asc;
use tern_scsi::state::TargetSaved;
use tern_scsi::target::lun_to_sam;
use tern_scsi::{DiskConfig, DvdConfig, ScsiTarget, Status, TargetError};

fn luns_of(d: &[u8]) -> Vec<[u8; 8]> {
    let len = be32(&d[0..4]) as usize;
    d[8..8 + len]
        .chunks(8)
        .map(|c| {
            let mut l = [0u8; 8];
            l.copy_from_slice(c);
            l
        })
        .collect()
}

#[test]
fn lun_that_does_not_exist() {
    let a = nexus("a");
    let t = ScsiTarget::new();
    t.add_disk(0, DiskConfig::new(mem_disk(1 << 20, false)))
        .unwrap();
    t.add_disk(300, DiskConfig::new(mem_disk(1 << 20, false)))
        .unwrap();
    // INQUIRY: peripheral qualifier 3, type 1Fh.
    let d = good(&t, &a, 5, &inquiry(false, 0, 96), &[], 96);
    assert_eq!(d[0], 0x7F);
    // REPORT LUNS works through any LUN; both addressing methods.
    let l = luns_of(&good(&t, &a, 5, &report_luns(), &[], 4096));
    assert_eq!(l, vec![lun_to_sam(0), [0x41, 0x2C, 0, 0, 0, 0, 0, 0]]);
    // SELECT REPORT 1 (well-known only): none; 3: invalid; short allocation.
    let mut c = report_luns();
    c[2] = 1;
    assert!(luns_of(&good(&t, &a, 0, &c, &[], 4096)).is_empty());
    c[2] = 3;
    check(&run(&t, &a, 5, &c, &[], 4096), 5, Asc::INVALID_FIELD_IN_CDB);
    let mut c = report_luns();
    c[9] = 8;
    c[8] = 0;
    check(&run(&t, &a, 5, &c, &[], 4096), 5, Asc::INVALID_FIELD_IN_CDB);
    // REQUEST SENSE returns LUN NOT SUPPORTED as data.
    let s = good(&t, &a, 5, &request_sense(false), &[], 252);
    assert_eq!((s[2], s[12]), (5, 0x25));
    // Anything else: CHECK CONDITION, LUN NOT SUPPORTED.
    check(
        &run(&t, &a, 5, &read10(0, 1), &[], 512),
        5,
        Asc::LUN_NOT_SUPPORTED,
    );
    check(
        &run(&t, &a, 5, &[0xFF], &[], 512),
        5,
        Asc::LUN_NOT_SUPPORTED,
    );
    check(
        &run(&t, &a, 5, &inquiry(true, 0x80, 96), &[], 96),
        5,
        Asc::LUN_NOT_SUPPORTED,
    );
    // Host-side limits.
    assert!(matches!(
        t.add_disk(0, DiskConfig::new(mem_disk(4096, false))),
        Err(TargetError::LunExists(0))
    ));
    assert!(matches!(
        t.add_disk(0x4000, DiskConfig::new(mem_disk(4096, false))),
        Err(TargetError::BadLun(0x4000))
    ));
    assert!(matches!(t.remove(7), Err(TargetError::NoSuchLun(7))));
}

#[test]
fn unit_attentions_per_initiator() {
    let a = nexus("a");
    let b = nexus("b");
    let t = ScsiTarget::new();
    t.add_disk(0, DiskConfig::new(mem_disk(1 << 20, false)))
        .unwrap();
    // INQUIRY and REPORT LUNS run with POWER ON pending and leave it.
    good(&t, &a, 0, &inquiry(false, 0, 96), &[], 96);
    good(&t, &a, 0, &report_luns(), &[], 4096);
    // The first other command reports it (once), even an unknown opcode.
    check(
        &run(&t, &a, 0, &[0xC0, 0, 0, 0, 0, 0], &[], 0),
        6,
        Asc::POWER_ON_RESET,
    );
    check(
        &run(&t, &a, 0, &[0xC0, 0, 0, 0, 0, 0], &[], 0),
        5,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    good(&t, &a, 0, &tur(), &[], 0);
    // b has its own.
    check(&run(&t, &b, 0, &tur(), &[], 0), 6, Asc::POWER_ON_RESET);
    good(&t, &b, 0, &tur(), &[], 0);
    // Hot add: existing LUNs report REPORTED LUNS DATA HAS CHANGED; the new
    // LUN starts with POWER ON. REPORT LUNS clears 3F/0E.
    t.add_dvd(
        1,
        DvdConfig {
            serial: "dvd".into(),
            medium: None,
        },
    )
    .unwrap();
    check(
        &run(&t, &a, 0, &tur(), &[], 0),
        6,
        Asc::REPORTED_LUNS_CHANGED,
    );
    good(&t, &b, 0, &report_luns(), &[], 4096);
    good(&t, &b, 0, &tur(), &[], 0);
    check(&run(&t, &a, 1, &tur(), &[], 0), 6, Asc::POWER_ON_RESET);
    // Resize: CAPACITY DATA HAS CHANGED, then the new size.
    t.resize(0, 2 << 20, &Default::default()).unwrap();
    check(
        &run(&t, &a, 0, &read10(0, 1), &[], 512),
        6,
        Asc::CAPACITY_DATA_CHANGED,
    );
    let cap = good(&t, &a, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(be32(&cap[0..4]), 4095);
    check(
        &run(&t, &b, 0, &tur(), &[], 0),
        6,
        Asc::CAPACITY_DATA_CHANGED,
    );
    // Two conditions queue in order.
    t.capacity_changed(0).unwrap();
    t.remove(1).unwrap();
    check(
        &run(&t, &a, 0, &tur(), &[], 0),
        6,
        Asc::CAPACITY_DATA_CHANGED,
    );
    check(
        &run(&t, &a, 0, &tur(), &[], 0),
        6,
        Asc::REPORTED_LUNS_CHANGED,
    );
    good(&t, &a, 0, &tur(), &[], 0);
    // A reset: POWER ON again, which replaces what was queued.
    t.capacity_changed(0).unwrap();
    t.reset();
    check(&run(&t, &b, 0, &tur(), &[], 0), 6, Asc::POWER_ON_RESET);
    good(&t, &b, 0, &tur(), &[], 0);
    assert_eq!(t.luns(), vec![0]);
}

#[test]
fn saved_state_round_trip() {
    let a = nexus("a");
    let b = nexus("b");
    let build = || {
        let t = ScsiTarget::new();
        t.add_disk(0, DiskConfig::new(mem_disk(1 << 20, false)))
            .unwrap();
        t.add_dvd(
            1,
            DvdConfig {
                serial: "dvd".into(),
                medium: Some(mem_disk(64 << 10, true)),
            },
        )
        .unwrap();
        t
    };
    let t = build();
    clear_ua(&t, &a, 0);
    clear_ua(&t, &a, 1);
    t.capacity_changed(0).unwrap();
    // DVD: a prevents removal, b has not been seen.
    good(&t, &a, 1, &[0x1E, 0, 0, 0, 1, 0], &[], 0);
    let saved = t.save().unwrap();
    assert_eq!(saved.version, TargetSaved::VERSION);
    let json = serde_json::to_vec(&saved).unwrap();
    let back: TargetSaved = serde_json::from_slice(&json).unwrap();
    let t2 = build();
    t2.restore(&back).unwrap();
    check(
        &run(&t2, &a, 0, &tur(), &[], 0),
        6,
        Asc::CAPACITY_DATA_CHANGED,
    );
    good(&t2, &a, 0, &tur(), &[], 0);
    check(&run(&t2, &b, 0, &tur(), &[], 0), 6, Asc::POWER_ON_RESET);
    check(
        &run(&t2, &a, 1, &[0x1B, 0, 0, 0, 2, 0], &[], 0),
        5,
        Asc::MEDIUM_REMOVAL_PREVENTED,
    );
    // Version and LUN set are checked; nothing changes on a refusal.
    let mut bad = back.clone();
    bad.version = 2;
    assert!(matches!(
        t2.restore(&bad),
        Err(TargetError::SavedVersion(2))
    ));
    let other = ScsiTarget::new();
    other
        .add_disk(0, DiskConfig::new(mem_disk(4096, false)))
        .unwrap();
    assert!(matches!(
        other.restore(&back),
        Err(TargetError::SavedMismatch(1))
    ));
    let swapped = ScsiTarget::new();
    swapped
        .add_disk(1, DiskConfig::new(mem_disk(4096, false)))
        .unwrap();
    swapped
        .add_disk(0, DiskConfig::new(mem_disk(4096, false)))
        .unwrap();
    assert!(matches!(
        swapped.restore(&back),
        Err(TargetError::SavedMismatch(1))
    ));
    assert_eq!(
        run(&swapped, &a, 1, &tur(), &[], 0).status,
        Status::CheckCondition
    );
}

#[test]
fn logical_unit_reset_touches_one_lun() {
    let a = nexus("a");
    let t = ScsiTarget::new();
    t.add_disk(0, DiskConfig::new(mem_disk(1 << 20, false)))
        .unwrap();
    t.add_disk(1, DiskConfig::new(mem_disk(1 << 20, false)))
        .unwrap();
    clear_ua(&t, &a, 0);
    clear_ua(&t, &a, 1);
    t.reset_lun(1).unwrap();
    good(&t, &a, 0, &tur(), &[], 0);
    check(&run(&t, &a, 1, &tur(), &[], 0), 6, Asc::POWER_ON_RESET);
    assert!(matches!(t.reset_lun(2), Err(TargetError::NoSuchLun(2))));
    // A nexus reset touches only that initiator.
    let b = nexus("b");
    clear_ua(&t, &a, 1);
    clear_ua(&t, &b, 0);
    t.reset_nexus(&a);
    good(&t, &b, 0, &tur(), &[], 0);
    check(&run(&t, &a, 0, &tur(), &[], 0), 6, Asc::POWER_ON_RESET);
    check(&run(&t, &a, 1, &tur(), &[], 0), 6, Asc::POWER_ON_RESET);
}
