//! Read/write round trips through the target on real images: a raw file
//! and a dynamic VHDX, with online resize of the VHDX.

mod common;

use common::*;
use tern_scsi::sense::Asc;
use tern_scsi::{DiskConfig, ScsiTarget};

fn round_trip(t: &ScsiTarget) {
    let a = nexus("a");
    clear_ua(t, &a, 0);
    let blocks = {
        let d = good(t, &a, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
        be32(&d[0..4]) as u64 + 1
    };
    // Scattered writes of 1..=64 blocks with FUA, then everything read back.
    let mut expect = std::collections::BTreeMap::new();
    let mut lba = 0u64;
    for i in 1..=24u32 {
        let n = (i * 7) % 64 + 1;
        if lba + n as u64 > blocks {
            break;
        }
        let data: Vec<u8> = (0..n as usize * 512)
            .map(|j| (j as u32 ^ (i * 31)) as u8)
            .collect();
        good(
            t,
            &a,
            0,
            &rw16(0x8A, lba, n)
                .iter()
                .enumerate()
                .map(|(k, b)| if k == 1 { 0x08 } else { *b })
                .collect::<Vec<u8>>(),
            &data,
            0,
        );
        expect.insert(lba, data);
        lba += n as u64 + 1000;
    }
    good(t, &a, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0);
    for (lba, data) in &expect {
        let n = (data.len() / 512) as u32;
        assert_eq!(
            &good(t, &a, 0, &rw16(0x88, *lba, n), &[], data.len()),
            data,
            "lba {lba}"
        );
    }
    // Unmapped space reads as zeros on a fresh image; UNMAP and reread.
    assert_eq!(good(t, &a, 0, &read10(999, 1), &[], 512), vec![0; 512]);
    let mut l = vec![0, 22, 0, 16, 0, 0, 0, 0];
    l.extend_from_slice(&0u64.to_be_bytes());
    l.extend_from_slice(&8u32.to_be_bytes());
    l.extend_from_slice(&[0; 4]);
    good(t, &a, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &l, 0);
    check(
        &run(t, &a, 0, &rw16(0x88, blocks, 1), &[], 512),
        5,
        Asc::LBA_OUT_OF_RANGE,
    );
}

#[test]
fn raw_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.img");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let disk = tern_block::open(&tern_block::OpenOptions::new(&p)).unwrap();
    let t = ScsiTarget::new();
    t.add_disk(0, DiskConfig::new(disk)).unwrap();
    round_trip(&t);
    // The bytes are in the file where the LBAs say.
    let a = nexus("a");
    good(&t, &a, 0, &write10(4096, 1, true), &[0x77; 512], 0);
    let bytes = std::fs::read(&p).unwrap();
    assert!(bytes[4096 * 512..4097 * 512].iter().all(|&b| b == 0x77));
}

#[test]
fn dynamic_vhdx_with_resize() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("disk.vhdx");
    vhdx::create(&p, &vhdx::CreateOptions::dynamic(32 << 20)).unwrap();
    let disk = tern_block::open(&tern_block::OpenOptions::new(&p)).unwrap();
    let t = ScsiTarget::new();
    t.add_disk(0, DiskConfig::new(disk.clone())).unwrap();
    round_trip(&t);
    let a = nexus("a");
    // Grow online: the initiator hears CAPACITY DATA HAS CHANGED and can
    // use the new blocks.
    t.resize(0, 64 << 20, &Default::default()).unwrap();
    check(
        &run(&t, &a, 0, &tur(), &[], 0),
        6,
        Asc::CAPACITY_DATA_CHANGED,
    );
    let mut c16 = vec![0u8; 16];
    c16[0] = 0x9E;
    c16[1] = 0x10;
    c16[13] = 32;
    let d = good(&t, &a, 0, &c16, &[], 32);
    assert_eq!(be64(&d[0..8]), (64 << 20) / 512 - 1);
    let last = (64u64 << 20) / 512 - 1;
    good(&t, &a, 0, &rw16(0x8A, last, 1), &[0x42; 512], 0);
    assert_eq!(
        good(&t, &a, 0, &rw16(0x88, last, 1), &[], 512),
        vec![0x42; 512]
    );
    disk.close().unwrap();
    // Reopened, the data is there.
    drop(t);
    drop(disk);
    let disk = tern_block::open(&tern_block::OpenOptions::new(&p)).unwrap();
    let mut b = vec![0u8; 512];
    disk.read_at(&mut b, last * 512).unwrap();
    assert_eq!(b, vec![0x42; 512]);
}
