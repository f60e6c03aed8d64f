//! Live migration end to end: real workers, the probe guest dirtying
//! memory during the migration, then verifying every page stamp at the
//! destination.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const WORKLOAD: &str = "probe:dirty,mib=32,rate=64+verify";

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

/// A worker process with its stderr collected line by line.
struct Worker {
    child: Child,
    sock: PathBuf,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    name: &'static str,
}

impl Worker {
    fn spawn(name: &'static str, dir: &Path, mut cmd: Command) -> Worker {
        let sock = dir.join(format!("{name}.sock"));
        let mut child = cmd
            .arg("--control")
            .arg(&sock)
            .args(["--serial", "null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tern run");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let err = child.stderr.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                l.0.lock().unwrap().push(line);
                l.1.notify_all();
            }
        });
        Worker {
            child,
            sock,
            lines,
            name,
        }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.0.lock().unwrap();
        loop {
            if let Some(l) = g.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{}: no line with {needle:?}: {:#?}", self.name, *g));
            g = self.lines.1.wait_timeout(g, left).unwrap().0;
        }
    }

    fn stderr(&self) -> String {
        self.lines.0.lock().unwrap().join("\n")
    }

    fn request(&self, req: Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut s = loop {
            match UnixStream::connect(&self.sock) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{}: control socket: {e}",
                        self.name
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        writeln!(s, "{req}").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
    }

    fn generation(&self) -> u64 {
        self.request(json!({"cmd": "status"}))["probe"]["generation"]
            .as_u64()
            .unwrap_or(0)
    }

    fn wait_generation(&self, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.generation() < at_least {
            assert!(
                Instant::now() < deadline,
                "{}: no dirty progress",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the dirty step; the guest verifies every page and exits 0.
    fn verify(&mut self) {
        let g = self.generation();
        self.wait_generation(g + 1);
        assert_eq!(self.request(json!({"cmd": "probe-stop"}))["ok"], true);
        let code = self.wait_exit(Duration::from_secs(120));
        let err = self.stderr();
        assert_eq!(code, Some(0), "{}: verify did not pass: {err}", self.name);
        assert!(
            err.lines()
                .any(|l| l.contains("verify") && l.contains("bad=0") && l.contains("result=pass")),
            "{}: {err}",
            self.name
        );
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_args(vcpus: u32, memory: &str) -> Command {
    let mut c = tern();
    c.args(["run", "--vcpus", &vcpus.to_string(), "--memory", memory]);
    c.args(["--guest", WORKLOAD]);
    c
}

fn source(dir: &Path, extra: &[&str]) -> Worker {
    let mut c = run_args(2, "96M");
    c.args(extra);
    let w = Worker::spawn("source", dir, c);
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
    c.args(["--incoming", listen]);
    let w = Worker::spawn(name, dir, c);
    let line = w.wait_line("waiting for a migration on ", Duration::from_secs(20));
    let ep = line
        .split("waiting for a migration on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    (w, ep)
}

/// `tern migrate` to completion; returns (exit code, stdout, stderr).
fn migrate(src: &Worker, to: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = tern()
        .args(["migrate", "--json", "--control"])
        .arg(&src.sock)
        .args(["--to", to])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn last_status(stdout: &str) -> Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .last()
        .unwrap_or(Value::Null)
}

/// Migrates a dirtying guest over loopback and checks every page.
fn migrate_and_verify(test: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut src = source(dir.path(), &[]);
    let (mut dst, ep) = destination(dir.path(), "dest", "tcp:127.0.0.1:0", None);
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
    dst.verify();
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
    assert_eq!(s["compression"], "zstd");
    assert_eq!(s["channels"], 2);
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
    let mut src = source(dir.path(), &[]);
    let mut dst = dst;
    let (code, _, stderr) = migrate(&src, &ep, &["--channels", "1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    dst.verify();
}

#[test]
fn a_destination_of_another_configuration_is_refused() {
    if !tern_test_support::kvm_available("a_destination_of_another_configuration_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut src = source(dir.path(), &[]);
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
    src.verify();
}
