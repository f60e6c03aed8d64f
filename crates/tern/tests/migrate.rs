//! Live migration end to end: real workers, the probe guest dirtying
//! memory during the migration, then verifying every page stamp at the
//! destination.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_test_support::procs::{self, Spawned, Tag};
use tern_test_support::proto::migration::{MigrateStatus, MigrationPhase, MigrationStatus};
use tern_test_support::proto::VmState;
use tern_test_support::{tern_run, Worker};

const WORKLOAD: &str = "probe:dirty,mib=32,rate=64+verify";

fn tern() -> Command {
    Command::new(tern_test_support::tern_exe())
}

/// Starts the worker `cmd` with a control socket `NAME.sock` in `dir`.
fn spawn(name: &str, dir: &Path, mut cmd: Command) -> Worker {
    cmd.args(["--serial", "null"]);
    Worker::with_control(name, cmd, &dir.join(format!("{name}.sock")))
}

/// Stops the dirty step after one more pass; the guest verifies every
/// page and exits 0.
fn verify(w: &Worker) {
    let g = w.generation();
    w.wait_generation(g + 1);
    w.finish_and_verify();
}

fn run_args(vcpus: u32, memory: &str) -> Command {
    let mut c = tern_run();
    c.args(["--vcpus", &vcpus.to_string(), "--memory", memory]);
    c.args(["--guest", WORKLOAD]);
    c
}

fn source(dir: &Path, extra: &[&str]) -> Worker {
    let mut c = run_args(2, "96M");
    c.args(extra);
    let w = spawn("source", dir, c);
    w.wait_generation(1);
    w
}

/// A destination listening on `listen`; returns it and its endpoint.
fn destination(
    dir: &Path,
    name: &'static str,
    listen: &str,
    cmd: Option<Command>,
) -> (Worker, String) {
    let mut c = cmd.unwrap_or_else(|| run_args(2, "96M"));
    let listening = dir.join(format!("{name}.listening"));
    c.args(["--incoming", listen, "--listening-file"])
        .arg(&listening);
    let w = spawn(name, dir, c);
    // The typed document, and the log line people read, say the same.
    let line = w.wait_line("waiting for a migration on ", Duration::from_secs(20));
    let doc = tern_worker_proto::Listening::read(&listening)
        .unwrap()
        .expect("the listening file is written before the log line");
    let ep = doc.endpoint.to_string();
    assert!(line.trim_end().ends_with(&ep), "{line:?} vs {ep}");
    if listen.starts_with("tcp:") {
        assert!(
            !ep.ends_with(":0"),
            "port 0 asked for; the file names the real port: {ep}"
        );
    }
    (w, ep)
}

/// `tern migrate` to completion; returns (exit code, stdout, stderr).
fn migrate(src: &Worker, to: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = tern();
    cmd.args(["migrate", "--json", "--control"])
        .arg(src.sock())
        .args(["--to", to])
        .args(extra);
    let out = procs::output(&mut cmd).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn last_status(stdout: &str) -> Value {
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null)
}

/// Migrates a dirtying guest over loopback and checks every page.
fn migrate_and_verify(test: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), &[]);
    let (dst, ep) = destination(dir.path(), "dest", "tcp:127.0.0.1:0", None);
    let (code, stdout, stderr) = migrate(&src, &ep, extra);
    assert_eq!(code, Some(0), "{test}: migrate failed: {stderr}\n{stdout}");
    let last = last_status(&stdout);
    assert_eq!(last["phase"], "completed", "{test}: {last}");
    assert_eq!(
        src.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{test}: source did not end: {}",
        src.stderr()
    );
    dst.wait_line("migration complete", Duration::from_secs(10));
    verify(&dst);
    eprintln!("{test}: {last}");
    last
}

#[test]
fn loopback_one_channel_uncompressed() {
    if !tern_test_support::kvm_available("loopback_one_channel_uncompressed") {
        return;
    }
    let s = migrate_and_verify("1ch-off", &["--channels", "1", "--compression", "off"]);
    assert_eq!(s["channels"], 1);
    assert_eq!(s["compression"], "none");
    assert!(s["zero_pages"].as_u64().unwrap() > 0 || s["rounds"].as_u64().unwrap() >= 1);
}

