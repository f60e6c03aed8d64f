//! Shared-nothing live migration end to end: a probe VM writing its VHDX
//! and dirtying memory moves between two workers whose directories share
//! nothing; the destination creates the image in its `--dest-dir`, the
//! guest verifies every page and every sector it wrote there, and
//! `qemu-img compare` finds both images identical. A migration cut in the
//! middle leaves the source running and no file in the destination's
//! directory.

#[path = "support/qemu_img.rs"]
mod qemu_img;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qemu_img::check_pattern_with_qemu_img;
use tern_test_support::procs::{Spawned, Tag};
use tern_test_support::proto::migration::{MigrateStatus, MigrationPhase, MigrationStatus};
use tern_test_support::proto::VmState;
use tern_test_support::{tern_run, Ternd, Worker};

const MIB: u64 = 1 << 20;
/// The guest writes (and reads back) the first 24 MiB of its 64 MiB disk
/// while the migration starts, dirties memory until told to stop, then
/// checks every page and every sector it wrote.
const WORKLOAD: &str = "probe:blk-verify,mib=24+dirty,mib=16,rate=8+verify+blk-check,mib=24";
const DATA: u64 = 24 * MIB;

fn tern() -> Command {
    Command::new(tern_test_support::tern_exe())
}

/// A dynamic VHDX of 64 MiB with 1 MiB blocks (so its sparseness shows).
fn make_disk(dir: &Path) -> PathBuf {
    let p = dir.join("disk.vhdx");
    vhdx::create(
        &p,
        &vhdx::CreateOptions::dynamic(64 * MIB).block_size(MIB as u32),
    )
    .unwrap()
    .close()
    .unwrap();
    p
}

fn run_args(disk: &Path) -> Command {
    let mut c = tern_run();
    c.args([
        "--vcpus", "1", "--memory", "64M", "--guest", WORKLOAD, "--serial", "null",
    ]);
    c.arg("--disk").arg(format!("path={}", disk.display()));
    c
}

/// The source in `dir` (its image there); runs its guest at once.
fn source(socks: &Path, disk: &Path) -> Worker {
    Worker::with_control("source", run_args(disk), &socks.join("source.sock"))
}

/// A destination that creates mirrored disks in `dest_dir` (None: takes
/// none); returns it and its endpoint.
fn destination(socks: &Path, name: &str, disk: &Path, dest_dir: Option<&Path>) -> (Worker, String) {
    let mut c = run_args(disk);
    let listening = socks.join(format!("{name}.listening"));
    c.args(["--incoming", "tcp:127.0.0.1:0", "--listening-file"])
        .arg(&listening);
    if let Some(d) = dest_dir {
        c.arg("--dest-dir").arg(d);
    }
    let w = Worker::with_control(name, c, &socks.join(format!("{name}.sock")));
    w.wait_line("waiting for a migration on ", Duration::from_secs(20));
    let doc = tern_worker_proto::Listening::read(&listening)
        .unwrap()
        .expect("listening file");
    (w, doc.endpoint.to_string())
}

fn migrate_bg(src: &Worker, to: &str, extra: &[&str]) -> Spawned {
    let mut cmd = tern();
    cmd.args(["migrate", "--json", "--with-storage", "--control"])
        .arg(src.sock())
        .args(["--to", to])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Spawned::spawn(&mut cmd, &Tag::new()).unwrap()
}

