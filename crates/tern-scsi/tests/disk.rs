//! SBC-4 disk commands: success and error paths with exact sense data.

mod common;

use common::*;
use tern_scsi::sense::Asc;
use tern_scsi::Status;

const MIB: usize = 1 << 20;

#[test]
fn inquiry_standard_and_vpd() {
    let a = nexus("a");
    let (t, _) = disk_target(MIB, false, &[]);
    // INQUIRY runs with POWER ON pending and leaves it pending.
    let d = good(&t, &a, 0, &inquiry(false, 0, 255), &[], 255);
    assert_eq!(d[0], 0);
    assert_eq!(d[2], 6);
    assert_eq!(&d[8..16], b"TERN    ");
    // Allocation length shorter than the data: truncated, no error.
    assert_eq!(good(&t, &a, 0, &inquiry(false, 0, 5), &[], 255).len(), 5);
    check(&run(&t, &a, 0, &tur(), &[], 0), 6, Asc::POWER_ON_RESET);
    let pages = good(&t, &a, 0, &inquiry(true, 0, 255), &[], 255);
    assert_eq!(&pages[4..], &[0, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
    let serial = good(&t, &a, 0, &inquiry(true, 0x80, 255), &[], 255);
    assert_eq!(&serial[4..], b"fuzz-disk");
    let id = good(&t, &a, 0, &inquiry(true, 0x83, 255), &[], 255);
    assert_eq!(id[4..8], [1, 3, 0, 8]);
    let b0 = good(&t, &a, 0, &inquiry(true, 0xB0, 255), &[], 255);
    assert_eq!(be32(&b0[8..12]), 65536, "maximum transfer length");
    let b1 = good(&t, &a, 0, &inquiry(true, 0xB1, 255), &[], 255);
    assert_eq!(&b1[4..6], &[0, 1]);
    let b2 = good(&t, &a, 0, &inquiry(true, 0xB2, 255), &[], 255);
    assert_eq!(b2[5], 0xE0);
    // Unknown VPD page, page code without EVPD, the obsolete CMDDT bit.
    check(
        &run(&t, &a, 0, &inquiry(true, 0x89, 255), &[], 255),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    check(
        &run(&t, &a, 0, &inquiry(false, 0x80, 255), &[], 255),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    let r = run(&t, &a, 0, &[0x12, 0x02, 0, 0, 255, 0], &[], 255);
    check(&r, 5, Asc::INVALID_FIELD_IN_CDB);
    // The field pointer: CDB byte 1, bit 1.
    assert_eq!(&r.sense[15..18], &[0x80 | 0x40 | 0x08 | 1, 0, 1]);
}

#[test]
fn read_capacity_10_and_16() {
    let a = nexus("a");
    let (t, _) = disk_target(MIB, false, &[&a]);
    let d = good(&t, &a, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(be32(&d[0..4]), 2047);
    assert_eq!(be32(&d[4..8]), 512);
    // The obsolete LBA field must be zero.
    check(
        &run(&t, &a, 0, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[], 8),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    let mut c16 = vec![0u8; 16];
    c16[0] = 0x9E;
    c16[1] = 0x10;
    c16[13] = 32;
    let d = good(&t, &a, 0, &c16, &[], 32);
    assert_eq!(d.len(), 32);
    assert_eq!(be64(&d[0..8]), 2047);
    assert_eq!(d[14] & 0x80, 0x80, "LBPME");
    c16[13] = 12;
    assert_eq!(good(&t, &a, 0, &c16, &[], 32).len(), 12);
    c16[1] = 0x11;
    check(&run(&t, &a, 0, &c16, &[], 32), 5, Asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn read_write_all_sizes_and_ranges() {
    let a = nexus("a");
    let (t, disk) = disk_target(MIB, false, &[&a]);
    let data: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
    good(&t, &a, 0, &write10(10, 2, true), &data, 0);
    assert_eq!(good(&t, &a, 0, &read10(10, 2), &[], 1024), data);
    // The same blocks through the 6, 12 and 16-byte forms.
    assert_eq!(good(&t, &a, 0, &[0x08, 0, 0, 10, 2, 0], &[], 1024), data);
    assert_eq!(good(&t, &a, 0, &rw12(0xA8, 10, 2), &[], 1024), data);
    assert_eq!(good(&t, &a, 0, &rw16(0x88, 10, 2), &[], 1024), data);
    good(&t, &a, 0, &[0x0A, 0, 0, 20, 1, 0], &data[..512], 0);
    good(&t, &a, 0, &rw12(0xAA, 21, 1), &data[512..], 0);
    good(&t, &a, 0, &rw16(0x8A, 22, 1), &data[..512], 0);
    let mut back = vec![0u8; 1536];
    disk.read_at(&mut back, 20 * 512).unwrap();
    assert_eq!(&back[..1024], &data[..]);
    assert_eq!(&back[1024..], &data[..512]);
    // READ(6) with length 0 moves 256 blocks.
    assert_eq!(
        good(&t, &a, 0, &[0x08, 0, 0, 0, 0, 0], &[], 256 * 512).len(),
        256 * 512
    );
    // The last block reads; one past does not, nor an LBA that wraps.
    good(&t, &a, 0, &read10(2047, 1), &[], 512);
    check(
        &run(&t, &a, 0, &read10(2047, 2), &[], 1024),
        5,
        Asc::LBA_OUT_OF_RANGE,
    );
    check(
        &run(&t, &a, 0, &read10(2048, 0), &[], 0),
        5,
        Asc::LBA_OUT_OF_RANGE,
    );
    check(
        &run(&t, &a, 0, &rw16(0x88, u64::MAX, 2), &[], 1024),
        5,
        Asc::LBA_OUT_OF_RANGE,
    );
    check(
        &run(&t, &a, 0, &write10(2048, 1, false), &data, 0),
        5,
        Asc::LBA_OUT_OF_RANGE,
    );
    // Zero blocks inside the disk: GOOD, no data.
    assert!(good(&t, &a, 0, &read10(5, 0), &[], 512).is_empty());
    // More than the block limits allow.
    check(
        &run(&t, &a, 0, &rw16(0x88, 0, 65537), &[], 64 * MIB),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // Buffers smaller than the transfer: DATA PHASE ERROR, nothing written.
    let r = run(&t, &a, 0, &read10(0, 2), &[], 1000);
    check(&r, 0x0B, Asc::DATA_PHASE_ERROR);
    assert!(r.overrun);
    let r = run(&t, &a, 0, &write10(0, 2, false), &data[..600], 0);
    assert!(r.overrun);
    let mut first = vec![0u8; 512];
    disk.read_at(&mut first, 0).unwrap();
    assert_eq!(first, vec![0u8; 512]);
    // Protection information is not supported: RDPROTECT refused.
    let mut c = read10(0, 1);
    c[1] = 0x20;
    check(&run(&t, &a, 0, &c, &[], 512), 5, Asc::INVALID_FIELD_IN_CDB);
    // A data-in buffer larger than the data: the residual says so.
    let r = run(&t, &a, 0, &read10(0, 1), &[], 4096);
    assert_eq!(r.data_in.len(), 512);
    assert_eq!(r.residual, 3584);
}

#[test]
fn write_protected_disk() {
    let a = nexus("a");
    let (t, _) = disk_target(MIB, true, &[&a]);
    let block = [1u8; 512];
    for cdb in [
        write10(0, 1, false),
        rw16(0x8A, 0, 1),
        vec![0x0A, 0, 0, 0, 1, 0],
    ] {
        check(&run(&t, &a, 0, &cdb, &block, 0), 7, Asc::WRITE_PROTECTED);
    }
    let mut ws = rw16(0x93, 0, 1);
    ws[1] = 0x08;
    check(&run(&t, &a, 0, &ws, &block, 0), 7, Asc::WRITE_PROTECTED);
    check(
        &run(&t, &a, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &[0; 24], 0),
        7,
        Asc::WRITE_PROTECTED,
    );
    // Reads work; MODE SENSE says WP.
    good(&t, &a, 0, &read10(0, 1), &[], 512);
    let m = good(&t, &a, 0, &[0x1A, 0x08, 0x3F, 0, 255, 0], &[], 255);
    assert_eq!(m[2] & 0x80, 0x80);
}

#[test]
fn verify_sync_cache_and_write_same() {
    let a = nexus("a");
    let (t, disk) = disk_target(MIB, false, &[&a]);
    let data = vec![0x5Au8; 1024];
    good(&t, &a, 0, &write10(100, 2, false), &data, 0);
    // VERIFY: medium only, compare all, compare one block with each.
    good(&t, &a, 0, &[0x2F, 0, 0, 0, 0, 100, 0, 0, 2, 0], &[], 0);
    good(&t, &a, 0, &[0x2F, 0x02, 0, 0, 0, 100, 0, 0, 2, 0], &data, 0);
    good(
        &t,
        &a,
        0,
        &[0x2F, 0x06, 0, 0, 0, 100, 0, 0, 2, 0],
        &data[..512],
        0,
    );
    let mut other = data.clone();
    other[700] = 0;
    let r = run(
        &t,
        &a,
        0,
        &[0x2F, 0x02, 0, 0, 0, 100, 0, 0, 2, 0],
        &other,
        0,
    );
    check(&r, 0x0E, Asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(be32(&r.sense[3..7]), 700, "INFORMATION: the offset");
    assert_eq!(r.sense[0], 0xF0, "VALID");
    check(
        &run(&t, &a, 0, &[0x2F, 0x04, 0, 0, 0, 100, 0, 0, 2, 0], &data, 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    let mut v16 = rw16(0x8F, 2047, 2);
    check(&run(&t, &a, 0, &v16, &[], 0), 5, Asc::LBA_OUT_OF_RANGE);
    v16[13] = 1;
    good(&t, &a, 0, &v16, &[], 0);
    // SYNCHRONIZE CACHE 10 and 16, with range checks.
    good(&t, &a, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    good(&t, &a, 0, &rw16(0x91, 0, 2048), &[], 0);
    check(
        &run(&t, &a, 0, &rw16(0x91, 2048, 1), &[], 0),
        5,
        Asc::LBA_OUT_OF_RANGE,
    );
    // WRITE SAME: a pattern over 300 blocks, then unmap (zeros) of a part.
    let pattern = vec![0xC3u8; 512];
    let mut ws10 = vec![0x41, 0, 0, 0, 1, 0, 0, 0x01, 0x2C, 0];
    good(&t, &a, 0, &ws10, &pattern, 0);
    let mut back = vec![0u8; 300 * 512];
    disk.read_at(&mut back, 256 * 512).unwrap();
    assert!(back.iter().all(|&b| b == 0xC3));
    let mut ws16 = rw16(0x93, 256, 4);
    ws16[1] = 0x08 | 0x01; // UNMAP, NDOB
    good(&t, &a, 0, &ws16, &[], 0);
    let mut back = vec![0xFFu8; 4 * 512];
    disk.read_at(&mut back, 256 * 512).unwrap();
    assert!(
        back.iter().all(|&b| b == 0),
        "the test disk discards to zeros"
    );
    // Zero blocks (WSNZ), past the end, no data-out, ANCHOR.
    ws10[7] = 0;
    ws10[8] = 0;
    check(
        &run(&t, &a, 0, &ws10, &pattern, 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    check(
        &run(&t, &a, 0, &rw16(0x93, 2047, 2), &pattern, 0),
        5,
        Asc::LBA_OUT_OF_RANGE,
    );
    assert!(run(&t, &a, 0, &rw16(0x93, 0, 2), &[], 0).overrun);
    let mut anchor = rw16(0x93, 0, 1);
    anchor[1] = 0x10;
    check(
        &run(&t, &a, 0, &anchor, &pattern, 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut l = vec![0u8; 8];
    for (lba, n) in descs {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    let len = l.len();
    l[0..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
    l[2..4].copy_from_slice(&((len - 8) as u16).to_be_bytes());
    l
}

fn unmap_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
    c
}

#[test]
fn unmap_parameter_lists() {
    let a = nexus("a");
    let (t, disk) = disk_target(MIB, false, &[&a]);
    good(&t, &a, 0, &write10(0, 8, false), &[0xEE; 4096], 0);
    let l = unmap_list(&[(1, 2), (5, 1)]);
    good(&t, &a, 0, &unmap_cdb(l.len()), &l, 0);
    let mut back = vec![0u8; 4096];
    disk.read_at(&mut back, 0).unwrap();
    for (i, blk) in back.chunks(512).enumerate() {
        let want = if matches!(i, 1 | 2 | 5) { 0 } else { 0xEE };
        assert!(blk.iter().all(|&b| b == want), "block {i}");
    }
    // Zero-length list: nothing; too short for the header; past the end.
    good(&t, &a, 0, &unmap_cdb(0), &[], 0);
    check(
        &run(&t, &a, 0, &unmap_cdb(4), &[0; 4], 0),
        5,
        Asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    let l = unmap_list(&[(2047, 2)]);
    check(
        &run(&t, &a, 0, &unmap_cdb(l.len()), &l, 0),
        5,
        Asc::LBA_OUT_OF_RANGE,
    );
    // A descriptor length beyond the list.
    let mut l = unmap_list(&[(0, 1)]);
    l[3] = 32;
    check(
        &run(&t, &a, 0, &unmap_cdb(l.len()), &l, 0),
        5,
        Asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    // Too many descriptors.
    let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 1)).collect();
    let l = unmap_list(&many);
    check(
        &run(&t, &a, 0, &unmap_cdb(l.len()), &l, 0),
        5,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    // ANCHOR is not supported.
    let mut c = unmap_cdb(24);
    c[1] = 1;
    check(
        &run(&t, &a, 0, &c, &unmap_list(&[(0, 1)]), 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
}

#[test]
fn unmap_off_hides_the_command() {
    let a = nexus("a");
    let t = tern_scsi::ScsiTarget::new();
    let mut cfg = tern_scsi::DiskConfig::new(tern_scsi::fuzzing::mem_disk(MIB, false));
    cfg.unmap = false;
    t.add_disk(0, cfg).unwrap();
    clear_ua(&t, &a, 0);
    check(
        &run(&t, &a, 0, &unmap_cdb(0), &[], 0),
        5,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    let mut ws = rw16(0x93, 0, 1);
    ws[1] = 0x08;
    check(
        &run(&t, &a, 0, &ws, &[0; 512], 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    let b2 = good(&t, &a, 0, &inquiry(true, 0xB2, 255), &[], 255);
    assert_eq!(b2[5], 0);
}

#[test]
fn mode_sense_and_select() {
    let a = nexus("a");
    let b = nexus("b");
    let (t, _) = disk_target(MIB, false, &[&a, &b]);
    // MODE SENSE(6) all pages, (10) with a long LBA descriptor.
    let m6 = good(&t, &a, 0, &[0x1A, 0, 0x3F, 0, 255, 0], &[], 255);
    assert_eq!(m6[0] as usize, m6.len() - 1);
    assert_eq!(m6[3], 8);
    let m10 = good(
        &t,
        &a,
        0,
        &[0x5A, 0x10, 0x08, 0, 0, 0, 0, 0, 255, 0],
        &[],
        255,
    );
    assert_eq!(&m10[6..8], &[0, 16]);
    assert_eq!(be64(&m10[8..16]), 2048);
    assert_eq!(m10[24], 0x08);
    assert_eq!(m10[26] & 0x04, 0x04, "WCE on");
    // Changeable values.
    let ch = good(&t, &a, 0, &[0x1A, 0x08, 0x40 | 0x0A, 0, 255, 0], &[], 255);
    assert_eq!(&ch[4..7], &[0x0A, 0x0A, 0x04]);
    // Saved values are not supported; a page that does not exist.
    check(
        &run(&t, &a, 0, &[0x1A, 0, 0xC8, 0, 255, 0], &[], 255),
        5,
        Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
    );
    check(
        &run(&t, &a, 0, &[0x1A, 0, 0x19, 0, 255, 0], &[], 255),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // MODE SELECT(6): turn D_SENSE on; b hears MODE PARAMETERS CHANGED.
    let mut list = vec![0, 0, 0, 0];
    let mut control = ch[4..16].to_vec();
    let cur = good(&t, &a, 0, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[], 255);
    control.copy_from_slice(&cur[4..16]);
    control[2] |= 0x04;
    list.extend(&control);
    good(
        &t,
        &a,
        0,
        &[0x15, 0x10, 0, 0, list.len() as u8, 0],
        &list,
        0,
    );
    check(
        &run(&t, &b, 0, &tur(), &[], 0),
        6,
        Asc::MODE_PARAMETERS_CHANGED,
    );
    // Now sense data comes in descriptor format.
    let r = run(&t, &a, 0, &read10(4096, 1), &[], 512);
    assert_eq!(r.sense[0], 0x72);
    check(&r, 5, Asc::LBA_OUT_OF_RANGE);
    // A change to a bit that is not changeable, SP, PF=0, short data.
    let mut bad = list.clone();
    bad[4 + 3] ^= 0x01;
    check(
        &run(&t, &a, 0, &[0x15, 0x10, 0, 0, bad.len() as u8, 0], &bad, 0),
        5,
        Asc::INVALID_FIELD_IN_PARAMETER_LIST,
    );
    check(
        &run(
            &t,
            &a,
            0,
            &[0x15, 0x11, 0, 0, list.len() as u8, 0],
            &list,
            0,
        ),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    check(
        &run(
            &t,
            &a,
            0,
            &[0x15, 0x00, 0, 0, list.len() as u8, 0],
            &list,
            0,
        ),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    assert!(run(&t, &a, 0, &[0x15, 0x10, 0, 0, 40, 0], &list, 0).overrun);
    // MODE SELECT(10): WCE off through the caching page.
    let cur = good(
        &t,
        &a,
        0,
        &[0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0],
        &[],
        255,
    );
    let mut l10 = vec![0u8; 8];
    let mut caching = cur[8..28].to_vec();
    caching[2] &= !0x04;
    l10.extend(&caching);
    let mut c = vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
    c[8] = l10.len() as u8;
    good(&t, &a, 0, &c, &l10, 0);
    let cur = good(
        &t,
        &a,
        0,
        &[0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 255, 0],
        &[],
        255,
    );
    assert_eq!(cur[10] & 0x04, 0);
    // Writes still work (flushed each time).
    good(&t, &a, 0, &write10(0, 1, false), &[9; 512], 0);
}

#[test]
fn report_supported_operation_codes() {
    let a = nexus("a");
    let (t, _) = disk_target(MIB, false, &[&a]);
    let rsoc = |opts: u8, op: u8, sa: u16| {
        let mut c = vec![0xA3, 0x0C, opts, op, 0, 0, 0, 0, 0x10, 0, 0, 0];
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        c
    };
    let all = good(&t, &a, 0, &rsoc(0, 0, 0), &[], 4096);
    let len = be32(&all[0..4]) as usize;
    assert_eq!(len % 8, 0);
    let ops: Vec<u8> = all[4..4 + len].chunks(8).map(|d| d[0]).collect();
    assert!(ops.contains(&0x28) && ops.contains(&0x42) && ops.contains(&0x5F));
    assert!(!ops.contains(&0x43), "READ TOC is a DVD command");
    // With timeouts: 20-byte descriptors.
    let all_t = good(&t, &a, 0, &rsoc(0x80, 0, 0), &[], 8192);
    assert_eq!(be32(&all_t[0..4]) as usize, ops.len() * 20);
    // One command: READ(10)'s usage data.
    let one = good(&t, &a, 0, &rsoc(1, 0x28, 0), &[], 64);
    assert_eq!(&one[0..4], &[0, 3, 0, 10]);
    assert_eq!(&one[4..8], &[0x28, 0x18, 0xFF, 0xFF]);
    // One with a service action.
    let one = good(&t, &a, 0, &rsoc(2, 0x9E, 0x10), &[], 64);
    assert_eq!(&one[0..6], &[0, 3, 0, 16, 0x9E, 0x10]);
    // Unsupported: support 001b.
    let one = good(&t, &a, 0, &rsoc(1, 0xC1, 0), &[], 64);
    assert_eq!(one[1] & 7, 1);
    // Option 1 for an opcode with service actions, option 2 without.
    check(
        &run(&t, &a, 0, &rsoc(1, 0x9E, 0), &[], 64),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    check(
        &run(&t, &a, 0, &rsoc(2, 0x28, 0), &[], 64),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    check(
        &run(&t, &a, 0, &rsoc(4, 0x28, 0), &[], 64),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // Option 3 finds either.
    assert_eq!(good(&t, &a, 0, &rsoc(3, 0x28, 0), &[], 64)[1] & 7, 3);
    assert_eq!(good(&t, &a, 0, &rsoc(3, 0x9E, 0x10), &[], 64)[1] & 7, 3);
}

#[test]
fn request_sense_start_stop_and_unknown_opcodes() {
    let a = nexus("a");
    let (t, _) = disk_target(MIB, false, &[]);
    // REQUEST SENSE reports and clears POWER ON, fixed then descriptor.
    let s = good(&t, &a, 0, &request_sense(false), &[], 252);
    assert_eq!(s.len(), 18);
    assert_eq!((s[2], s[12], s[13]), (6, 0x29, 0));
    let s = good(&t, &a, 0, &request_sense(true), &[], 252);
    assert_eq!(&s[0..4], &[0x72, 0, 0, 0]);
    good(&t, &a, 0, &tur(), &[], 0);
    // START STOP UNIT: start/stop accepted, eject refused (not removable),
    // reserved power conditions refused.
    good(&t, &a, 0, &[0x1B, 0, 0, 0, 1, 0], &[], 0);
    good(&t, &a, 0, &[0x1B, 1, 0, 0, 0x30, 0], &[], 0);
    check(
        &run(&t, &a, 0, &[0x1B, 0, 0, 0, 2, 0], &[], 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    check(
        &run(&t, &a, 0, &[0x1B, 0, 0, 0, 0x50, 0], &[], 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // DVD-only commands and unknown opcodes.
    check(
        &run(&t, &a, 0, &[0x1E, 0, 0, 0, 1, 0], &[], 0),
        5,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    check(
        &run(&t, &a, 0, &[0xC5, 0, 0, 0, 0, 0], &[], 0),
        5,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    // COMPARE AND WRITE is not emulated.
    check(
        &run(&t, &a, 0, &[0x89; 16], &[], 0),
        5,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    // A CDB cut short, an empty CDB, a control byte with NACA.
    check(
        &run(&t, &a, 0, &[0x28, 0, 0], &[], 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    check(
        &run(&t, &a, 0, &[], &[], 0),
        5,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    check(
        &run(&t, &a, 0, &[0, 0, 0, 0, 0, 4], &[], 0),
        5,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // Padded CDBs (virtio-scsi sends 32 bytes) are fine.
    let mut padded = read10(0, 1);
    padded.resize(32, 0);
    good(&t, &a, 0, &padded, &[], 512);
    assert_eq!(run(&t, &a, 0, &tur(), &[], 0).status, Status::Good);
}