#[test]
fn loopback_two_channels_zstd() {
    if !tern_test_support::kvm_available("loopback_two_channels_zstd") {
        return;
    }
    let s = migrate_and_verify("2ch-zstd", &["--channels", "2", "--compression", "zstd"]);
    // Forced zstd is the per-channel stream where the destination takes it.
    assert_eq!(s["compression"], "zstd-stream");
    assert_eq!(s["channels"], 2);
}

/// The zstd stream and delta codecs: the destination says how many pages
/// came as deltas (the guest rewrites its pages with new stamps, so only
/// some win), and the guest verifies every page.
#[test]
fn loopback_zstd_stream_with_deltas() {
    if !tern_test_support::kvm_available("loopback_zstd_stream_with_deltas") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), &[]);
    let (dst, ep) = destination(dir.path(), "dest", "tcp:127.0.0.1:0", None);
    let (code, stdout, stderr) = migrate(&src, &ep, &["--channels", "2", "--compression", "zstd"]);
    assert_eq!(code, Some(0), "migrate failed: {stderr}\n{stdout}");
    assert_eq!(last_status(&stdout)["compression"], "zstd-stream");
    let line = dst.wait_line(" as deltas", Duration::from_secs(10));
    let deltas: u64 = line
        .split(", ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delta count in {line:?}"));
    assert!(deltas > 0, "no page came as a delta: {line}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    dst.wait_line("migration complete", Duration::from_secs(10));
    verify(&dst);
}

#[test]
fn loopback_four_channels_lz4() {
    if !tern_test_support::kvm_available("loopback_four_channels_lz4") {
        return;
    }
    let s = migrate_and_verify("4ch-lz4", &["--channels", "4", "--compression", "lz4"]);
    assert_eq!(s["compression"], "lz4");
    assert_eq!(s["channels"], 4);
}

#[test]
fn loopback_defaults_auto_compression() {
    if !tern_test_support::kvm_available("loopback_defaults_auto_compression") {
        return;
    }
    let s = migrate_and_verify("auto", &[]);
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(s["channels"], n as u64, "one channel per CPU by default");
    assert!(s["downtime_ms"].as_f64().is_some());
}

