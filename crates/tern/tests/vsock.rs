//! vsock end to end: `tern run --vsock cid=3,socket=...` with the probe
//! guest's virtio-vsock driver echoing on every connection. Host programs
//! here are plain UNIX-socket clients speaking the Firecracker protocol
//! (`CONNECT <port>\n`, `OK <hostport>\n`); the guest's connections out
//! land on listeners at `<socket>_<port>`. Each stream is checked by
//! SHA-256. Workers are stopped when a test ends, by a panic too.
//!
//! Each test skips loudly without /dev/kvm.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tern_test_support::proto::requests::Save;
use tern_test_support::proto::VmState;
use tern_test_support::Worker;

const CID: u64 = 3;
const PORT: u32 = 1234;
/// The host port the guest connects to.
const HOST_PORT: u32 = 5000;

fn socket(dir: &Path) -> PathBuf {
    dir.join("v.sock")
}

/// `<socket>_<port>`.
fn port_socket(dir: &Path, port: u32) -> PathBuf {
    dir.join(format!("v.sock_{port}"))
}

fn start(dir: &Path, args: &[&str]) -> Worker {
    let mut cmd = tern_test_support::tern_run();
    cmd.args(["--memory", "64M", "--serial", "null"])
        .args(args)
        .env("TERN_PROBE_IMAGE", tern_test_support::probe_guest());
    Worker::start("worker", cmd, &dir.join("ctl.sock"))
}

/// A worker whose guest runs `vsock,port=PORT` plus `extra` parameters.
fn boot(dir: &Path, extra: &str) -> Worker {
    let vsock = format!("cid={CID},socket={}", socket(dir).display());
    let guest = format!("probe:vsock,port={PORT}{extra}");
    let w = start(dir, &["--vsock", &vsock, "--guest", &guest]);
    w.wait_line("vsock up", Duration::from_secs(30));
    w
}

/// Connects to guest port `port` through the VM's socket: `Ok(stream)`
/// after `OK <hostport>`, `Err` with what came instead.
fn connect(dir: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(socket(dir)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&line))),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&line).to_string();
    let hp: u32 = line
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("answer {line:?}"))?;
    assert!(hp >= 1 << 30, "host-side port {hp}");
    Ok(s)
}

/// Stream `seed`: `len` pseudo-random bytes, made 8 at a time.
fn fill(seed: u64, buf: &mut [u8], state: &mut u64) {
    if *state == 0 {
        *state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    }
    for c in buf.chunks_mut(8) {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
}

/// Sends `len` bytes of stream `seed` through `s` while reading the echo;
/// returns (SHA-256 sent, SHA-256 received, bytes received).
fn echo(s: UnixStream, seed: u64, len: u64) -> (Vec<u8>, Vec<u8>, u64) {
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let (mut state, mut left) = (0u64, len);
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            fill(seed, &mut buf[..n], &mut state);
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).expect("send through the echo");
            left -= n as u64;
        }
        h.finalize().to_vec()
    });
    let mut r = s;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0u64;
    while got < len {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the echo after {got} of {len} bytes: {e}"),
        }
    }
    let sent = writer.join().expect("writer");
    (sent, h.finalize().to_vec(), got)
}

