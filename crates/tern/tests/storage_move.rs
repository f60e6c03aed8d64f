//! Storage live migration on one host: a probe VM writes its disk while
//! `storage-move` copies the image to another directory (raw to VHDX
//! here) and pivots the device onto it; the guest's I/O must end without
//! an error, the new image must hold exactly what the guest wrote
//! (`qemu-img` judges), and the old file must be gone. A cancelled or
//! failed move leaves the VM on its old image with no partial file.
//!
//! The guest workloads run long enough (15 s) for the move to end first;
//! a VM that stops mid-move cancels it.
//!
//! Figures (printed, never asserted): move time, bytes copied, rounds,
//! how long the queue was held, and the guest's completed requests per
//! second before and during the move.

#[path = "support/qemu_img.rs"]
mod qemu_img;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qemu_img::check_pattern_with_qemu_img;
use tern_probe_abi::blk::sector_bytes;
use tern_test_support::proto::storage_move::{
    StorageMove, StorageMoveCancel, StorageMovePhase, StorageMoveProgress, StorageMoveStatus,
};
use tern_test_support::proto::{DiskFormat, ErrorCode};
use tern_test_support::{tern_run, Worker};

const MIB: u64 = 1 << 20;

/// A raw image of `size` bytes holding the probe's pattern in every
/// sector (the guest's writes carry the same pattern, so the whole image
/// stays verifiable, whatever it rewrote).
fn pattern_disk(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("d.img");
    let mut data = Vec::with_capacity(size as usize);
    for s in 0..size / 512 {
        data.extend_from_slice(&sector_bytes(s));
    }
    std::fs::write(&p, data).unwrap();
    p
}

/// A worker running probe `workload` on the raw disk `img`.
fn start(workload: &str, img: &Path) -> Worker {
    let mut cmd = tern_run();
    cmd.args(["--memory", "64M", "--serial", "null"])
        .arg("--guest")
        .arg(format!("probe:{workload}"))
        .arg("--disk")
        .arg(format!("path={}", img.display()));
    Worker::start_temp("worker", cmd)
}

fn requests(w: &Worker) -> u64 {
    w.status().disks[0].requests
}