#[test]
fn a_peer_of_another_protocol_version_is_refused_before_memory() {
    if !tern_test_support::kvm_available(
        "a_peer_of_another_protocol_version_is_refused_before_memory",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (dst, ep) = destination(dir.path(), "dest", "tcp:127.0.0.1:0", None);
    let addr = ep.strip_prefix("tcp:").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Version 99 preamble, then a hello frame the destination must not need.
    let mut pre = b"TERNMIG\0".to_vec();
    pre.extend_from_slice(&99u32.to_le_bytes());
    s.write_all(&pre).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(reply.starts_with(b"TERNMIG\0"), "{reply:?}");
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("protocol 99"),
        "refusal names the version: {text:?}"
    );
    dst.wait_line("peer speaks migration protocol 99", Duration::from_secs(10));
    // The destination keeps waiting, and a real source still gets through.
    let src = source(dir.path(), &[]);
    let dst = dst;
    let (code, _, stderr) = migrate(&src, &ep, &["--channels", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    verify(&dst);
}

#[test]
fn a_destination_of_another_configuration_is_refused() {
    if !tern_test_support::kvm_available("a_destination_of_another_configuration_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), &[]);
    let (_dst, ep) = destination(
        dir.path(),
        "dest",
        "tcp:127.0.0.1:0",
        Some(run_args(1, "96M")),
    );
    let (code, stdout, stderr) = migrate(&src, &ep, &[]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("source has 2 vCPUs, destination 1"),
        "{stderr}"
    );
    let last = last_status(&stdout);
    assert_eq!(
        last["bytes_sent"], 0,
        "no memory before the handshake: {last}"
    );
    verify(&src);
}

/// Starts `tern migrate` in the background (JSON status lines on stdout).
fn migrate_bg(src: &Worker, to: &str, extra: &[&str]) -> Spawned {
    let mut cmd = tern();
    cmd.args(["migrate", "--json", "--control"])
        .arg(src.sock())
        .args(["--to", to])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Spawned::spawn(&mut cmd, &Tag::new()).unwrap()
}

/// Waits until the source's migration has sent memory.
fn wait_sending(src: &Worker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = src.call(MigrateStatus {});
        if v.phase == MigrationPhase::Precopy && v.bytes_sent > 1 << 20 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "migration never got going: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the source's migration to end; returns its status.
fn wait_migration_end(src: &Worker, timeout: Duration) -> MigrationStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let v = src.call(MigrateStatus {});
        if v.phase.is_final() {
            return v;
        }
        assert!(Instant::now() < deadline, "migration did not end: {v:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn output_of(mut child: Spawned) -> (Option<i32>, String, String) {
    let out: Output = child.wait_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The source still runs its guest: the dirty workload makes progress.
fn assert_source_runs(src: &Worker) {
    assert_eq!(
        src.status().state,
        VmState::Running,
        "source VM must run on"
    );
    let g = src.generation();
    src.wait_generation(g + 1);
}

#[test]
fn killing_the_destination_leaves_the_source_running_and_a_retry_succeeds() {
    if !tern_test_support::kvm_available(
        "killing_the_destination_leaves_the_source_running_and_a_retry_succeeds",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), &[]);
    let (dst, ep) = destination(dir.path(), "dest", "tcp:127.0.0.1:0", None);
    // A slow link keeps the migration in precopy long enough to kill.
    let m = migrate_bg(&src, &ep, &["--bandwidth", "4M"]);
    wait_sending(&src);
    dst.kill();
    let (code, _, stderr) = output_of(m);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("keeps running on the source"), "{stderr}");
    let v = wait_migration_end(&src, Duration::from_secs(30));
    assert_eq!(v.phase, MigrationPhase::Failed, "{v:?}");
    assert_source_runs(&src);
    // A retry to a new destination succeeds; nothing was lost.
    let (dst2, ep2) = destination(dir.path(), "dest2", "tcp:127.0.0.1:0", None);
    let (code, stdout, stderr) = migrate(&src, &ep2, &[]);
    assert_eq!(code, Some(0), "retry: {stderr}\n{stdout}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    verify(&dst2);
}

#[test]
fn cancel_leaves_the_source_running_and_the_destination_takes_a_retry() {
    if !tern_test_support::kvm_available(
        "cancel_leaves_the_source_running_and_the_destination_takes_a_retry",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), &[]);
    let (dst, ep) = destination(dir.path(), "dest", "tcp:127.0.0.1:0", None);
    let m = migrate_bg(&src, &ep, &["--bandwidth", "4M", "--channels", "2"]);
    wait_sending(&src);
    let c = procs::output(
        tern()
            .args(["migrate", "--cancel", "--control"])
            .arg(src.sock()),
    )
    .unwrap();
    assert_eq!(
        c.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&c.stderr)
    );
    let (code, _, stderr) = output_of(m);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("cancelled"), "{stderr}");
    let v = wait_migration_end(&src, Duration::from_secs(30));
    assert_eq!(v.phase, MigrationPhase::Cancelled, "{v:?}");
    assert_source_runs(&src);
    // The destination dropped the attempt and waits again: retry there.
    dst.wait_line("incoming migration failed", Duration::from_secs(20));
    let (code, stdout, stderr) = migrate(&src, &ep, &[]);
    assert_eq!(code, Some(0), "retry: {stderr}\n{stdout}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    verify(&dst);
}

#[test]
fn the_timeout_cancels_or_forces_switchover_as_chosen() {
    if !tern_test_support::kvm_available("the_timeout_cancels_or_forces_switchover_as_chosen") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), &[]);
    let (dst, ep) = destination(dir.path(), "dest", "tcp:127.0.0.1:0", None);
    let slow = ["--bandwidth", "4M", "--timeout", "2", "--no-auto-converge"];
    let (code, stdout, stderr) = migrate(
        &src,
        &ep,
        &[&slow[..], &["--on-timeout", "cancel"]].concat(),
    );
    assert_ne!(code, Some(0), "{stdout}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert_source_runs(&src);
    dst.wait_line("incoming migration failed", Duration::from_secs(20));
    // With switchover, the same slow migration completes past its target.
    let fast_enough = ["--bandwidth", "40M", "--timeout", "1", "--no-auto-converge"];
    let (code, stdout, stderr) = migrate(
        &src,
        &ep,
        &[
            &fast_enough[..],
            &["--on-timeout", "switchover", "--downtime-ms", "1"],
        ]
        .concat(),
    );
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    verify(&dst);
}

#[test]
fn a_guest_dirtying_faster_than_the_link_converges_by_throttling() {
    if !tern_test_support::kvm_available(
        "a_guest_dirtying_faster_than_the_link_converges_by_throttling",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = tern_run();
    c.args(["--vcpus", "2", "--memory", "96M"]);
    c.args(["--guest", "probe:dirty,mib=64,rate=400+verify"]);
    let src = spawn("source", dir.path(), c);
    src.wait_generation(2);
    let mut c = tern_run();
    c.args(["--vcpus", "2", "--memory", "96M"]);
    c.args(["--guest", "probe:dirty,mib=64,rate=400+verify"]);
    let (dst, ep) = destination(dir.path(), "dest", "tcp:127.0.0.1:0", Some(c));
    // 400 MiB/s of dirtying against a 25 MiB/s link: even a guest the
    // host starves of CPU (a loaded CI machine) dirties faster than that.
    let (code, stdout, stderr) = migrate(
        &src,
        &ep,
        &[
            "--bandwidth",
            "25M",
            "--channels",
            "2",
            "--compression",
            "off",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    let max_throttle = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["throttle_percent"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(max_throttle > 0, "never throttled: {stdout}");
    let last = last_status(&stdout);
    eprintln!("auto-converge: max throttle {max_throttle}%, {last}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    verify(&dst);
}

#[test]
fn local_zero_copy_migration_of_a_4gib_vm() {
    if !tern_test_support::kvm_available("local_zero_copy_migration_of_a_4gib_vm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = run_args(2, "4G");
    c.arg("--memfd");
    let src = spawn("source", dir.path(), c);
    src.wait_generation(2);
    let listen = format!("unix:{}", dir.path().join("mig.sock").display());
    let (dst, ep) = destination(dir.path(), "dest", &listen, Some(run_args(2, "4G")));
    let (code, stdout, stderr) = migrate(&src, &ep, &[]);
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    let last = last_status(&stdout);
    assert_eq!(last["zero_copy"], true, "{last}");
    assert_eq!(last["bytes_sent"], 0, "nothing copied: {last}");
    // The downtime is a figure, not a pass/fail bound: speed is shown by
    // benchmarks, never by timed assertions (it ranged 10.7-46 ms here,
    // against the 50 ms goal).
    let downtime = last["downtime_ms"].as_f64().expect("downtime reported");
    println!(
        "{}",
        serde_json::json!({"figure": "zero_copy_4gib_downtime_ms", "value": downtime,
                           "elapsed_ms": last["elapsed_ms"]})
    );
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    dst.wait_line("memfd hand-over", Duration::from_secs(10));
    verify(&dst);
}

#[test]
fn a_preallocated_memfd_destination_keeps_its_memfd_for_the_next_hop() {
    if !tern_test_support::kvm_available(
        "a_preallocated_memfd_destination_keeps_its_memfd_for_the_next_hop",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), &[]);
    // TCP into a destination that preallocates memfd-backed memory ...
    let mut c = run_args(2, "96M");
    c.args(["--memfd", "--prealloc"]);
    let (mid, ep) = destination(dir.path(), "mid", "tcp:127.0.0.1:0", Some(c));
    mid.wait_line(
        "96 MiB of guest memory preallocated",
        Duration::from_secs(1),
    );
    let (code, stdout, stderr) = migrate(&src, &ep, &[]);
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    mid.wait_line("migration complete", Duration::from_secs(10));
    // ... whose VM then hands that memfd over on the same host: the
    // stream went into the memory the VM runs on, backed as it asked.
    let listen = format!("unix:{}", dir.path().join("hop.sock").display());
    let (dst, ep) = destination(dir.path(), "dest", &listen, None);
    let (code, stdout, stderr) = migrate(&mid, &ep, &[]);
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    let last = last_status(&stdout);
    assert_eq!(last["zero_copy"], true, "{last}");
    assert_eq!(mid.wait_exit(Duration::from_secs(20)), Some(0));
    dst.wait_line("memfd hand-over", Duration::from_secs(10));
    verify(&dst);
}

/// Two network namespaces joined by a veth limited to 1 Gbit/s; removed
/// on drop (declare it before the workers, so it goes after them).
struct NetPair {
    a: String,
    b: String,
    dev_a: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl NetPair {
    /// Creates the pair, or records a skip and returns None.
    fn new(test: &str, tag: &str) -> Option<NetPair> {
        tern_test_support::tool(test, "ip")?;
        tern_test_support::tool(test, "tc")?;
        let id = std::process::id() % 100000;
        let p = NetPair {
            a: format!("tmA{tag}{id}"),
            b: format!("tmB{tag}{id}"),
            dev_a: format!("ma{tag}{id}"),
        };
        let dev_b = format!("mb{tag}{id}");
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &p.a])?;
            ip(&["netns", "add", &p.b])?;
            ip(&[
                "link", "add", &p.dev_a, "type", "veth", "peer", "name", &dev_b,
            ])?;
            ip(&["link", "set", &p.dev_a, "netns", &p.a])?;
            ip(&["link", "set", &dev_b, "netns", &p.b])?;
            for (ns, dev, addr) in [
                (&p.a, &p.dev_a, "10.202.0.1/24"),
                (&p.b, &dev_b, "10.202.0.2/24"),
            ] {
                ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
                let tc = Command::new("tc")
                    .args(["-n", ns, "qdisc", "add", "dev", dev, "root", "tbf"])
                    .args(["rate", "1gbit", "burst", "1mb", "latency", "10ms"])
                    .output()
                    .map_err(|e| e.to_string())?;
                if !tc.status.success() {
                    return Err(format!("tc: {}", String::from_utf8_lossy(&tc.stderr)));
                }
            }
            Ok(())
        };
        match setup() {
            Ok(()) => Some(p),
            Err(e) => {
                drop(p);
                tern_test_support::skip(test, &format!("cannot set up network namespaces: {e}"));
                None
            }
        }
    }

    /// `tern run` of the test VM inside namespace `ns`.
    fn run_in(ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(tern_test_support::tern_exe());
        c.args([
            "run", "--vcpus", "2", "--memory", "96M", "--guest", WORKLOAD,
        ]);
        c
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

#[test]
fn over_a_1gbit_veth_between_namespaces() {
    let test = "over_a_1gbit_veth_between_namespaces";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let Some(net) = NetPair::new(test, "v") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = spawn("source", dir.path(), NetPair::run_in(&net.a));
    src.wait_generation(1);
    let (dst, ep) = destination(
        dir.path(),
        "dest",
        "tcp:10.202.0.2:0",
        Some(NetPair::run_in(&net.b)),
    );
    let (code, stdout, stderr) = migrate(&src, &ep, &[]);
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    eprintln!("1 Gbit veth: {}", last_status(&stdout));
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    verify(&dst);
    drop((src, dst));
    drop(net);
}

#[test]
fn cutting_the_veth_leaves_the_source_running() {
    let test = "cutting_the_veth_leaves_the_source_running";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let Some(net) = NetPair::new(test, "c") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = spawn("source", dir.path(), NetPair::run_in(&net.a));
    src.wait_generation(1);
    let (dst, ep) = destination(
        dir.path(),
        "dest",
        "tcp:10.202.0.2:0",
        Some(NetPair::run_in(&net.b)),
    );
    let m = migrate_bg(&src, &ep, &["--bandwidth", "4M"]);
    wait_sending(&src);
    ip(&["-n", &net.a, "link", "set", &net.dev_a, "down"]).unwrap();
    let (code, _, stderr) = output_of(m);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("keeps running on the source"), "{stderr}");
    assert_source_runs(&src);
    verify(&src);
    drop((src, dst));
    drop(net);
}

/// A guest writing to its disk for a few seconds, then writing and
/// reading back the first 8 MiB with the probe's sector pattern.
const DISK_WORKLOAD: &str = "probe:blk-iops,bs=4k,qd=4,secs=5,mix=randwrite+blk-verify,mib=8";

/// `tern run` of a 1-vCPU VM running [`DISK_WORKLOAD`] on `disk`.
fn disk_vm(disk: &str) -> Command {
    let mut c = tern_run();
    c.args(["--vcpus", "1", "--memory", "64M", "--guest", DISK_WORKLOAD]);
    c.args(["--disk", disk]);
    c
}

fn vhdx_image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    vhdx::create(&p, &vhdx::CreateOptions::dynamic(64 << 20))
        .unwrap()
        .close()
        .unwrap();
    p
}

/// The `result=` summary of probe step `name`, if it reported.
fn probe_result(stderr: &str, name: &str) -> Option<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("[probe] "))
        .find(|l| l.starts_with(name) && l.contains("result="))
        .map(str::to_string)
}

/// Waits for `w`'s guest to finish [`DISK_WORKLOAD`]: exit 0, both steps
/// passed, no failed request.
fn assert_disk_work_passed(w: &Worker) {
    let code = w.wait_exit(Duration::from_secs(120));
    let err = w.stderr();
    assert_eq!(code, Some(0), "{}: {err}", w.name());
    for step in ["blk-iops", "blk-verify"] {
        let r = probe_result(&err, step).unwrap_or_else(|| panic!("no {step} report: {err}"));
        assert!(r.contains("result=pass"), "{r}");
    }
    let iops = probe_result(&err, "blk-iops").unwrap_or_default();
    assert!(iops.contains("errors=0"), "{iops}");
}

/// Reads the image from the host and checks the guest's pattern in every
/// sector of its first 8 MiB.
fn assert_pattern(img: &Path) {
    let mut d = vhdx::Disk::open(img, false).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    d.read_at(&mut buf, 0).unwrap();
    for (s, sector) in buf.chunks(512).enumerate() {
        assert!(
            sector == tern_probe_abi::blk::sector_bytes(s as u64),
            "{}: sector {s} does not hold the guest's pattern",
            img.display()
        );
    }
}

#[test]
fn a_vm_migrates_during_disk_io_and_its_vhdx_is_handed_over() {
    let name = "a_vm_migrates_during_disk_io_and_its_vhdx_is_handed_over";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = vhdx_image(dir.path(), "shared.vhdx");
    let disk = format!("path={}", img.display());
    let src = spawn("source", dir.path(), disk_vm(&disk));
    // Both sides name the same file (shared storage): the destination can
    // only open it once the source has let go of its lock.
    let (dst, ep) = destination(dir.path(), "dest", "tcp:127.0.0.1:0", Some(disk_vm(&disk)));
    // Let the guest's writes get going: requests are in flight throughout.
    let t = Instant::now();
    while src.status().disks.first().map_or(0, |d| d.requests) < 200 {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", src.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, stdout, stderr) = migrate(&src, &ep, &[]);
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(
        probe_result(&src.stderr(), "blk-iops"),
        None,
        "the guest's disk writes were to be under way at the switchover"
    );
    assert_disk_work_passed(&dst);
    assert_pattern(&img);
}

#[test]
fn a_destination_that_cannot_open_the_disk_leaves_the_source_running_with_it() {
    let name = "a_destination_that_cannot_open_the_disk_leaves_the_source_running_with_it";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = vhdx_image(dir.path(), "mine.vhdx");
    let other = vhdx_image(dir.path(), "held.vhdx");
    let src = spawn(
        "source",
        dir.path(),
        disk_vm(&format!("path={}", img.display())),
    );
    // The destination is pointed at an image another worker holds: it
    // cannot open it after the memory and state have arrived.
    let mut hold = tern_run();
    hold.args(["--memory", "16M", "--guest", "probe:blk-capacity"]);
    hold.args(["--disk", &format!("path={}", other.display())]);
    let holder = spawn("holder", dir.path(), hold);
    // Its control socket answers once its disk is open (and locked).
    holder.status();
    let (_dst, ep) = destination(
        dir.path(),
        "dest",
        "tcp:127.0.0.1:0",
        Some(disk_vm(&format!("path={}", other.display()))),
    );
    let (code, _, stderr) = migrate(&src, &ep, &[]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("locked"), "{stderr}");
    assert!(stderr.contains("keeps running on the source"), "{stderr}");
    // The source took its own disk back and the guest's I/O goes on to
    // the end without an error.
    assert_disk_work_passed(&src);
    assert_pattern(&img);
}
