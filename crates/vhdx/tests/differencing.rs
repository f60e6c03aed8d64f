//! Differencing disks: sector bitmaps, parent chains, trim and merge, read
//! back by `vhdx` and cross-checked with libvhdi (`vhdiinfo`, `vhdimount`)
//! and, after merging, with qemu-img.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use vhdx::{CreateOptions, Disk, DiskType};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 48 * MIB;

/// Random writes of any length and alignment into `d` and `model`.
fn scribble(d: &mut Disk, model: &mut [u8], seed: u64, count: usize) {
    let mut r = Rng(seed);
    for i in 0..count {
        let len = if i % 7 == 0 {
            r.below(5 << 20) + 1
        } else {
            r.below(20_000) + 1
        };
        let off = r.below(model.len() as u64 - len);
        let mut buf = vec![0u8; len as usize];
        r.fill(&mut buf);
        d.write_at(&buf, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&buf);
    }
}

/// Base (dynamic) with data, a child over it and a grandchild over that.
fn build_chain(dir: &Path) -> (PathBuf, PathBuf, PathBuf, Vec<u8>, Vec<u8>, Vec<u8>) {
    let base = dir.join("base.vhdx");
    let child = dir.join("child.vhdx");
    let grand = dir.join("grand.vhdx");
    let mut m0 = vec![0u8; SIZE as usize];
    let mut d = vhdx::create(&base, &CreateOptions::dynamic(SIZE).block_size(2 << 20)).unwrap();
    scribble(&mut d, &mut m0, 1, 40);
    d.close().unwrap();

    let mut m1 = m0.clone();
    let mut c = vhdx::create(&child, &CreateOptions::differencing(&base)).unwrap();
    assert_eq!(c.disk_type(), DiskType::Differencing);
    assert_eq!(c.virtual_size(), SIZE);
    scribble(&mut c, &mut m1, 2, 60);
    // A trimmed block hides the parent's data.
    c.trim(6 * MIB, 2 * MIB).unwrap();
    m1[6 << 20..8 << 20].fill(0);
    c.flush().unwrap();
    scribble(&mut c, &mut m1, 3, 10);
    c.close().unwrap();

    let mut m2 = m1.clone();
    let mut g = vhdx::create(&grand, &CreateOptions::differencing(&child)).unwrap();
    scribble(&mut g, &mut m2, 4, 30);
    g.close().unwrap();
    (base, child, grand, m0, m1, m2)
}

#[test]
fn chain_reads_back_through_vhdx() {
    let dir = tempfile::tempdir().unwrap();
    let (base, child, grand, m0, m1, m2) = build_chain(dir.path());
    for (p, m) in [(&base, &m0), (&child, &m1), (&grand, &m2)] {
        let mut d = Disk::open(p, false).unwrap();
        assert_same(&p.display().to_string(), &read_all(&mut d), m);
    }
    // The child links to the parent by DataWriteGuid: writing to the parent
    // after the child was made breaks the link, and opening says so.
    let mut b = Disk::open(&base, true).unwrap();
    b.write_at(&[1], 0).unwrap();
    b.close().unwrap();
    let err = Disk::open(&child, false)
        .err()
        .expect("stale parent accepted");
    assert!(matches!(err, vhdx::Error::ParentMismatch { .. }), "{err}");
}

#[test]
fn chain_reads_back_through_libvhdi() {
    let test = "chain_reads_back_through_libvhdi";
    let Some(vhdiinfo) = tern_test_support::tool(test, "vhdiinfo") else {
        return;
    };
    let Some(vhdimount) = tern_test_support::tool(test, "vhdimount") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (base, child, grand, m0, m1, m2) = build_chain(dir.path());
    let parent_id = Disk::open(&base, false).unwrap().header().data_write_guid;
    let info = run(Command::new(&vhdiinfo).arg(&child));
    assert!(info.contains("Differential"), "vhdiinfo: {info}");
    assert!(
        info.contains("base.vhdx"),
        "vhdiinfo lacks the parent's name: {info}"
    );
    // libvhdi 20210425 (Debian 12) does not decode parent_linkage and prints
    // zeros; newer versions print the GUID, which must then be ours.
    let zero = "Parent identifier\t: 00000000-0000-0000-0000-000000000000";
    assert!(
        info.contains(zero) || info.contains(&parent_id.to_string()),
        "wrong parent id: {info}"
    );
    for (p, m) in [(&base, &m0), (&child, &m1), (&grand, &m2)] {
        let mnt = dir
            .path()
            .join(format!("mnt-{}", p.file_stem().unwrap().to_string_lossy()));
        std::fs::create_dir(&mnt).unwrap();
        let (ok, out) = try_run(Command::new(&vhdimount).arg(p).arg(&mnt));
        // vhdimount daemonizes: the FUSE mount may appear a moment later.
        for _ in 0..50 {
            if mnt.join("vhdi1").exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if (!ok || !mnt.join("vhdi1").exists()) && p != &base {
            panic!("vhdimount rejects {}: {out}", p.display());
        }
        if !ok || !mnt.join("vhdi1").exists() {
            tern_test_support::skip(test, &format!("vhdimount cannot mount here (FUSE): {out}"));
            return;
        }
        // vhdimount shows the whole chain: vhdi1 is the base, the last the image.
        let levels = [&m0, &m1, &m2];
        let depth = levels.iter().position(|l| std::ptr::eq(*l, m)).unwrap() + 1;
        let got: Vec<_> = (1..=depth + 1)
            .map(|i| std::fs::read(mnt.join(format!("vhdi{i}"))))
            .collect();
        let _ = Command::new("umount").arg(&mnt).status();
        assert!(
            got[depth].is_err(),
            "vhdimount shows more levels than the chain has"
        );
        for (i, g) in got[..depth].iter().enumerate() {
            let g = g.as_ref().expect("vhdimount level missing");
            assert_same(
                &format!("libvhdi {} level {}", p.display(), i + 1),
                g,
                levels[i],
            );
        }
    }
}

#[test]
fn merge_into_parent_verified_by_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let (base, child, _grand, _m0, m1, _m2) = build_chain(dir.path());
    let r = vhdx::merge::merge(&child).unwrap();
    assert_eq!(r.parent, base);
    assert!(r.bytes_copied > 0);
    let mut d = Disk::open(&base, false).unwrap();
    assert_same("merged base", &read_all(&mut d), &m1);
    if let Some(qemu_img) =
        tern_test_support::tool("merge_into_parent_verified_by_qemu", "qemu-img")
    {
        qemu_check(&qemu_img, &base);
        assert_same(
            "merged base via qemu",
            &qemu_raw(&qemu_img, &base, dir.path()),
            &m1,
        );
    }
}

#[test]
fn differencing_disk_with_4k_sectors_and_big_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("b4k.vhdx");
    let child = dir.path().join("c4k.vhdx");
    let mut m = vec![0u8; SIZE as usize];
    let mut d = vhdx::create(
        &base,
        &CreateOptions::fixed(SIZE)
            .sectors(4096, 4096)
            .block_size(16 << 20),
    )
    .unwrap();
    scribble(&mut d, &mut m, 9, 20);
    d.close().unwrap();
    let mut c = vhdx::create(
        &child,
        &CreateOptions::differencing(&base).block_size(32 << 20),
    )
    .unwrap();
    assert_eq!(c.logical_sector_size(), 4096);
    scribble(&mut c, &mut m, 10, 40);
    c.close().unwrap();
    let mut c = Disk::open(&child, false).unwrap();
    assert_same("4k child", &read_all(&mut c), &m);
}
