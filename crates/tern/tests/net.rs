//! NICs end to end: `tern run --nic tap=...` with the probe guest's
//! virtio-net driver and smoltcp stack, a real tap in a network namespace
//! standing in for the host, the host's own `ping`, and a TCP echo checked
//! by SHA-256; the same traffic over a veth pair between two namespaces is
//! measured in the same run as the host's own limit. The namespace (and the tap in it) and the
//! workers are removed when a test ends, by a panic too.
//!
//! Each test skips loudly without /dev/kvm, /dev/net/tun, `ip` or `ping`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tern_test_support::netns::{ip, NetNs};
use tern_test_support::proto::requests::Save;
use tern_test_support::proto::VmState;
use tern_test_support::{skip, Worker};

const HOST_IP: &str = "10.99.0.1";
const GUEST_IP: &str = "10.99.0.2";
const PORT: u16 = 7;
const TAP: &str = "tn0";

/// A network namespace (`tern-TAG-PID`) with a persistent vnet_hdr tap
/// `tn0` at [`HOST_IP`]/24; deleted (with the tap) when dropped.
fn tap_ns(tag: &str) -> NetNs {
    let ns = NetNs::new("tern", tag);
    let n = ns.name();
    ip(&[
        "-n", n, "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr",
    ]);
    ip(&["-n", n, "addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ip(&["-n", n, "link", "set", TAP, "up"]);
    ns
}

/// A TCP connection made from inside `ns` (the socket stays in it
/// wherever it is used).
fn connect_in(ns: &NetNs, to: SocketAddr) -> TcpStream {
    ns.inside(move || TcpStream::connect_timeout(&to, Duration::from_secs(10)).expect("connect"))
}

/// Pings the guest `count` times from `ns`; (received, average RTT in ms).
fn ping_guest(ns: &NetNs, count: u32) -> (u32, f64) {
    let p = ns.ping(GUEST_IP, count, 2);
    (p.received, p.avg_ms)
}

/// Whether this host can run the tests; records a skip otherwise.
fn can_run(test: &str) -> bool {
    if !tern_test_support::kvm_available(test) {
        return false;
    }
    if !Path::new("/dev/net/tun").exists() {
        skip(test, "/dev/net/tun missing (no tun module)");
        return false;
    }
    tern_test_support::tool(test, "ip").is_some() && tern_test_support::tool(test, "ping").is_some()
}

/// A worker in `ns` running the `net` workload on the namespace's tap.
fn start(ns: &NetNs, dir: &Path, extra: &[&str]) -> Worker {
    let mut cmd = ns.command(tern_test_support::tern_exe());
    cmd.arg("run")
        .args(["--memory", "64M", "--serial", "null"])
        .args(extra)
        .env("TERN_PROBE_IMAGE", tern_test_support::probe_guest());
    Worker::start("worker", cmd, &dir.join("ctl.sock"))
}

fn boot(ns: &NetNs, dir: &Path) -> Worker {
    let w = start(
        ns,
        dir,
        &[
            "--guest",
            &format!("probe:net,ip={GUEST_IP}/24,port={PORT}"),
            "--nic",
            &format!("tap={TAP},mac=52:54:00:99:00:02"),
        ],
    );
    w.wait_line("net up", Duration::from_secs(30));
    w
}

/// The test stream: `len` bytes of a fixed pseudo-random pattern, and
/// its SHA-256.
struct Stream {
    data: std::sync::Arc<Vec<u8>>,
    sha256: Vec<u8>,
}

impl Stream {
    fn new(len: usize) -> Stream {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let sha256 = Sha256::digest(&data).to_vec();
        Stream {
            data: data.into(),
            sha256,
        }
    }
}

fn echo(ns: &NetNs, stream: &Stream) -> f64 {
    echo_to(ns, format!("{GUEST_IP}:{PORT}").parse().unwrap(), stream)
}

/// Sends the stream through the echo at `addr` while reading it back,
/// then checks what came back by SHA-256 (and names the first differing
/// byte); the throughput in MB/s each way, timing only the transfer.
fn echo_to(ns: &NetNs, addr: SocketAddr, stream: &Stream) -> f64 {
    let total = stream.data.len();
    let mut s = connect_in(ns, addr);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let data = stream.data.clone();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        for chunk in data.chunks(64 << 10) {
            w.write_all(chunk).expect("send through the echo");
        }
    });
    let mut got = vec![0u8; total];
    let mut n = 0;
    while n < total {
        let k = s.read(&mut got[n..]).expect("read the echo");
        assert!(k > 0, "the echo closed after {n} of {total} bytes");
        n += k;
    }
    let secs = t0.elapsed().as_secs_f64();
    writer.join().expect("writer");
    if Sha256::digest(&got).as_slice() != stream.sha256.as_slice() {
        let at = got.iter().zip(stream.data.iter()).position(|(a, b)| a != b);
        panic!("the echo differs from what was sent (first at byte {at:?})");
    }
    total as f64 / secs / 1e6
}

