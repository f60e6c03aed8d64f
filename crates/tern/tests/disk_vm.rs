//! Disks in a running VM, end to end: `tern run --disk` with the probe
//! guest's virtio-blk driver, the control socket (QoS, resize, events), and
//! `qemu-img` as the outside judge of what landed in the files.
//!
//! Each test skips loudly (never passes silently) without /dev/kvm or a
//! host tool it needs.

#[path = "support/qemu_img.rs"]
mod qemu_img;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qemu_img::check_pattern_with_qemu_img;
use tern_test_support::proto::requests::{
    DiskQos, DiskResize, Events, ProbeStatus, QosEventKind, StatusReply,
};
use tern_test_support::proto::VmState;
use tern_test_support::{tern_run, Worker};

const MIB: u64 = 1 << 20;

/// `tern run` of a 64 MiB VM running probe `workload` on `disks`.
fn vm(workload: &str, disks: &[String]) -> Command {
    let mut cmd = tern_run();
    cmd.args(["--memory", "64M", "--serial", "null"])
        .arg("--guest")
        .arg(format!("probe:{workload}"));
    for d in disks {
        cmd.arg("--disk").arg(d);
    }
    cmd
}

/// A worker in the background with a control socket.
fn start(workload: &str, disks: &[String]) -> Worker {
    Worker::start_temp("worker", vm(workload, disks))
}

/// Runs a worker to its end: its exit code and stderr.
fn run_to_end(workload: &str, disks: &[String], secs: u64) -> (i32, String) {
    Worker::spawn("worker", vm(workload, disks)).finish(Duration::from_secs(secs))
}

/// `key=value` tokens of the probe's summary line (the one with a
/// `result=`) of workload `name`.
fn report(stderr: &str, name: &str) -> HashMap<String, String> {
    let line = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("[probe] "))
        .find(|l| l.starts_with(name) && l.contains("result="))
        .unwrap_or_else(|| panic!("no '{name}' report in:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(r: &HashMap<String, String>, keys: &[&str]) -> f64 {
    keys.iter()
        .find_map(|k| r.get(*k).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("none of {keys:?} in report {r:?}"))
}

fn raw_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn vhdx_disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    vhdx::create(&p, &vhdx::CreateOptions::dynamic(size))
        .unwrap()
        .close()
        .unwrap();
    p
}

fn spec(p: &Path, extra: &str) -> String {
    format!("path={}{extra}", p.display())
}

#[test]
fn blk_verify_on_raw_dynamic_and_differencing_vhdx_seen_by_qemu_img() {
    let name = "blk_verify_on_raw_dynamic_and_differencing_vhdx_seen_by_qemu_img";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let Some(qemu_img) = tern_test_support::tool(name, "qemu-img") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_disk(dir.path(), "d.img", 64 * MIB);
    let dynamic = vhdx_disk(dir.path(), "d.vhdx", 64 * MIB);
    // A parent with data past what the guest writes, then a child over it.
    let parent = vhdx_disk(dir.path(), "base.vhdx", 64 * MIB);
    {
        let mut p = vhdx::Disk::open(&parent, true).unwrap();
        p.write_at(&[0xabu8; 4096], 40 * MIB).unwrap();
        p.write_at(&[0x11u8; 4096], 0).unwrap();
        p.close().unwrap();
    }
    let child = dir.path().join("child.avhdx");
    vhdx::create(&child, &vhdx::CreateOptions::differencing(&parent))
        .unwrap()
        .close()
        .unwrap();
    for img in [&raw, &dynamic, &child] {
        let (code, stderr) = run_to_end("blk-verify,mib=16", &[spec(img, "")], 120);
        assert_eq!(code, 0, "{}: {stderr}", img.display());
        assert_eq!(report(&stderr, "blk-verify")["result"], "pass", "{stderr}");
    }
    check_pattern_with_qemu_img(&qemu_img, &raw, "raw", 16 * MIB);
    check_pattern_with_qemu_img(&qemu_img, &dynamic, "vhdx", 16 * MIB);
    // The parent was not written through the child...
    let mut p = vhdx::Disk::open(&parent, false).unwrap();
    let mut b = [0u8; 512];
    p.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [0x11u8; 512]);
    drop(p);
    // ... and qemu-img reads no differencing VHDX ("Operation not
    // supported"), so the child is merged into its parent first and the
    // parent judged: the guest's writes over the parent's own data.
    vhdx::merge::merge(&child).unwrap();
    let data = check_pattern_with_qemu_img(&qemu_img, &parent, "vhdx", 16 * MIB);
    assert_eq!(
        &data[(40 * MIB) as usize..(40 * MIB + 4096) as usize],
        &[0xabu8; 4096][..],
        "the parent's data beyond the guest's range is kept"
    );
}