fn report_value(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// Bytes each of the 64 connections moves: 4 MiB (256 MiB in total) by
/// default. The issue asks for 1 GiB (`TERN_VSOCK_TEST_MIB=16`); measured
/// with the debug build on the loaded 2-core CI machine that took 194 s
/// (5.5 MB/s each way), too long for the default run.
fn per_connection() -> u64 {
    std::env::var("TERN_VSOCK_TEST_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(4)
        << 20
}

#[test]
fn sixty_four_connections_echo_checksummed() {
    let test = "sixty_four_connections_echo_checksummed";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let w = boot(dir.path(), "");
    let each = per_connection();
    let conns: Vec<UnixStream> = (0..64)
        .map(|i| connect(dir.path(), PORT).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let t0 = Instant::now();
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, s)| std::thread::spawn(move || echo(s, i as u64 + 1, each)))
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let (sent, got, n) = t.join().expect("connection thread");
        assert_eq!(n, each, "connection {i}: bytes echoed");
        assert_eq!(sent, got, "connection {i}: SHA-256 of the echo");
    }
    let secs = t0.elapsed().as_secs_f64();
    let total = 64 * each;
    eprintln!(
        "vsock: 64 connections echoed {} MiB in total in {secs:.1} s: {:.1} MB/s each way",
        total >> 20,
        total as f64 / secs / 1e6
    );
    w.probe_stop();
    let line = w.wait_line("vsock accepted=", Duration::from_secs(30));
    assert!(line.contains("result=pass"), "{line}");
    assert_eq!(report_value(&line, "accepted"), 64, "{line}");
    assert_eq!(report_value(&line, "echoed"), total, "{line}");
    assert_eq!(report_value(&line, "bad"), 0, "{line}");
    let (code, stderr) = w.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn guest_connects_to_the_host_port_socket_and_unknown_ports_are_refused() {
    let test = "guest_connects_to_the_host_port_socket_and_unknown_ports_are_refused";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(port_socket(dir.path(), HOST_PORT)).unwrap();
    let w = boot(dir.path(), &format!(",connect={HOST_PORT}"));
    // The guest's connection lands here; it echoes what the host sends.
    let (s, _) = listener.accept().expect("the guest's connection");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    w.wait_line(
        &format!("vsock connected port={HOST_PORT}"),
        Duration::from_secs(10),
    );
    let (sent, got, n) = echo(s, 99, 4 << 20);
    assert_eq!(n, 4 << 20);
    assert_eq!(sent, got, "SHA-256 of the echo over the guest's connection");
    // Nobody listens on guest port 999: the stream closes, no OK.
    let e = connect(dir.path(), 999).unwrap_err();
    assert!(e.starts_with("closed after \"\""), "{e}");
    // The guest port still works after the refusal.
    let (sent, got, _) = echo(connect(dir.path(), PORT).unwrap(), 5, 1 << 20);
    assert_eq!(sent, got);
    w.probe_stop();
    let line = w.wait_line("vsock accepted=", Duration::from_secs(30));
    assert!(line.contains("result=pass"), "{line}");
    assert_eq!(report_value(&line, "connected"), 1, "{line}");
    assert_eq!(report_value(&line, "refused"), 1, "{line}");
    let (code, stderr) = w.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_guest_connection_to_a_port_nobody_listens_on_is_refused() {
    let test = "a_guest_connection_to_a_port_nobody_listens_on_is_refused";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let w = boot(dir.path(), ",connect=6000");
    w.wait_line("vsock connect refused port=6000", Duration::from_secs(10));
    w.probe_stop();
    let line = w.wait_line("vsock accepted=", Duration::from_secs(30));
    assert_eq!(report_value(&line, "connected"), 0, "{line}");
    assert_eq!(report_value(&line, "refused"), 1, "{line}");
    let (code, stderr) = w.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_slow_reader_does_not_hold_up_the_others() {
    let test = "a_slow_reader_does_not_hold_up_the_others";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let w = boot(dir.path(), "");
    // The slow one: the host sends 4 MiB and reads nothing back yet.
    let slow = connect(dir.path(), PORT).unwrap();
    let slow_len: u64 = 4 << 20;
    let mut sw = slow.try_clone().unwrap();
    sw.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let slow_writer = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let (mut state, mut left) = (0u64, slow_len);
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            fill(77, &mut buf[..n], &mut state);
            h.update(&buf[..n]);
            sw.write_all(&buf[..n]).expect("slow writer");
            left -= n as u64;
        }
        h.finalize().to_vec()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !slow_writer.is_finished(),
        "4 MiB went in although nobody read the echo: flow control did not stall it"
    );
    // Four others each echo 8 MiB meanwhile.
    let t0 = Instant::now();
    let others: Vec<_> = (0..4)
        .map(|i| {
            let s = connect(dir.path(), PORT).unwrap();
            std::thread::spawn(move || echo(s, 100 + i, 8 << 20))
        })
        .collect();
    for (i, t) in others.into_iter().enumerate() {
        let (sent, got, n) = t.join().unwrap();
        assert_eq!((n, &sent), (8 << 20, &got), "connection {i}");
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "vsock: 4 x 8 MiB echoed in {secs:.1} s ({:.1} MB/s) while one reader stalled",
        (32 << 20) as f64 / secs / 1e6
    );
    assert!(!slow_writer.is_finished(), "the slow one is still held");
    // Now the slow reader reads: its whole stream comes back intact.
    let mut r = slow;
    r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0u64;
    while got < slow_len {
        let n = r.read(&mut buf).expect("the slow reader's echo");
        assert!(n > 0, "closed after {got}");
        h.update(&buf[..n]);
        got += n as u64;
    }
    let sent = slow_writer.join().unwrap();
    assert_eq!(sent, h.finalize().to_vec(), "the slow connection's echo");
    w.probe_stop();
    let line = w.wait_line("vsock accepted=", Duration::from_secs(30));
    assert_eq!(report_value(&line, "bad"), 0, "{line}");
    let (code, stderr) = w.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn after_restore_the_guest_sees_a_transport_reset_and_new_connections_work() {
    let test = "after_restore_the_guest_sees_a_transport_reset_and_new_connections_work";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(port_socket(dir.path(), HOST_PORT)).unwrap();
    listener.set_nonblocking(false).unwrap();
    let w = boot(dir.path(), &format!(",connect={HOST_PORT}"));
    let (out1, _) = listener.accept().expect("the guest's first connection");
    let (sent, got, _) = echo(connect(dir.path(), PORT).unwrap(), 1, 1 << 20);
    assert_eq!(sent, got);
    let held = connect(dir.path(), PORT).unwrap();
    let saved = dir.path().join("saved");
    let r = w.call(Save { dir: saved.clone() });
    assert_eq!(r.state, VmState::Saved);
    let (code, stderr) = w.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{stderr}");
    // The saved worker's connections ended with it.
    for (what, mut s) in [("host", held), ("guest", out1)] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).unwrap_or(0),
            0,
            "{what} connection after save"
        );
    }
    let dir2 = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let w = start(dir2.path(), &["--restore", saved.to_str().unwrap()]);
    let line = w.wait_line("vsock reset", Duration::from_secs(30));
    assert!(line.contains(&format!("cid={CID}")), "{line}");
    // The guest connects out again, as an agent would, and both ways work.
    let (out2, _) = listener
        .accept()
        .expect("the guest's connection after restore");
    out2.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    eprintln!(
        "vsock: the guest reconnected {:.1} s after the restore began",
        t0.elapsed().as_secs_f64()
    );
    let (sent, got, _) = echo(out2, 2, 1 << 20);
    assert_eq!(sent, got, "the guest's new connection");
    let (sent, got, _) = echo(connect(dir.path(), PORT).unwrap(), 3, 1 << 20);
    assert_eq!(sent, got, "a new host connection");
    w.probe_stop();
    let line = w.wait_line("vsock accepted=", Duration::from_secs(30));
    assert!(line.contains("result=pass"), "{line}");
    assert_eq!(report_value(&line, "resets"), 1, "{line}");
    let (code, stderr) = w.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn bad_vsock_specs_are_clear_errors() {
    let test = "bad_vsock_specs_are_clear_errors";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    for (spec, needle) in [
        ("cid=2,socket=/tmp/x".to_string(), "is not a guest CID"),
        ("cid=3".to_string(), "no socket=PATH"),
        (
            format!("cid=3,socket={}", file.display()),
            "is not a socket",
        ),
    ] {
        let mut cmd = tern_test_support::tern_run();
        cmd.args([
            "--memory",
            "64M",
            "--serial",
            "null",
            "--guest",
            "probe:vsock",
        ])
        .args(["--vsock", &spec])
        .env("TERN_PROBE_IMAGE", tern_test_support::probe_guest());
        let (code, stderr) = Worker::spawn("worker", cmd).finish(Duration::from_secs(30));
        assert_ne!(code, 0, "{spec}");
        assert!(stderr.contains(needle), "{spec}: {stderr}");
    }
}