/// Polls the move until it ends; returns its last status and the guest's
/// completed requests per second while it ran.
fn wait_move(w: &Worker, timeout: Duration) -> (StorageMoveProgress, f64) {
    let (r0, t0) = (requests(w), Instant::now());
    loop {
        let s = w.call(StorageMoveStatus {});
        if s.phase.is_final() {
            let rate = (requests(w) - r0) as f64 / t0.elapsed().as_secs_f64();
            return (s, rate);
        }
        assert!(t0.elapsed() < timeout, "move still running: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn probe_passed(stderr: &str, step: &str) {
    let line = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("[probe] "))
        .find(|l| l.starts_with(step) && l.contains("result="))
        .unwrap_or_else(|| panic!("no '{step}' summary in:\n{stderr}"));
    assert!(line.contains("result=pass"), "{line}\n{stderr}");
    if step == "blk-iops" {
        assert!(line.contains(" errors=0 "), "{line}");
    }
}

fn qemu_img_check(qemu_img: &Path, img: &Path, fmt: &str) {
    let out = Command::new(qemu_img)
        .args(["check", "-f", fmt])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 256 MiB disk written at queue depth 4 moves to another directory as
/// a VHDX; the guest's writes and a verify pass afterwards see no error.
#[test]
fn a_busy_disk_moves_to_another_directory_as_vhdx() {
    let name = "a_busy_disk_moves_to_another_directory_as_vhdx";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let Some(qemu_img) = tern_test_support::tool(name, "qemu-img") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (old_dir, new_dir) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let size = 256 * MIB;
    let img = pattern_disk(&old_dir, size);
    let w = start(
        "blk-iops,bs=4k,qd=4,secs=15,mix=randwrite+blk-verify,mib=16",
        &img,
    );
    w.wait_status_until(Duration::from_secs(20), "guest writing", |s| {
        s.disks.first().map_or(0, |d| d.requests) > 200
    });
    let (r0, t0) = (requests(&w), Instant::now());
    std::thread::sleep(Duration::from_millis(1000));
    let before = (requests(&w) - r0) as f64 / t0.elapsed().as_secs_f64();

    let started = Instant::now();
    let r = w.call(StorageMove {
        disk: 0,
        to_dir: new_dir.clone(),
        format: Some(DiskFormat::Vhdx),
        bandwidth: None,
    });
    let target = new_dir.join("d.vhdx");
    assert_eq!(r.target, target);
    let (s, during) = wait_move(&w, Duration::from_secs(60));
    let wall = started.elapsed();
    assert_eq!(s.phase, StorageMovePhase::Completed, "{s:?}");
    assert!(s.old_removed, "{s:?}");
    assert!(!img.exists(), "the old image is removed");
    assert!(target.exists());
    assert!(s.total_bytes >= size, "a full raw file is all data: {s:?}");
    let st = w.status();
    assert_eq!(st.disks[0].path, target, "the VM runs on the new image");
    assert_eq!(st.disks[0].capacity, size, "the guest sees the same size");
    eprintln!(
        "FIGURES storage-move 256 MiB raw->vhdx: {:.0} ms wall ({:.0} ms in the worker), \
         {} bytes copied ({} first pass), {} dirty rounds, queue held {:.2} ms; \
         guest 4 KiB randwrite qd4: {before:.0} req/s before, {during:.0} req/s during",
        wall.as_secs_f64() * 1e3,
        s.elapsed_ms,
        s.copied_bytes,
        s.total_bytes,
        s.rounds,
        s.held_ms.unwrap_or(-1.0),
    );

    let (code, stderr) = w.finish(Duration::from_secs(90));
    assert_eq!(code, 0, "{stderr}");
    probe_passed(&stderr, "blk-iops");
    probe_passed(&stderr, "blk-verify");
    assert!(
        !stderr.contains("guest request failed"),
        "a guest request failed: {stderr}"
    );
    qemu_img_check(&qemu_img, &target, "vhdx");
    check_pattern_with_qemu_img(&qemu_img, &target, "vhdx", size);
}

/// Unmounts a tmpfs when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A small tmpfs at `at`, or `None` (skip recorded by the caller) where
/// this test may not mount.
fn small_fs(at: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(at).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={size}"))
        .arg("tern-test")
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mount(at.into()))
}

/// A move that is cancelled, one that fails (the target file system is
/// full) and requests that are refused all leave the VM on its image,
/// with no partial file; the guest's I/O goes on without an error.
#[test]
fn cancelled_failed_and_refused_moves_leave_the_vm_on_its_image() {
    let name = "cancelled_failed_and_refused_moves_leave_the_vm_on_its_image";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let Some(qemu_img) = tern_test_support::tool(name, "qemu-img") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (old_dir, new_dir) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::create_dir_all(&new_dir).unwrap();
    let size = 64 * MIB;
    let img = pattern_disk(&old_dir, size);
    let w = start(
        "blk-iops,bs=4k,qd=2,secs=10,mix=randwrite+blk-verify,mib=16",
        &img,
    );
    w.wait_status_until(Duration::from_secs(20), "guest writing", |s| {
        s.disks.first().map_or(0, |d| d.requests) > 100
    });
    let on_old = |w: &Worker| {
        assert_eq!(w.status().disks[0].path, img, "the VM stays on its image");
        assert!(img.exists());
    };

    // Refused before anything is made.
    let e = w.refused(StorageMove {
        disk: 0,
        to_dir: dir.path().join("missing"),
        ..StorageMove::default()
    });
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
    let e = w.refused(StorageMove {
        disk: 0,
        to_dir: old_dir.clone(),
        ..StorageMove::default()
    });
    assert!(e.message.contains("already in"), "{e:?}");
    let e = w.refused(StorageMove {
        disk: 3,
        to_dir: new_dir.clone(),
        ..StorageMove::default()
    });
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    assert_eq!(w.refused(StorageMoveCancel {}).code, ErrorCode::Conflict);

    // Cancelled: slowed to 8 MiB/s so it is still copying.
    w.call(StorageMove {
        disk: 0,
        to_dir: new_dir.clone(),
        format: None,
        bandwidth: Some(8 * MIB),
    });
    tern_test_support::poll(Duration::from_secs(10), "copy under way", || {
        let s = w.call(StorageMoveStatus {});
        (s.copied_bytes > 0).then_some(())
    });
    let busy = w.refused(StorageMove {
        disk: 0,
        to_dir: new_dir.clone(),
        ..StorageMove::default()
    });
    assert_eq!(busy.code, ErrorCode::Busy, "{busy:?}");
    w.call(StorageMoveCancel {});
    let (s, _) = wait_move(&w, Duration::from_secs(10));
    assert_eq!(s.phase, StorageMovePhase::Cancelled, "{s:?}");
    assert!(s.copied_bytes < size, "cancelled mid-copy: {s:?}");
    assert!(
        !new_dir.join("d.img").exists(),
        "the partial copy is removed"
    );
    on_old(&w);

    // Failed: the target file system holds 4 MiB of the 64.
    let full = dir.path().join("full");
    match small_fs(&full, "4m") {
        Some(_mount) => {
            w.call(StorageMove {
                disk: 0,
                to_dir: full.clone(),
                format: Some(DiskFormat::Vhdx),
                bandwidth: None,
            });
            let (s, _) = wait_move(&w, Duration::from_secs(30));
            assert_eq!(s.phase, StorageMovePhase::Failed, "{s:?}");
            let why = s.error.clone().unwrap_or_default();
            assert!(why.contains("writing the copy"), "{why}");
            assert_eq!(
                std::fs::read_dir(&full).unwrap().count(),
                0,
                "no partial file on the full file system"
            );
            on_old(&w);
        }
        None => {
            tern_test_support::skip(name, "cannot mount a tmpfs: the full-disk case is not run")
        }
    }

    let (code, stderr) = w.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{stderr}");
    probe_passed(&stderr, "blk-iops");
    probe_passed(&stderr, "blk-verify");
    check_pattern_with_qemu_img(&qemu_img, &img, "raw", size);
}

/// Through the daemon: `tern vm move-storage` moves a running VM's VHDX
/// into another allowed directory; the registry records the new file, the
/// guest finishes its disk work, and a move outside the allowed
/// directories is refused.
#[test]
fn tern_vm_move_storage_moves_a_disk_through_the_daemon() {
    let name = "tern_vm_move_storage_moves_a_disk_through_the_daemon";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (slow, fast) = (tmp.path().join("slow"), tmp.path().join("fast"));
    std::fs::create_dir_all(&slow).unwrap();
    std::fs::create_dir_all(&fast).unwrap();
    let d = tern_test_support::Ternd::start_with(
        &tmp.path().join("d"),
        &[
            "--disk-dir",
            slow.to_str().unwrap(),
            "--disk-dir",
            fast.to_str().unwrap(),
        ],
    );
    let img = slow.join("data.vhdx");
    d.json(&[
        "volume",
        "create",
        "data",
        "--size",
        "64M",
        "--path",
        img.to_str().unwrap(),
    ]);
    d.json(&[
        "vm",
        "create",
        "mover",
        "--memory",
        "64M",
        "--disk",
        "data",
        "--guest",
        "probe:blk-iops,bs=4k,qd=4,secs=8,mix=randwrite+blk-verify,mib=8",
        "--start",
    ]);
    let old = PathBuf::from(
        d.json(&["volume", "show", "data"])["path"]
            .as_str()
            .unwrap(),
    );
    d.fails(
        &[
            "vm",
            "move-storage",
            "mover",
            "--disk",
            "data",
            "--to",
            "/tmp",
        ],
        65,
        "outside the allowed disk directories",
    );
    let m = d.json(&[
        "vm",
        "move-storage",
        "mover",
        "--disk",
        "0",
        "--to",
        fast.to_str().unwrap(),
    ]);
    assert_eq!(m["state"], "completed", "{m}");
    assert_eq!(m["old_removed"], true, "{m}");
    let new = fast.canonicalize().unwrap().join("data.vhdx");
    let disk = d.json(&["volume", "show", "data"]);
    assert_eq!(disk["path"], new.to_str().unwrap(), "{disk}");
    assert_eq!(disk["format"], "vhdx", "{disk}");
    assert!(!old.exists(), "the old image is removed");
    let t = Instant::now();
    while d.state("mover")["state"] != "stopped" {
        assert!(t.elapsed() < Duration::from_secs(120), "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let id = d.state("mover")["id"].as_str().unwrap().to_string();
    let log =
        std::fs::read_to_string(d.state_dir().join("logs").join(format!("{id}.log"))).unwrap();
    for step in ["blk-iops", "blk-verify"] {
        assert!(
            log.lines()
                .any(|l| l.contains(step) && l.contains("result=pass")),
            "{step} did not pass: {log}"
        );
    }
    assert!(!log.contains("result=fail"), "{log}");
}