/// Normalized IOPS the guest measured in a `blk-iops` report.
fn guest_normalized_iops(stderr: &str, bs: u64) -> f64 {
    let r = report(stderr, "blk-iops");
    if let Some(v) = ["normalized_iops", "niops", "norm_iops"]
        .iter()
        .find_map(|k| r.get(*k).and_then(|v| v.parse::<f64>().ok()))
    {
        return v;
    }
    num(&r, &["iops"]) * tern_probe_abi::blk::normalized_ios(bs) as f64
}

#[test]
fn qos_max_iops_holds_500_normalized_for_4k_and_64k() {
    let name = "qos_max_iops_holds_500_normalized_for_4k_and_64k";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_disk(dir.path(), "d.img", 256 * MIB);
    for bs in [4096u64, 65536] {
        let wl = format!("blk-iops,bs={bs},qd=4,secs=10,mix=randread");
        let (code, stderr) = run_to_end(&wl, &[spec(&img, ",max-iops=500")], 120);
        assert_eq!(code, 0, "{stderr}");
        let n = guest_normalized_iops(&stderr, bs);
        eprintln!("bs={bs} max-iops=500: guest measured {n} normalized IOPS");
        assert!(
            (475.0..=525.0).contains(&n),
            "bs={bs}: guest measured {n} normalized IOPS, want 500 ± 5%\n{stderr}"
        );
    }
}

/// Requests the device completed, from the worker's status.
fn completed(w: &Worker) -> u64 {
    w.status().disks[0].requests
}

#[test]
fn qos_limit_raised_at_runtime_takes_effect_within_a_second() {
    let name = "qos_limit_raised_at_runtime_takes_effect_within_a_second";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_disk(dir.path(), "d.img", 64 * MIB);
    let w = start(
        "blk-iops,bs=4k,qd=1,secs=8,mix=randread",
        &[spec(&img, ",max-iops=200")],
    );
    w.wait_status_until(Duration::from_secs(20), "requests flowing", |s| {
        s.disks.first().map_or(0, |d| d.requests) > 50
    });
    let (a, t0) = (completed(&w), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let slow = (completed(&w) - a) as f64 / t0.elapsed().as_secs_f64();
    let r = w.call(DiskQos {
        disk: 0,
        max_iops: Some(2000),
        ..DiskQos::default()
    });
    assert_eq!(r.qos.max_iops, 2000, "{r:?}");
    let raised = Instant::now();
    // The new rate within a second of the change: measured over 0.2..1 s.
    std::thread::sleep(Duration::from_millis(200));
    let (b, t1) = (completed(&w), Instant::now());
    std::thread::sleep(raised + Duration::from_secs(1) - Instant::now());
    let fast = (completed(&w) - b) as f64 / t1.elapsed().as_secs_f64();
    eprintln!(
        "completed/s: {slow:.0} under max-iops=200, {fast:.0} in the second after raising to 2000"
    );
    assert!(
        (150.0..=230.0).contains(&slow),
        "rate under max-iops=200 was {slow}"
    );
    assert!(
        fast > 1000.0,
        "rate after raising to 2000 was {fast} (before: {slow})"
    );
    let (code, stderr) = w.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn unreachable_min_iops_raises_the_event() {
    let name = "unreachable_min_iops_raises_the_event";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_disk(dir.path(), "d.img", 64 * MIB);
    // Three windows in a row must see demand; a long run leaves room for
    // a loaded host stalling the guest now and then.
    let w = start(
        "blk-iops,bs=4k,qd=1,secs=15,mix=randread",
        &[spec(&img, ",min-iops=100000000")],
    );
    let deadline = Instant::now() + Duration::from_secs(25);
    let ev = loop {
        if let Some(e) = w.call(Events {}).events.first().cloned() {
            break e;
        }
        assert!(Instant::now() < deadline, "no event: {}", w.stderr());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ev.event, QosEventKind::MinIopsNotMet, "{ev:?}");
    assert_eq!(ev.disk, 0);
    assert_eq!(ev.min_iops, 100_000_000);
    assert!(ev.measured_iops > 0, "{ev:?}");
    let (code, stderr) = w.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("min-iops-not-met"), "{stderr}");
}

#[test]
fn unmet_minimum_is_quiet_when_reachable() {
    let name = "unmet_minimum_is_quiet_when_reachable";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_disk(dir.path(), "d.img", 64 * MIB);
    let w = start(
        "blk-iops,bs=4k,qd=1,secs=6,mix=randread",
        &[spec(&img, ",min-iops=10")],
    );
    let (code, stderr) = w.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("min-iops-not-met"), "{stderr}");
}