/// The same traffic between two namespaces over a veth pair (the host's
/// own path, the limit on this machine): (ping average ms, echo MB/s).
fn veth_baseline(stream: &Stream) -> (f64, f64) {
    let a = NetNs::new("tern", "veth-a");
    let b = NetNs::new("tern", "veth-b");
    ip(&[
        "link",
        "add",
        "tva",
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        "tvb",
        "netns",
        b.name(),
    ]);
    ip(&["-n", a.name(), "addr", "add", "10.98.0.1/24", "dev", "tva"]);
    ip(&["-n", b.name(), "addr", "add", "10.98.0.2/24", "dev", "tvb"]);
    ip(&["-n", a.name(), "link", "set", "tva", "up"]);
    ip(&["-n", b.name(), "link", "set", "tvb", "up"]);
    let listener = b.inside(|| std::net::TcpListener::bind("10.98.0.2:7").expect("bind in b"));
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let veth = a.ping("10.98.0.2", 10, 2);
    let (received, rtt) = (veth.received, veth.avg_ms);
    assert_eq!(received, 10, "veth pings");
    let mbs = echo_to(&a, "10.98.0.2:7".parse().unwrap(), stream);
    server.join().expect("echo server");
    (rtt, mbs)
}

#[test]
fn the_host_pings_the_guest_and_a_tcp_echo_returns_every_byte() {
    let test = "the_host_pings_the_guest_and_a_tcp_echo_returns_every_byte";
    if !can_run(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = tap_ns("ping");
    let w = boot(&ns, dir.path());
    let (received, rtt) = ping_guest(&ns, 10);
    assert_eq!(received, 10, "every ping answered");
    let stream = Stream::new(16 << 20);
    let mbs = echo(&ns, &stream);
    let (veth_rtt, veth_mbs) = veth_baseline(&stream);
    eprintln!(
        "net: guest ping 10/10 avg {rtt:.3} ms, 16 MiB TCP echo {mbs:.1} MB/s each way; \
         veth between namespaces: ping {veth_rtt:.3} ms, echo {veth_mbs:.1} MB/s"
    );
    w.probe_stop();
    let line = w.wait_line("net rx_frames=", Duration::from_secs(20));
    assert!(line.contains("result=pass"), "{line}");
    assert!(line.contains("connections=1"), "{line}");
    let echoed: u64 = line
        .split_whitespace()
        .find_map(|t| t.strip_prefix("echoed="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(echoed, 16 << 20, "{line}");
    let (code, stderr) = w.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_restored_guest_answers_ping_again() {
    let test = "a_restored_guest_answers_ping_again";
    if !can_run(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = tap_ns("restore");
    let w = boot(&ns, dir.path());
    assert_eq!(ping_guest(&ns, 3).0, 3);
    let saved = dir.path().join("saved");
    let r = w.call(Save { dir: saved.clone() });
    assert_eq!(r.state, VmState::Saved);
    let (code, stderr) = w.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{stderr}");
    let dir2 = tempfile::tempdir().unwrap();
    let w = start(&ns, dir2.path(), &["--restore", saved.to_str().unwrap()]);
    // The guest's stack goes on where it was: it answers again at once.
    let t0 = Instant::now();
    let (received, rtt) = ping_guest(&ns, 5);
    eprintln!(
        "net: after restore {received}/5 pings answered, avg {rtt:.3} ms, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(received, 5, "pings after the restore");
    let mbs = echo(&ns, &Stream::new(1 << 20));
    eprintln!("net: 1 MiB TCP echo after restore at {mbs:.1} MB/s");
    w.probe_stop();
    let line = w.wait_line("net rx_frames=", Duration::from_secs(20));
    assert!(line.contains("result=pass"), "{line}");
}

#[test]
fn bad_nic_specs_and_tap_names_are_clear_errors() {
    let test = "bad_nic_specs_and_tap_names_are_clear_errors";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let mut cmd = tern_test_support::tern_run();
    cmd.args([
        "--memory",
        "64M",
        "--serial",
        "null",
        "--guest",
        "probe:net",
    ])
    .args(["--nic", "tap=bad/name"])
    .env("TERN_PROBE_IMAGE", tern_test_support::probe_guest());
    let (code, stderr) = Worker::spawn("worker", cmd).finish(Duration::from_secs(30));
    assert_ne!(code, 0);
    assert!(stderr.contains("bad tap name 'bad/name'"), "{stderr}");
    let mut cmd = tern_test_support::tern_run();
    cmd.args(["--guest", "probe:net", "--nic", "tap=x,mac=nope"]);
    let (code, stderr) = Worker::spawn("worker", cmd).finish(Duration::from_secs(30));
    assert_ne!(code, 0);
    assert!(stderr.contains("'nope' is not a MAC address"), "{stderr}");
}
