//! qemu-img as an oracle, both ways: images QEMU makes read back
//! byte-identical through `vhdx`, and images `vhdx` makes pass
//! `qemu-img check` and convert to the same bytes.

mod common;

use common::*;
use std::process::Command;
use vhdx::{CreateOptions, Disk, Shrink};

const MIB: u64 = 1 << 20;

#[test]
fn qemu_made_images_read_back_identical() {
    let Some(qemu_img) =
        tern_test_support::tool("qemu_made_images_read_back_identical", "qemu-img")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let size = 72 * MIB as usize + 512 * 3; // not a multiple of the block size
    let raw = patterned(size, 7);
    let raw_path = dir.path().join("src.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    for (name, opts) in [
        ("dyn-default", "subformat=dynamic"),
        ("dyn-1m", "subformat=dynamic,block_size=1M"),
        (
            "dyn-8m-log4m",
            "subformat=dynamic,block_size=8M,log_size=4M",
        ),
        ("fixed", "subformat=fixed"),
    ] {
        let img = dir.path().join(format!("{name}.vhdx"));
        run(Command::new(&qemu_img)
            .args(["convert", "-f", "raw", "-O", "vhdx", "-o", opts])
            .arg(&raw_path)
            .arg(&img));
        let mut d = Disk::open(&img, false).unwrap();
        assert_eq!(d.virtual_size(), size as u64, "{name}");
        assert_same(name, &read_all(&mut d), &raw);
        drop(d);
        // Writing into QEMU's layout, and growing it: QEMU reads it back.
        let mut model = raw.clone();
        let mut d = Disk::open(&img, true).unwrap();
        scribble(&mut d, &mut model, name.len() as u64, 25);
        d.resize(size as u64 + (16 << 20), Shrink::Refuse).unwrap();
        model.resize(size + (16 << 20), 0);
        d.write_at(&[0x77; 3000], size as u64 + (15 << 20)).unwrap();
        model[size + (15 << 20)..size + (15 << 20) + 3000].fill(0x77);
        d.close().unwrap();
        qemu_check(&qemu_img, &img);
        assert_same(
            &format!("{name} written by vhdx"),
            &qemu_raw(&qemu_img, &img, dir.path()),
            &model,
        );
    }
}

#[test]
fn qemu_io_writes_read_back() {
    let Some(qemu_img) = tern_test_support::tool("qemu_io_writes_read_back", "qemu-img") else {
        return;
    };
    let Some(qemu_io) = tern_test_support::tool("qemu_io_writes_read_back", "qemu-io") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("io.vhdx");
    run(Command::new(&qemu_img)
        .args(["create", "-f", "vhdx", "-o", "block_size=1M"])
        .arg(&img)
        .arg("40M"));
    let mut want = vec![0u8; 40 << 20];
    let mut r = Rng(99);
    let mut cmds = Vec::new();
    for _ in 0..40 {
        let len = (r.below(64) + 1) * 512;
        let off = r.below((40 << 20) - len) / 512 * 512;
        let pat = (r.below(255) + 1) as u8;
        want[off as usize..(off + len) as usize].fill(pat);
        cmds.push(format!("write -P {pat} {off} {len}"));
    }
    let mut c = Command::new(&qemu_io);
    c.args(["-f", "vhdx"]);
    for cmd in &cmds {
        c.arg("-c").arg(cmd);
    }
    run(c.arg(&img));
    let mut d = Disk::open(&img, false).unwrap();
    assert_same("qemu-io writes", &read_all(&mut d), &want);
}

/// Writes a model and the disk at the same random byte ranges.
fn scribble(d: &mut Disk, model: &mut [u8], seed: u64, count: usize) {
    let mut r = Rng(seed);
    let size = model.len() as u64;
    for i in 0..count {
        let len = if i % 5 == 0 {
            r.below(3 << 20) + 1
        } else {
            r.below(70_000) + 1
        };
        let off = r.below(size - len);
        let mut buf = vec![0u8; len as usize];
        r.fill(&mut buf);
        d.write_at(&buf, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&buf);
        if i % 17 == 0 {
            d.flush().unwrap();
        }
    }
}

