//! The serial console socket with a real worker: a client that connects and
//! never reads must not stall the guest, and a client that reads still gets
//! the guest's output.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_worker_proto::requests::{ProbeStop, Status};
use tern_worker_proto::Client;

/// Kills the worker when the test ends, by panic too.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The dirty workload's (generation, cursor).
fn progress(ctl: &Client) -> (u64, u64) {
    let probe = ctl
        .call(Status {})
        .expect("status")
        .probe
        .unwrap_or_default();
    (probe.generation, probe.cursor)
}

fn connect(sock: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "{}: {e}", sock.display()),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Waits until `buf` holds `needle`.
fn wait_for(buf: &Mutex<Vec<u8>>, needle: &str, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while !contains(&buf.lock().unwrap(), needle.as_bytes()) {
        assert!(
            Instant::now() < deadline,
            "{what}: '{needle}' not seen in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_console_client_that_never_reads_does_not_stall_the_guest() {
    let test = "a_console_client_that_never_reads_does_not_stall_the_guest";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ctl = dir.path().join("ctl.sock");
    let console = dir.path().join("console.sock");
    // `echo` first: the guest echoes every typed line on the console, so its
    // progress past `quit` into `dirty` depends on its output getting out.
    let _worker = Worker(
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["run", "--vcpus", "2", "--memory", "128M"])
            .args(["--guest", "probe:echo+dirty,mib=16,rate=64"])
            .arg("--serial")
            .arg(format!("socket:{}", console.display()))
            .arg("--control")
            .arg(&ctl)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ctl = Client::new(&ctl).with_timeout(Duration::from_secs(10));
    let mut stuck = connect(&console);
    let mut typist = connect(&console);
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let seen = seen.clone();
        let mut r = typist.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
    }
    // Both clients are registered once a line typed after they connected
    // comes back (the worker accepts them in order).
    typist.write_all(b"hello\r").unwrap();
    wait_for(&seen, "echo: hello", Duration::from_secs(10), "first echo");

    // Far more echo output than the stuck client's socket and backlog hold
    // (blocking sends stalled the guest after a few hundred bytes).
    let lines = 700;
    let line = format!("{}\r", "x".repeat(120));
    let started = Instant::now();
    typist
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    for i in 0..lines {
        typist
            .write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("guest stopped taking input at line {i}: {e}"));
    }
    typist.write_all(b"quit\r").unwrap();
    wait_for(
        &seen,
        "echo: quit",
        Duration::from_secs(60),
        "the guest's echo of the last line",
    );
    let typed = started.elapsed();
    let echoed = seen.lock().unwrap().len();
    eprintln!("{lines} lines echoed in {typed:?}; the reading client got {echoed} bytes");
    assert!(
        echoed > lines * 120,
        "reading client got only {echoed} bytes"
    );

    // The guest went on into `dirty`, and keeps moving.
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress(&ctl).0 < 2 {
        assert!(Instant::now() < deadline, "dirty workload made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = progress(&ctl);
    std::thread::sleep(Duration::from_millis(500));
    let after = progress(&ctl);
    assert!(after > before, "guest stalled: {before:?} then {after:?}");

    // The stuck client, once it reads, learns that it lost output.
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    stuck
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !contains(&got, b"[tern: console output dropped: ") {
        assert!(
            Instant::now() < deadline,
            "no drop marker in the {} bytes the stuck client got",
            got.len()
        );
        if let Ok(n) = stuck.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    eprintln!("the stuck client got {} bytes up to the marker", got.len());
    ctl.call(ProbeStop {}).expect("probe-stop");
}
