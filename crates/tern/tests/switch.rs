//! Virtual switches end to end: a real `ternd` and its workers (the probe
//! guest's `net` workload) run inside a network namespace of the test's
//! own, so the bridges, taps and nftables/tc rules the daemon makes never
//! touch the host's network. The namespace goes (with everything in it)
//! and the daemon's workers are killed when a test ends, by a panic too.
//!
//! Each test skips loudly without /dev/kvm, /dev/net/tun, `ip`, `nft`, `tc`
//! or `ping`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tern_test_support::netns::{self, ip, NetNs};
use tern_test_support::{skip, Ternd};

const HOST_IP: &str = "10.96.0.1";
const GUEST_IP: &str = "10.96.0.2";

/// A network namespace the calling thread has entered (`tsw-TAG-PID`);
/// deleted when dropped (the thread leaves it when the test ends).
fn enter_ns(tag: &str) -> NetNs {
    let ns = NetNs::new("tsw", tag);
    ns.enter();
    ns
}

fn can_run(test: &str) -> bool {
    if !tern_test_support::kvm_available(test) {
        return false;
    }
    if !Path::new("/dev/net/tun").exists() {
        skip(test, "/dev/net/tun missing (no tun module)");
        return false;
    }
    ["ip", "nft", "tc", "ping"]
        .iter()
        .all(|t| tern_test_support::tool(test, t).is_some())
}

/// Pings `to` `count` times from this thread's namespace; how many answered.
fn ping(to: &str, count: u32) -> u32 {
    netns::ping(to, count, 1).received
}

/// Waits for the guest at `to` to answer a ping (its stack is up).
fn wait_guest(to: &str) {
    let t0 = Instant::now();
    while ping(to, 1) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "the guest at {to} never answered"
        );
    }
}

/// Sends `len` pseudo-random bytes through the guest's echo and checks
/// what comes back by SHA-256; MB/s each way.
fn echo(to: &str, len: usize) -> f64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let want = Sha256::digest(&data);
    let mut s = TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(10))
        .expect("connect to the guest's echo");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        for c in data.chunks(64 << 10) {
            w.write_all(c).expect("send through the echo");
        }
    });
    let mut got = vec![0u8; len];
    let mut n = 0;
    while n < len {
        let k = s.read(&mut got[n..]).expect("read the echo");
        assert!(k > 0, "the echo closed after {n} of {len} bytes");
        n += k;
    }
    let secs = t0.elapsed().as_secs_f64();
    writer.join().expect("writer");
    assert_eq!(
        Sha256::digest(&got).as_slice(),
        want.as_slice(),
        "the echo differs"
    );
    len as f64 / secs / 1e6
}

fn guest(ip: &str) -> String {
    format!("probe:net,ip={ip}/24,port=7")
}

#[test]
fn the_host_pings_a_guest_through_an_internal_switch_that_survives_a_restart() {
    let test = "the_host_pings_a_guest_through_an_internal_switch_that_survives_a_restart";
    if !can_run(test) {
        return;
    }
    let _ns = enter_ns("internal");
    let dir = tempfile::tempdir().unwrap();
    let mut d = Ternd::start(dir.path());
    let sw = d.json(&[
        "switch",
        "create",
        "lab",
        "--type",
        "internal",
        "--address",
        &format!("{HOST_IP}/24"),
    ]);
    let bridge = sw["bridge"].as_str().unwrap().to_string();
    // A NIC on a switch that does not exist is refused at create time,
    // and the VM is not left behind.
    d.fails(
        &[
            "vm",
            "create",
            "g0",
            "--memory",
            "64M",
            "--guest",
            &guest(GUEST_IP),
            "--nic",
            "switch=nope",
        ],
        2,
        "no switch named 'nope'",
    );
    d.fails(&["vm", "show", "g0"], 2, "no VM named 'g0'");
    d.json(&[
        "vm",
        "create",
        "g1",
        "--memory",
        "64M",
        "--guest",
        &guest(GUEST_IP),
        "--nic",
        "switch=lab,mac=52:54:00:96:00:02,mac-guard,dhcp-guard,router-guard",
    ]);
    let shown = d.state("g1");
    assert_eq!(shown["nics"][0]["switch"], "lab", "{shown}");
    assert_eq!(shown["nics"][0]["mac"], "52:54:00:96:00:02", "{shown}");
    assert_eq!(d.json(&["switch", "show", "lab"])["nics"][0], "g1/0");
    d.json(&["vm", "start", "g1"]);
    wait_guest(GUEST_IP);
    assert_eq!(ping(GUEST_IP, 10), 10, "every ping answered");
    // Sized for a debug build's tap path (~10 MB/s each way): about 3 s.
    const LEN: usize = 32 << 20;
    let mbs = echo(&format!("{GUEST_IP}:7"), LEN);
    eprintln!("switch: internal switch, 32 MiB TCP echo at {mbs:.1} MB/s each way, checksummed");
    // Refused while the NIC is on it.
    d.fails(&["switch", "delete", "lab"], 3, "has 1 NIC");
    // The bridge vanishes while the daemon is down; a restart makes it
    // again, and the VM's port comes back at its next start.
    d.json(&["vm", "stop", "g1"]);
    d.kill();
    ip(&["link", "del", &bridge]);
    d.restart();
    let sw = d.json(&["switch", "show", "lab"]);
    assert_eq!(sw["bridge"], bridge.as_str());
    let out = Command::new("ip")
        .args(["link", "show", &bridge])
        .output()
        .unwrap();
    assert!(out.status.success(), "bridge {bridge} made again");
    d.json(&["vm", "start", "g1"]);
    wait_guest(GUEST_IP);
    assert_eq!(ping(GUEST_IP, 5), 5, "pings after the restart");
    d.json(&["vm", "stop", "g1"]);
}

#[test]
fn an_external_switch_records_its_uplink_going_down_and_up() {
    let test = "an_external_switch_records_its_uplink_going_down_and_up";
    if !can_run(test) {
        return;
    }
    let _ns = enter_ns("external");
    ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    ip(&["link", "set", "up1", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let d = Ternd::start(dir.path());
    d.fails(
        &["switch", "create", "wan", "--type", "external"],
        65,
        "needs an uplink",
    );
    d.fails(
        &[
            "switch", "create", "wan", "--type", "external", "--uplink", "nope0",
        ],
        65,
        "'nope0' does not exist",
    );
    let sw = d.json(&[
        "switch", "create", "wan", "--type", "external", "--uplink", "up0",
    ]);
    assert_eq!(sw["uplink"], "up0");
    let events = |kind: &str| {
        // One JSON event per line.
        let out = d.tern(&["vm", "events", "--json"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["kind"] == kind)
            .count()
    };
    // The monitor counts a carrier state once it has held for 300 ms
    // (tern_net::monitor::SETTLE); the flaps of the uplink's own enslaving
    // settle first, and are no network going down.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        events("network-down"),
        0,
        "creating the switch recorded its uplink's enslaving as network-down"
    );
    ip(&["link", "set", "up1", "down"]);
    tern_test_support::poll(Duration::from_secs(10), "network-down", || {
        (events("network-down") == 1).then_some(())
    });
    assert_eq!(d.json(&["switch", "show", "wan"])["link_up"], false);
    ip(&["link", "set", "up1", "up"]);
    tern_test_support::poll(Duration::from_secs(10), "network-up", || {
        (events("network-up") >= 1).then_some(())
    });
    let out = d.tern(&["switch", "delete", "wan"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("ip")
        .args(["-j", "link", "show", "up0"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v[0].get("master").is_none(), "the uplink is released: {v}");
}