/// The probe's status page in `s` (all zero before it is readable).
fn probe(s: &StatusReply) -> ProbeStatus {
    s.probe.clone().unwrap_or_default()
}

fn resize(size: u64) -> DiskResize {
    DiskResize { disk: 0, size }
}

#[test]
fn grow_while_the_guest_watches_capacity() {
    let name = "grow_while_the_guest_watches_capacity";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for img in [
        raw_disk(dir.path(), "d.img", 64 * MIB),
        vhdx_disk(dir.path(), "d.vhdx", 64 * MIB),
    ] {
        let w = start("blk-capacity", &[spec(&img, "")]);
        w.wait_status_until(Duration::from_secs(20), "the guest reading 64 MiB", |s| {
            probe(s).blk_capacity == 64 * MIB
        });
        let r = w.call(resize(96 * MIB));
        assert_eq!(r.capacity, 96 * MIB, "{r:?}");
        let s = w.wait_status_until(Duration::from_secs(10), "the guest seeing 96 MiB", |s| {
            probe(s).blk_capacity == 96 * MIB
        });
        assert!(probe(&s).blk_capacity_changes >= 1);
        assert_eq!(s.disks[0].capacity, 96 * MIB);
        w.probe_stop();
        let (code, stderr) = w.finish(Duration::from_secs(30));
        assert_eq!(code, 0, "{}: {stderr}", img.display());
        assert!(stderr.contains("blk-capacity"), "{stderr}");
    }
}

#[test]
fn shrink_refused_while_data_is_there_accepted_after_trim() {
    let name = "shrink_refused_while_data_is_there_accepted_after_trim";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for img in [
        raw_disk(dir.path(), "d.img", 64 * MIB),
        vhdx_disk(dir.path(), "d.vhdx", 64 * MIB),
    ] {
        let w = start(
            "blk-verify,mib=48+blk-capacity+blk-trim,from=16+blk-capacity",
            &[spec(&img, "")],
        );
        w.wait_status_until(
            Duration::from_secs(60),
            "blk-verify done, capacity watched",
            |s| probe(s).step == 1 && probe(s).blk_in_use_end == 48 * MIB,
        );
        let e = w.refused(resize(32 * MIB)).message;
        assert!(e.contains("cannot shrink to 33554432 bytes"), "{e}");
        assert_eq!(w.status().disks[0].capacity, 64 * MIB);
        // The guest trims from 16 MiB and says so; the next step watches.
        w.probe_stop();
        w.wait_status_until(Duration::from_secs(60), "the trim done", |s| {
            probe(s).step == 3 && probe(s).blk_in_use_end == 16 * MIB
        });
        let r = w.call(resize(32 * MIB));
        assert_eq!(r.capacity, 32 * MIB, "{}: {r:?}", img.display());
        w.wait_status_until(Duration::from_secs(10), "the guest seeing 32 MiB", |s| {
            probe(s).blk_capacity == 32 * MIB
        });
        // Below what the guest still uses: refused by the guest's own claim.
        let e = w.refused(resize(8 * MIB));
        assert!(e.message.contains("still uses"), "{e:?}");
        w.probe_stop();
        let (code, stderr) = w.finish(Duration::from_secs(30));
        assert_eq!(code, 0, "{}: {stderr}", img.display());
    }
}