fn output_of(mut child: Spawned) -> (Option<i32>, String, String) {
    let out = child.wait_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_migration(
    src: &Worker,
    what: &str,
    pred: impl Fn(&MigrationStatus) -> bool,
) -> MigrationStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = src.call(MigrateStatus {});
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {v:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Files in `dir`.
fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Stops the dirty step; the guest checks every page, then every sector
/// of the disk it wrote, and exits 0.
fn verify_all(w: &Worker) {
    let g = w.generation();
    w.wait_generation(g + 1);
    w.finish_and_verify();
    let err = w.stderr();
    let check = err
        .lines()
        .find(|l| l.contains("blk-check disk=0") && l.contains("result="))
        .unwrap_or_else(|| panic!("no blk-check report: {err}"));
    assert!(
        check.contains("bad_sectors=0") && check.contains("result=pass"),
        "{check}"
    );
}

#[test]
fn a_vm_writing_its_vhdx_moves_with_its_disk_between_separate_directories() {
    let name = "a_vm_writing_its_vhdx_moves_with_its_disk_between_separate_directories";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let Some(qemu_img) = tern_test_support::tool(name, "qemu-img") else {
        return;
    };
    let (socks, a, b) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let disk = make_disk(a.path());
    let src = source(socks.path(), &disk);
    // The destination is told of an image it does not have: the one it
    // creates in its own directory replaces it.
    let (dst, ep) = destination(
        socks.path(),
        "dest",
        &b.path().join("other.vhdx"),
        Some(b.path()),
    );
    src.wait_socket(Duration::from_secs(20));
    // Started while the guest writes its disk; a modest cap keeps the
    // writes going during the first pass, so dirty rounds carry some.
    let m = migrate_bg(&src, &ep, &["--bandwidth", "24M", "--channels", "2"]);
    let (code, stdout, stderr) = output_of(m);
    assert_eq!(
        code,
        Some(0),
        "migrate: {stderr}\n{stdout}\n{}",
        src.stderr()
    );
    assert!(stdout.contains("of disk mirrored"), "{stdout}");
    let last: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap();
    assert_eq!(last["phase"], "completed", "{last}");
    // Whatever the first pass found, every sector the guest wrote went
    // across (the rest in dirty rounds).
    assert!(last["disk_sent"].as_u64().unwrap() >= DATA, "{last}");
    assert!(
        last["disk_sent"].as_u64().unwrap() >= last["disk_total"].as_u64().unwrap(),
        "{last}"
    );
    assert_eq!(
        src.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        src.stderr()
    );
    dst.wait_line("disk 0 is now", Duration::from_secs(10));
    verify_all(&dst);
    eprintln!("{name}: {last}");

    // The source keeps its image; the destination made the same one.
    let moved = b.path().join("disk.vhdx");
    assert_eq!(files(b.path()), vec!["disk.vhdx".to_string()]);
    assert!(disk.exists());
    let cmp = Command::new(&qemu_img)
        .args(["compare", "-f", "vhdx", "-F", "vhdx"])
        .arg(&disk)
        .arg(&moved)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
    assert!(String::from_utf8_lossy(&cmp.stdout).contains("identical"));
    check_pattern_with_qemu_img(&qemu_img, &moved, "vhdx", DATA);
    // Sparse: the copy holds about what the source holds, not 64 MiB.
    let (src_len, dst_len) = (
        std::fs::metadata(&disk).unwrap().len(),
        std::fs::metadata(&moved).unwrap().len(),
    );
    assert!(dst_len <= src_len + 4 * MIB, "{dst_len} vs {src_len}");
}

#[test]
fn a_cut_migration_leaves_the_source_running_and_no_file_at_the_destination() {
    let name = "a_cut_migration_leaves_the_source_running_and_no_file_at_the_destination";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let (socks, a, b) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let disk = make_disk(a.path());
    let src = source(socks.path(), &disk);
    src.wait_generation(1);

    // A destination with no directory for disks refuses before any byte.
    let (none, ep) = destination(socks.path(), "nodir", &disk, None);
    let (code, _, stderr) = output_of(migrate_bg(&src, &ep, &[]));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("takes no disks"), "{stderr}");
    none.kill();

    // Killed in the middle of the disk pass.
    let (dst, ep) = destination(socks.path(), "dest", &disk, Some(b.path()));
    let m = migrate_bg(&src, &ep, &["--bandwidth", "4M", "--channels", "1"]);
    wait_migration(&src, "disk data on the wire", |v| {
        v.disk_sent > 0 && v.disk_sent < v.disk_total
    });
    dst.kill();
    let (code, _, stderr) = output_of(m);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("keeps running on the source"), "{stderr}");
    let v = wait_migration(&src, "the end", |v| v.phase.is_final());
    assert_eq!(v.phase, MigrationPhase::Failed, "{v:?}");
    assert_eq!(src.status().state, VmState::Running);
    let g = src.generation();
    src.wait_generation(g + 1);
    assert!(
        files(b.path()).is_empty(),
        "left behind: {:?}",
        files(b.path())
    );

    // The same directory takes a retry, and the guest finds everything.
    let (dst2, ep2) = destination(socks.path(), "dest2", &disk, Some(b.path()));
    let (code, stdout, stderr) = output_of(migrate_bg(&src, &ep2, &[]));
    assert_eq!(code, Some(0), "retry: {stderr}\n{stdout}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    verify_all(&dst2);
    assert_eq!(files(b.path()), vec!["disk.vhdx".to_string()]);
}

#[test]
fn tern_vm_migrate_with_storage_moves_a_vm_and_its_vhdx_between_daemons_sharing_nothing() {
    let name =
        "tern_vm_migrate_with_storage_moves_a_vm_and_its_vhdx_between_daemons_sharing_nothing";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let Some(qemu_img) = tern_test_support::tool(name, "qemu-img") else {
        return;
    };
    tern_test_support::probe_guest();
    let tmp = tempfile::tempdir().unwrap();
    let (a_disks, b_disks) = (tmp.path().join("a-disks"), tmp.path().join("b-disks"));
    std::fs::create_dir_all(&a_disks).unwrap();
    std::fs::create_dir_all(&b_disks).unwrap();
    let a = Ternd::start_with(
        &tmp.path().join("a"),
        &["--disk-dir", a_disks.to_str().unwrap()],
    );
    let b = Ternd::start_with(
        &tmp.path().join("b"),
        &["--disk-dir", b_disks.to_str().unwrap()],
    );
    a.json(&["volume", "create", "data", "--size", "64M"]);
    let img = a_disks.join("data.vhdx");
    assert!(img.exists(), "{:?}", files(&a_disks));
    // Writes go on during the migration; the guest checks its 16 MiB on B
    // and ends.
    a.json(&[
        "vm",
        "create",
        "mover",
        "--memory",
        "64M",
        "--disk",
        "data",
        "--guest",
        "probe:blk-verify,mib=16+blk-iops,bs=4k,qd=4,secs=3,mix=randwrite+blk-check,mib=16",
        "--start",
    ]);
    let before = a.state("mover");
    // B's directory is not one of its disk directories: refused, the VM
    // runs on at A.
    let out = a.tern(&[
        "vm",
        "migrate",
        "mover",
        "--to",
        &b.host(),
        "--with-storage",
        "--dest-dir",
        a_disks.to_str().unwrap(),
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outside the allowed directories"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.state("mover")["state"], "running");
    let m = a.json(&[
        "vm",
        "migrate",
        "mover",
        "--to",
        &b.host(),
        "--with-storage",
    ]);
    assert_eq!(m["state"], "completed", "{m}");
    assert!(m["disk_sent_bytes"].as_u64().unwrap() > 0, "{m}");
    a.fails(&["vm", "show", "mover"], 2, "no VM named");
    // A forgot the disk but keeps its image; B registered its own copy.
    assert_eq!(a.json(&["volume", "list"])["disks"], serde_json::json!([]));
    assert!(img.exists());
    let moved = b_disks.join("data.vhdx");
    let on_b = b.json(&["volume", "show", "data"]);
    assert_eq!(on_b["path"], moved.to_str().unwrap(), "{on_b}");
    assert_eq!(on_b["vm"], "mover", "{on_b}");
    assert_eq!(b.state("mover")["id"], before["id"]);
    let t = Instant::now();
    while b.state("mover")["state"] != "stopped" {
        assert!(t.elapsed() < Duration::from_secs(120), "{}", b.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(
        tmp.path()
            .join("b/state/logs")
            .join(format!("{}.log", before["id"].as_str().unwrap())),
    )
    .unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("blk-check disk=0") && l.contains("result=pass")),
        "{log}"
    );
    assert!(!log.contains("result=fail"), "{log}");
    check_pattern_with_qemu_img(&qemu_img, &moved, "vhdx", 16 * MIB);
}
