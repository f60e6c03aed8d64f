//! Malformed files give an error that names the problem, never a panic or
//! a huge allocation; plus a short deterministic mutation run over the
//! fuzzing entry point.

mod common;

use common::Rng;
use vhdx::{CreateOptions, Disk, MemStorage, ParentSource};

fn valid() -> Vec<u8> {
    let mem = MemStorage::default();
    let mut d = vhdx::create::create_on(
        Box::new(mem.clone()),
        &CreateOptions::dynamic(8 << 20).block_size(1 << 20),
        None,
    )
    .unwrap();
    d.write_at(&[9; 5000], 100).unwrap();
    d.close().unwrap();
    mem.snapshot()
}

fn open(b: Vec<u8>) -> Result<Disk, vhdx::Error> {
    Disk::open_storage(Box::new(MemStorage::new(b)), false, ParentSource::None)
}

fn fix_crc(b: &mut [u8], off: usize, len: usize) {
    let s = &mut b[off..off + len];
    s[4..8].fill(0);
    let c = vhdx::crc::crc32c(s);
    s[4..8].copy_from_slice(&c.to_le_bytes());
}

fn expect_err(b: Vec<u8>, words: &str) {
    let e = open(b).err().expect("malformed file accepted");
    let mut msg = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        msg += &format!(": {s}");
        src = s.source();
    }
    assert!(msg.contains(words), "error '{msg}' does not say '{words}'");
}

#[test]
fn named_errors() {
    assert!(open(valid()).is_ok());
    expect_err(b"not a disk".to_vec(), "too short");
    let mut b = valid();
    b[0] = b'x';
    expect_err(b, "signature");
    let mut b = valid();
    b[64 * 1024 + 20] ^= 1;
    b[128 * 1024 + 20] ^= 1;
    expect_err(b, "neither header");
    // A BAT region of nearly 4 GiB opens without allocating it (only the
    // entries the disk needs are read)...
    let mut b = valid();
    for off in [192 * 1024, 256 * 1024] {
        b[off + 16 + 24..off + 16 + 28].copy_from_slice(&0xFFF0_0000u32.to_le_bytes());
        fix_crc(&mut b, off, 64 * 1024);
    }
    assert!(open(b).is_ok());
    // ...and a BAT a terabyte past the end of the file is refused.
    let mut b = valid();
    for off in [192 * 1024, 256 * 1024] {
        b[off + 16 + 16..off + 16 + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        fix_crc(&mut b, off, 64 * 1024);
    }
    expect_err(b, "BAT at");
    // Block size of 3 MiB.
    let mut b = valid();
    let item = 2 * (1 << 20) + 64 * 1024; // file parameters: first item
    b[item..item + 4].copy_from_slice(&(3u32 << 20).to_le_bytes());
    expect_err(b, "block size");
    // A BAT entry pointing past the end of the file.
    let mut b = valid();
    let bat = 3 << 20;
    b[bat..bat + 8].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes());
    expect_err(b, "outside the file");
    // Truncated in the middle of the BAT.
    let mut b = valid();
    b.truncate((3 << 20) + 100);
    assert!(open(b).is_err());
}

#[test]
fn mutations_never_panic() {
    let seed = valid();
    let mut r = Rng(42);
    for _ in 0..300 {
        let mut b = seed.clone();
        for _ in 0..1 + r.below(6) {
            let hot = [
                0usize,
                64 << 10,
                128 << 10,
                192 << 10,
                1 << 20,
                2 << 20,
                3 << 20,
            ];
            let at = (hot[r.below(7) as usize] + r.below(4096) as usize).min(b.len() - 8);
            b[at..at + 8].copy_from_slice(&r.next().to_le_bytes());
        }
        for (off, len) in [
            (64 << 10, 4096),
            (128 << 10, 4096),
            (192 << 10, 65536),
            (256 << 10, 65536),
        ] {
            if r.below(2) == 0 {
                fix_crc(&mut b, off, len);
            }
        }
        vhdx::fuzzing::open_and_read(&b);
    }
}