#[test]
fn missing_locked_and_corrupt_disks_are_refused_clearly() {
    let name = "missing_locked_and_corrupt_disks_are_refused_clearly";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.img");
    let (code, stderr) = run_to_end("hello", &[spec(&missing, "")], 30);
    assert_eq!(code, 66, "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");

    let corrupt = dir.path().join("bad.vhdx");
    std::fs::write(&corrupt, vec![0x5au8; 2 << 20]).unwrap();
    let (code, stderr) = run_to_end("hello", &[spec(&corrupt, "")], 30);
    assert_eq!(code, 66, "{stderr}");
    assert!(stderr.contains("cannot open VHDX disk"), "{stderr}");

    let (code, stderr) = run_to_end("hello", &["path=x.img,speed=9".into()], 30);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("unknown disk option 'speed'"), "{stderr}");

    // One worker holds the disk; a second is refused, read-only too.
    let img = raw_disk(dir.path(), "d.img", 16 * MIB);
    let holder = start("blk-capacity", &[spec(&img, "")]);
    for extra in ["", ",readonly"] {
        let (code, stderr) = run_to_end("hello", &[spec(&img, extra)], 30);
        assert_eq!(code, 69, "{stderr}");
        assert!(stderr.contains("locked by another process"), "{stderr}");
    }
    // Two read-only users may share it once the writer is gone.
    holder.probe_stop();
    assert_eq!(holder.finish(Duration::from_secs(30)).0, 0);
    let a = start("blk-capacity", &[spec(&img, ",readonly")]);
    let (code, stderr) = run_to_end("hello", &[spec(&img, ",readonly")], 30);
    assert_eq!(code, 0, "{stderr}");
    a.probe_stop();
    assert_eq!(a.finish(Duration::from_secs(30)).0, 0);
}

#[test]
fn guest_addressing_past_the_end_gets_an_error_and_the_vm_runs_on() {
    let name = "guest_addressing_past_the_end_gets_an_error_and_the_vm_runs_on";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = raw_disk(dir.path(), "d.img", 64 * MIB);
    // Random reads over 64 MiB; the disk is cut to 16 MiB under them (its
    // tail holds no data, and blk-iops claims no range), so the guest
    // addresses sectors past the new end until its step ends.
    let w = start(
        "blk-iops,bs=4k,qd=4,secs=4,mix=randread+hello",
        &[spec(&img, "")],
    );
    w.wait_status_until(Duration::from_secs(20), "requests flowing", |s| {
        s.disks.first().map_or(0, |d| d.requests) > 100
    });
    let r = w.call(resize(16 * MIB));
    assert_eq!(r.capacity, 16 * MIB, "{r:?}");
    w.wait_status_until(Duration::from_secs(10), "failed requests", |s| {
        s.disks.first().map_or(0, |d| d.errors) > 0
    });
    // The VM runs on: the control socket answers and the guest finishes.
    assert_eq!(w.status().state, VmState::Running);
    let (code, stderr) = w.finish(Duration::from_secs(60));
    // The guest saw I/O errors (its step fails: status 1), the host names
    // the bad request once, and nothing crashed.
    assert_eq!(code, 1, "{stderr}");
    let r = report(&stderr, "blk-iops");
    assert_eq!(r["result"], "fail", "{r:?}");
    assert!(
        stderr.contains("guest request failed") && stderr.contains("beyond the disk's end"),
        "{stderr}"
    );
    assert!(!stderr.contains("crashed"), "{stderr}");
    assert!(stderr.contains("hello"), "the next step ran: {stderr}");
}
