//! Disks through a real daemon: each volume reaches the guest as exactly
//! its own file, in the format the registry records, with every QoS limit
//! the API accepted.
//!
//! Needs `cargo build -p tern -p probe-guest` first; without `/dev/kvm` each
//! test records a SKIP and returns.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_api::{CreateDisk, CreateVm, DiskFormat, DiskQos, Size, Vm, VmState};
use tern_daemon::Daemon;
use tern_probe_abi::blk::{check_sector, WORDS_PER_SECTOR};

const MIB: u64 = 1 << 20;

/// Kills every worker the daemon recorded when the test ends, panicking or
/// not: workers run in their own process groups and outlive the daemon.
struct Reaper(Arc<Daemon>);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(vms) = self.0.reg.vms() else { return };
        for vm in vms {
            let (Some(pid), Some(start)) = (vm.pid, vm.pid_start) else {
                continue;
            };
            // Only the process the daemon started, not a reused pid.
            if tern_daemon::worker::process_start(pid) == Some(start) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }
}

async fn daemon(test: &str) -> Option<(common::TestDaemon, Reaper)> {
    if !tern_test_support::kvm_available(test) {
        return None;
    }
    let t = common::start(common::tern_exe()).await;
    let reaper = Reaper(t.daemon.clone());
    Some((t, reaper))
}

fn disk_dir(t: &common::TestDaemon) -> PathBuf {
    t.daemon.cfg.disk_dirs[0].clone()
}

async fn volume(
    t: &common::TestDaemon,
    name: &str,
    path: &Path,
    format: Option<DiskFormat>,
    size: u64,
) -> tern_api::Disk {
    t.client
        .create_disk(&CreateDisk {
            name: name.into(),
            size: Size(size),
            format,
            path: Some(path.display().to_string()),
        })
        .await
        .unwrap_or_else(|e| panic!("creating volume {name} at {}: {e}", path.display()))
}

async fn vm(t: &common::TestDaemon, name: &str, guest: &str, disks: &[&str]) -> Vm {
    t.client
        .create_vm(&CreateVm {
            name: name.into(),
            vcpus: Some(1),
            memory: Some(Size(64 * MIB)),
            guest: guest.into(),
            disks: disks.iter().map(|d| d.to_string()).collect(),
        })
        .await
        .unwrap()
}