#[test]
fn our_images_pass_qemu_check_and_convert() {
    let Some(qemu_img) =
        tern_test_support::tool("our_images_pass_qemu_check_and_convert", "qemu-img")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let size = 50 * MIB + 4096 * 3;
    for (name, opts) in [
        ("dynamic", CreateOptions::dynamic(size)),
        (
            "dynamic-1m",
            CreateOptions::dynamic(size).block_size(1 << 20),
        ),
        (
            "dynamic-4k",
            CreateOptions::dynamic(size)
                .block_size(4 << 20)
                .sectors(4096, 4096),
        ),
        ("fixed", CreateOptions::fixed(size).block_size(8 << 20)),
        (
            "dynamic-256m",
            CreateOptions::dynamic(size)
                .block_size(256 << 20)
                .sectors(512, 512),
        ),
    ] {
        let img = dir.path().join(format!("{name}.vhdx"));
        let mut model = vec![0u8; size as usize];
        let mut d = vhdx::create(&img, &opts).unwrap();
        scribble(&mut d, &mut model, name.len() as u64 * 31 + 1, 60);
        d.close().unwrap();
        let mut d = Disk::open(&img, false).unwrap();
        assert_same(&format!("{name} via vhdx"), &read_all(&mut d), &model);
        if opts.logical_sector_size != 512 {
            // QEMU's driver supports only 512-byte logical sectors (ENOTSUP).
            continue;
        }
        qemu_check(&qemu_img, &img);
        assert_same(
            &format!("{name} via qemu"),
            &qemu_raw(&qemu_img, &img, dir.path()),
            &model,
        );
        let info = run(Command::new(&qemu_img)
            .args(["info", "--output=json"])
            .arg(&img));
        assert!(
            info.contains(&format!("\"virtual-size\": {size}")),
            "{info}"
        );
    }
}

/// Sets the header's LogGuid (both copies) to `guid`, recomputing checksums.
fn set_log_guid(bytes: &mut [u8], guid: [u8; 16]) {
    for off in [64 * 1024usize, 128 * 1024] {
        let h = &mut bytes[off..off + 4096];
        h[48..64].copy_from_slice(&guid);
        h[4..8].fill(0);
        let c = vhdx::crc::crc32c(h);
        h[4..8].copy_from_slice(&c.to_le_bytes());
    }
}

#[test]
fn qemu_file_with_dirty_log_replays() {
    let test = "qemu_file_with_dirty_log_replays";
    let Some(qemu_img) = tern_test_support::tool(test, "qemu-img") else {
        return;
    };
    let Some(qemu_io) = tern_test_support::tool(test, "qemu-io") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("dirty.vhdx");
    run(Command::new(&qemu_img)
        .args(["create", "-f", "vhdx", "-o", "block_size=1M"])
        .arg(&img)
        .arg("32M"));
    // QEMU logs the BAT update for this allocation, applies it, and (as it
    // always does) zeroes the header's LogGuid. Aborting keeps the entries.
    let (_, _) = try_run(
        Command::new(&qemu_io)
            .args(["-f", "vhdx", "-c", "write -P 0x5a 5M 64k", "-c", "abort"])
            .arg(&img),
    );
    let mut bytes = std::fs::read(&img).unwrap();
    let log = 1 << 20;
    assert_eq!(&bytes[log..log + 4], b"loge", "QEMU left no log entry");
    let guid: [u8; 16] = bytes[log + 32..log + 48].try_into().unwrap();
    // Make it the state a crash between log write and BAT update leaves:
    // the log is live and the BAT in place lacks the entry.
    set_log_guid(&mut bytes, guid);
    let bat = vhdx::region::RegionTable::parse(&bytes[192 * 1024..256 * 1024])
        .unwrap()
        .bat
        .offset as usize;
    let entry = 5 * 8; // block 5 with 1 MiB blocks (chunk ratio 4096)
    assert_ne!(
        &bytes[bat + entry..bat + entry + 8],
        &[0u8; 8],
        "BAT entry not where expected"
    );
    bytes[bat + entry..bat + entry + 8].fill(0);
    std::fs::write(&img, &bytes).unwrap();

    let mut want = vec![0u8; 32 << 20];
    want[5 << 20..(5 << 20) + 65536].fill(0x5a);
    // Read-only: replayed in memory, the file untouched.
    {
        let mut d = Disk::open(&img, false).unwrap();
        assert_eq!(d.info().log_entries_replayed, 1);
        assert_same("read-only replay", &read_all(&mut d), &want);
    }
    assert!(
        std::fs::read(&img).unwrap() == bytes,
        "read-only open changed the file"
    );
    // QEMU agrees the file needs replay and what it holds.
    let copy = dir.path().join("copy.vhdx");
    std::fs::copy(&img, &copy).unwrap();
    run(Command::new(&qemu_img)
        .args(["check", "-r", "all", "-f", "vhdx"])
        .arg(&copy));
    assert_same(
        "qemu replay",
        &qemu_raw(&qemu_img, &copy, dir.path()),
        &want,
    );
    // Read-write: replayed in place, the log retired; QEMU then reads it clean.
    {
        let mut d = Disk::open(&img, true).unwrap();
        assert_same("read-write replay", &read_all(&mut d), &want);
        d.close().unwrap();
    }
    let after = std::fs::read(&img).unwrap();
    assert_eq!(&after[64 * 1024 + 48..64 * 1024 + 64], &[0u8; 16]);
    qemu_check(&qemu_img, &img);
    assert_same(
        "after replay via qemu",
        &qemu_raw(&qemu_img, &img, dir.path()),
        &want,
    );
}