/// Waits until VM `name` has no worker any more.
async fn until_ended(t: &common::TestDaemon, name: &str, limit: Duration) -> Vm {
    let start = Instant::now();
    loop {
        let v = t.client.get_vm(name).await.unwrap();
        if !v.state.has_worker() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "VM {name} still {} after {limit:?}",
            v.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The probe's report lines in VM `vm`'s worker log.
fn probe_lines(t: &common::TestDaemon, vm: &Vm) -> Vec<String> {
    std::fs::read_to_string(t.daemon.cfg.worker_log(&vm.id))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("[probe] "))
        .map(str::to_string)
        .collect()
}

fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The final `blk-verify` report for disk `disk`.
fn verify_report(lines: &[String], disk: usize) -> HashMap<String, String> {
    let prefix = format!("blk-verify disk={disk} ");
    let line = lines
        .iter()
        .find(|l| l.starts_with(&prefix) && l.contains("result="))
        .unwrap_or_else(|| panic!("no blk-verify report for disk {disk} in:\n{lines:#?}"));
    fields(line)
}

/// Whether `sector` read from `file` holds the probe's pattern.
fn has_pattern(sector_bytes: &[u8], sector: u64) -> bool {
    let mut words = [0u64; WORDS_PER_SECTOR];
    for (w, b) in words.iter_mut().zip(sector_bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes(b.try_into().unwrap());
    }
    check_sector(&words, sector).is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vhdx_volume_at_an_img_path_is_attached_as_vhdx() {
    let test = "a_vhdx_volume_at_an_img_path_is_attached_as_vhdx";
    let Some((t, _reaper)) = daemon(test).await else {
        return;
    };
    let Some(qemu_img) = tern_test_support::tool(test, "qemu-img") else {
        return;
    };
    let path = disk_dir(&t).join("x.img");
    // The default format: what `tern volume create x --path DIR/x.img` makes.
    let disk = volume(&t, "x", &path, None, 64 * MIB).await;
    assert_eq!(disk.format, DiskFormat::Vhdx);
    let v = vm(&t, "v", "probe:blk-verify,mib=16", &["x"]).await;
    t.client.vm_action("v", "start").await.unwrap();
    let end = until_ended(&t, "v", Duration::from_secs(120)).await;
    let lines = probe_lines(&t, &v);
    assert_eq!(end.state, VmState::Stopped, "{end:?}\n{lines:#?}");
    let r = verify_report(&lines, 0);
    assert_eq!(r["result"], "pass", "{lines:#?}");
    // Seen as raw, the guest would get the file's few MiB, not 64 MiB.
    assert_eq!(r["capacity"], (64 * MIB).to_string(), "{lines:#?}");

    let out = std::process::Command::new(&qemu_img)
        .args(["check", "-f", "vhdx"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = vhdx::check::check(&path, false).unwrap();
    assert_eq!(report.errors(), 0, "{:?}", report.problems);
    // The guest's data is in the VHDX's payload, where it wrote it.
    let mut img = vhdx::Disk::open(&path, false).unwrap();
    let mut buf = vec![0u8; 512];
    for sector in [0u64, 4095, 16 * 2048 - 1] {
        img.read_at(&mut buf, sector * 512).unwrap();
        assert!(
            has_pattern(&buf, sector),
            "sector {sector} lacks the pattern"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_with_option_characters_attach_exactly_their_own_file() {
    let test = "paths_with_option_characters_attach_exactly_their_own_file";
    let Some((t, _reaper)) = daemon(test).await else {
        return;
    };
    let dir = disk_dir(&t);
    // The file an injected `path=` or a cut at the comma would reach.
    let decoy = dir.join("a.raw");
    volume(&t, "a", &decoy, Some(DiskFormat::Raw), 8 * MIB).await;
    // `DIR/sub,path=DIR/a.raw` as one path: a directory named `sub,path=`
    // with DIR's components below it.
    let nested = PathBuf::from(format!("{}/sub,path={}", dir.display(), dir.display()));
    std::fs::create_dir_all(&nested).unwrap();
    let cases = [
        ("ro", dir.join("a.raw,readonly"), 16 * MIB),
        ("inj", nested.join("a.raw"), 24 * MIB),
        ("sp", dir.join("with space.raw"), 32 * MIB),
        ("eq", dir.join("k=v,poll,max-iops=1.raw"), 40 * MIB),
    ];
    for (name, path, size) in &cases {
        volume(&t, name, path, Some(DiskFormat::Raw), *size).await;
    }
    let guest = (0..cases.len())
        .map(|i| format!("blk-verify,disk={i},mib=1"))
        .collect::<Vec<_>>()
        .join("+");
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let v = vm(&t, "v", &format!("probe:{guest}"), &names).await;
    t.client.vm_action("v", "start").await.unwrap();
    let end = until_ended(&t, "v", Duration::from_secs(120)).await;
    let lines = probe_lines(&t, &v);
    assert_eq!(end.state, VmState::Stopped, "{end:?}\n{lines:#?}");
    for (i, (name, path, size)) in cases.iter().enumerate() {
        let r = verify_report(&lines, i);
        assert_eq!(r["result"], "pass", "volume {name}: {lines:#?}");
        // Each size is different: the capacity names the file the guest got.
        assert_eq!(r["capacity"], size.to_string(), "volume {name}: {lines:#?}");
        let data = std::fs::read(path).unwrap();
        assert!(
            has_pattern(&data[..512], 0)
                && has_pattern(&data[MIB as usize - 512..MIB as usize], 2047),
            "volume {name}: {} lacks the guest's writes",
            path.display()
        );
    }
    let data = std::fs::read(&decoy).unwrap();
    assert!(
        data.iter().all(|&b| b == 0),
        "the decoy {} was written",
        decoy.display()
    );
}

/// `blk-iops` per-second reports: second number to IOPS.
fn iops_by_second(lines: &[String]) -> HashMap<u64, f64> {
    lines
        .iter()
        .filter(|l| l.starts_with("blk-iops ") && l.contains(" second="))
        .map(|l| fields(l))
        .filter_map(|f| Some((f.get("second")?.parse().ok()?, f.get("iops")?.parse().ok()?)))
        .collect()
}

fn mean(by_second: &HashMap<u64, f64>, seconds: std::ops::RangeInclusive<u64>) -> f64 {
    let v: Vec<f64> = seconds
        .clone()
        .map(|s| {
            *by_second
                .get(&s)
                .unwrap_or_else(|| panic!("no report for second {s}: {by_second:?}"))
        })
        .collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bw_set_through_the_api_limits_the_guest() {
    let test = "max_bw_set_through_the_api_limits_the_guest";
    let Some((t, _reaper)) = daemon(test).await else {
        return;
    };
    const BS: u64 = 64 << 10;
    let path = disk_dir(&t).join("bw.raw");
    volume(&t, "bw", &path, Some(DiskFormat::Raw), 64 * MIB).await;
    // Set while the VM is off: stored, and given to the worker at start.
    let first = DiskQos {
        max_bw: Some(4 * MIB),
        ..DiskQos::default()
    };
    let d = t.client.set_disk_qos("bw", &first).await.unwrap();
    assert_eq!(d.qos, first);
    let listed = t.client.list_disks().await.unwrap();
    assert_eq!(listed.iter().find(|d| d.name == "bw").unwrap().qos, first);
    let v = vm(
        &t,
        "v",
        &format!("probe:blk-iops,bs={BS},qd=4,secs=14,mix=randread"),
        &["bw"],
    )
    .await;
    t.client.vm_action("v", "start").await.unwrap();
    // Changed on the running VM after second 6.
    let start = Instant::now();
    while !iops_by_second(&probe_lines(&t, &v)).contains_key(&6) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no 6th second: {:#?}",
            probe_lines(&t, &v)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = DiskQos {
        max_bw: Some(MIB),
        ..DiskQos::default()
    };
    let d = t.client.set_disk_qos("bw", &second).await.unwrap();
    assert_eq!(d.qos, second);
    let end = until_ended(&t, "v", Duration::from_secs(60)).await;
    let lines = probe_lines(&t, &v);
    assert_eq!(end.state, VmState::Stopped, "{end:?}\n{lines:#?}");
    let by_second = iops_by_second(&lines);
    // Seconds 2-6 under 4 MiB/s (64 IOPS of 64 KiB), 10-14 under 1 MiB/s
    // (16 IOPS); the first second of each holds the bucket's burst.
    let before = mean(&by_second, 2..=6) * BS as f64;
    let after = mean(&by_second, 10..=14) * BS as f64;
    eprintln!(
        "max_bw 4 MiB/s: guest read {:.2} MiB/s; 1 MiB/s: {:.2} MiB/s",
        before / MIB as f64,
        after / MIB as f64
    );
    let within = |got: f64, want: u64| (got - want as f64).abs() <= want as f64 * 0.15;
    assert!(
        within(before, 4 * MIB),
        "at start: {before} B/s, want 4 MiB/s ± 15%\n{lines:#?}"
    );
    assert!(
        within(after, MIB),
        "after the live change: {after} B/s, want 1 MiB/s ± 15%\n{lines:#?}"
    );
}