#[test]
fn resize_grow_and_shrink_verified_by_qemu() {
    let test = "resize_grow_and_shrink_verified_by_qemu";
    let Some(qemu_img) = tern_test_support::tool(test, "qemu-img") else {
        return;
    };
    let Some(qemu_io) = tern_test_support::tool(test, "qemu-io") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("r.vhdx");
    let verify = |off: u64, len: u64, pat: u8| {
        run(Command::new(&qemu_io)
            .args([
                "-r",
                "-f",
                "vhdx",
                "-c",
                &format!("read -P {pat} {off} {len}"),
            ])
            .arg(&img));
    };
    let mut d = vhdx::create(&img, &CreateOptions::dynamic(64 * MIB).block_size(1 << 20)).unwrap();
    d.write_at(&[0x11; 8192], 10 * MIB).unwrap();
    // Grow within the BAT region, then write at the new end.
    d.resize(1 << 30, Shrink::Refuse).unwrap();
    d.write_at(&[0x22; 4096], (1 << 30) - 4096).unwrap();
    d.close().unwrap();
    qemu_check(&qemu_img, &img);
    verify(10 * MIB, 8192, 0x11);
    verify((1 << 30) - 4096, 4096, 0x22);

    // Grow past what the BAT region holds (1 MiB = 128 Ki entries of 1 MiB
    // blocks): the BAT moves.
    let big = 200u64 << 30;
    let mut d = Disk::open(&img, true).unwrap();
    let old_bat = d.info().file_size;
    d.resize(big, Shrink::Refuse).unwrap();
    d.write_at(&[0x33; 4096], big - 4096).unwrap();
    d.close().unwrap();
    assert!(std::fs::metadata(&img).unwrap().len() > old_bat);
    qemu_check(&qemu_img, &img);
    let info = run(Command::new(&qemu_img)
        .args(["info", "--output=json"])
        .arg(&img));
    assert!(info.contains(&format!("\"virtual-size\": {big}")), "{info}");
    verify(10 * MIB, 8192, 0x11);
    verify((1 << 30) - 4096, 4096, 0x22);
    verify(big - 4096, 4096, 0x33);

    // Shrink below written data: refused, nothing changed.
    let mut d = Disk::open(&img, true).unwrap();
    let err = d.resize(512 * MIB, Shrink::Refuse).unwrap_err();
    assert!(
        matches!(err, vhdx::Error::ShrinkWouldDiscard { .. }),
        "{err}"
    );
    assert_eq!(d.virtual_size(), big);
    d.close().unwrap();
    qemu_check(&qemu_img, &img);
    verify(big - 4096, 4096, 0x33);
    // Trimmed first, the shrink goes through; the data before the end stays.
    let mut d = Disk::open(&img, true).unwrap();
    d.trim(512 * MIB, big - 512 * MIB).unwrap();
    d.resize(512 * MIB, Shrink::Refuse).unwrap();
    d.close().unwrap();
    qemu_check(&qemu_img, &img);
    let info = run(Command::new(&qemu_img)
        .args(["info", "--output=json"])
        .arg(&img));
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 512 * MIB)),
        "{info}"
    );
    verify(10 * MIB, 8192, 0x11);
    // And a forced shrink drops data beyond the end.
    let mut d = Disk::open(&img, true).unwrap();
    assert!(d.resize(8 * MIB, Shrink::Refuse).is_err());
    d.resize(8 * MIB, Shrink::Discard).unwrap();
    d.resize(16 * MIB, Shrink::Refuse).unwrap();
    d.close().unwrap();
    qemu_check(&qemu_img, &img);
    verify(10 * MIB, 8192, 0);
}
