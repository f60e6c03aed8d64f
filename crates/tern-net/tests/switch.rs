//! Switches on real bridges: each test makes a network namespace for the
//! switch (the bridge, its ports and their nftables and tc rules live
//! there, so nothing touches the host's own network) and one namespace per
//! endpoint, joined to the switch by veth pairs. The endpoints stand in for
//! VMs: they ping, send UDP, TCP and raw ICMPv6 through the switch. Every
//! namespace is deleted when its test ends, by a panic too.
//!
//! Each test skips loudly without `ip`, `nft`, `tc` or CAP_NET_ADMIN.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use tern_net::bridge::{BridgeError, Netlink};
use tern_net::monitor;
use tern_net::policy::{self, Guards};
use tern_net::shaping::{self, PortShaping};
use tern_net::Mac;
use tern_test_support::netns::{ip, NetNs as Ns};
use tern_test_support::skip;

const A_IP: &str = "10.97.0.1";
const C_IP: &str = "10.97.0.2";
const A_MAC: Mac = Mac([0x02, 0, 0, 0x97, 0, 0x0a]);

/// Runs the async `f` on a runtime inside `ns`.
fn run_in<T: Send, F: std::future::Future<Output = T>>(ns: &Ns, f: impl FnOnce() -> F + Send) -> T {
    ns.inside(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

/// Pings `to` `count` times from `ns`; how many answered.
fn pings(ns: &Ns, to: &str, count: u32) -> u32 {
    ns.ping(to, count, 1).received
}

/// Whether this host can run the tests; records a skip otherwise.
fn can_run(test: &str) -> bool {
    for t in ["ip", "nft", "tc", "ping"] {
        if tern_test_support::tool(test, t).is_none() {
            return false;
        }
    }
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("tsw-p{n}-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(test, "cannot make network namespaces (needs CAP_SYS_ADMIN)");
        return false;
    }
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    true
}

/// A switch namespace with bridge `br0` and endpoints A (`a1`, port `a0`)
/// and C (`c1`, port `c0`) on one subnet.
struct Lab {
    sw: Ns,
    a: Ns,
    c: Ns,
}

/// Joins `ep` to the switch: veth `port` in the switch, `dev` in `ep` with
/// `addr`/24.
fn plug(sw: &Ns, ep: &Ns, port: &str, dev: &str, addr: Option<&str>) {
    ip(&[
        "-n",
        sw.name(),
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        dev,
        "netns",
        ep.name(),
    ]);
    if let Some(addr) = addr {
        ip(&[
            "-n",
            ep.name(),
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            dev,
        ]);
    }
    ip(&["-n", ep.name(), "link", "set", dev, "up"]);
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let lab = Lab {
            sw: Ns::new("tsw", &format!("{tag}-sw")),
            a: Ns::new("tsw", &format!("{tag}-a")),
            c: Ns::new("tsw", &format!("{tag}-c")),
        };
        plug(&lab.sw, &lab.a, "a0", "a1", Some(A_IP));
        ip(&[
            "-n",
            lab.a.name(),
            "link",
            "set",
            "a1",
            "address",
            &A_MAC.to_string(),
        ]);
        plug(&lab.sw, &lab.c, "c0", "c1", Some(C_IP));
        run_in(&lab.sw, || async {
            let nl = Netlink::new().unwrap();
            nl.ensure_bridge("br0").await.unwrap();
            nl.enslave("a0", "br0").await.unwrap();
            nl.enslave("c0", "br0").await.unwrap();
            let ports: Vec<String> = nl
                .ports("br0")
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.name)
                .collect();
            assert_eq!(ports.len(), 2, "{ports:?}");
        });
        lab
    }

    fn guard(&self, port: &str, mac: Mac, g: Guards) {
        self.sw
            .inside(|| policy::apply(port, mac, g))
            .unwrap_or_else(|e| panic!("{}", tern_error_chain(&e)));
    }
}

fn tern_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn no_guards() -> Guards {
    Guards::default()
}

#[test]
fn a_bridge_joins_its_ports_and_deleting_it_cuts_them() {
    let test = "a_bridge_joins_its_ports_and_deleting_it_cuts_them";
    if !can_run(test) {
        return;
    }
    let lab = Lab::new("join");
    assert_eq!(pings(&lab.a, C_IP, 3), 3, "A reaches C through the bridge");
    run_in(&lab.sw, || async {
        let nl = Netlink::new().unwrap();
        // A second ensure is a no-op on an existing bridge.
        nl.ensure_bridge("br0").await.unwrap();
        nl.delete("br0").await.unwrap();
        assert!(nl.link("br0").await.unwrap().is_none());
        // Deleting what is gone is fine.
        nl.delete("br0").await.unwrap();
        assert!(matches!(
            nl.enslave("a0", "nope0").await,
            Err(BridgeError::NoSuchLink(n)) if n == "nope0"
        ));
    });
    assert_eq!(pings(&lab.a, C_IP, 2), 0, "no bridge, no path");
}

#[test]
fn the_mac_guard_drops_frames_with_a_foreign_source_mac() {
    let test = "the_mac_guard_drops_frames_with_a_foreign_source_mac";
    if !can_run(test) {
        return;
    }
    let lab = Lab::new("mac");
    let mac_only = Guards {
        mac: true,
        ..no_guards()
    };
    // The port's own MAC passes.
    lab.guard("a0", A_MAC, mac_only);
    assert_eq!(pings(&lab.a, C_IP, 3), 3, "A with its own MAC");
    // A spoofs: the port expects another MAC than it sends from.
    lab.guard("a0", Mac([0x02, 0, 0, 0x97, 0, 0x0b]), mac_only);
    assert_eq!(pings(&lab.a, C_IP, 3), 0, "A with a foreign source MAC");
    // Removing the guard lets it through again.
    lab.sw.inside(|| policy::remove("a0")).unwrap();
    assert_eq!(pings(&lab.a, C_IP, 3), 3, "A without the guard");
}

/// Sends `n` UDP datagrams from A's port 67 (a DHCP server) to C's port
/// 68; how many C received within a second.
fn dhcp_offers(lab: &Lab, n: usize) -> usize {
    let rx = lab
        .c
        .inside(|| UdpSocket::bind("0.0.0.0:68").expect("bind 68 in C"));
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tx = lab
        .a
        .inside(|| UdpSocket::bind(format!("{A_IP}:67")).expect("bind 67 in A"));
    for i in 0..n {
        // A DHCP OFFER's first bytes: op BOOTREPLY, htype Ethernet, hlen 6.
        tx.send_to(&[2, 1, 6, 0, i as u8], format!("{C_IP}:68"))
            .unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        if rx.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    got
}

#[test]
fn the_dhcp_guard_drops_dhcp_offers_from_the_port() {
    let test = "the_dhcp_guard_drops_dhcp_offers_from_the_port";
    if !can_run(test) {
        return;
    }
    let lab = Lab::new("dhcp");
    assert!(pings(&lab.a, C_IP, 3) >= 1, "ARP settled");
    assert_eq!(dhcp_offers(&lab, 5), 5, "offers pass without the guard");
    lab.guard(
        "a0",
        A_MAC,
        Guards {
            dhcp: true,
            ..no_guards()
        },
    );
    assert_eq!(dhcp_offers(&lab, 5), 0, "offers from a guarded port");
    assert_eq!(pings(&lab.a, C_IP, 2), 2, "other traffic still passes");
}

/// A minimal router advertisement (ICMPv6 type 134) sent three times to
/// all-nodes on `dev` from a raw socket, by Python (std Rust has no raw
/// sockets); the kernel fills the checksum.
const SEND_RA: &str = "
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
ra = bytes([134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0])
idx = socket.if_nametoindex(sys.argv[1])
for _ in range(3):
    s.sendto(ra, ('ff02::1', 0, 0, idx))
";

/// The lines tcpdump printed for frames matching `filter` on `dev` in
/// `ns` while `act` ran.
fn capture(ns: &Ns, dev: &str, filter: &str, act: impl FnOnce()) -> Vec<String> {
    let mut dump = ns.command("tcpdump");
    dump.args(["-n", "-l", "-i", dev, filter])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = dump.spawn().expect("run tcpdump");
    std::thread::sleep(Duration::from_millis(1500));
    act();
    std::thread::sleep(Duration::from_millis(800));
    let _ = child.kill();
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let _ = child.wait();
    text.lines().map(str::to_string).collect()
}

/// How many router advertisements C captured while A sent three.
fn router_adverts(lab: &Lab) -> usize {
    capture(&lab.c, "c1", "icmp6 and ip6[40] == 134", || {
        let out = lab
            .a
            .command("python3")
            .args(["-c", SEND_RA, "a1"])
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .iter()
    .filter(|l| l.contains("router advertisement"))
    .count()
}

#[test]
fn the_router_guard_drops_router_advertisements() {
    let test = "the_router_guard_drops_router_advertisements";
    if !can_run(test) || tern_test_support::tool(test, "tcpdump").is_none() {
        return;
    }
    if tern_test_support::tool(test, "python3").is_none() {
        return;
    }
    let lab = Lab::new("ra");
    // Link-local addresses finish duplicate detection first.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(router_adverts(&lab), 3, "adverts pass without the guard");
    lab.guard(
        "a0",
        A_MAC,
        Guards {
            router: true,
            ..no_guards()
        },
    );
    assert_eq!(router_adverts(&lab), 0, "adverts from a guarded port");
    assert_eq!(pings(&lab.a, C_IP, 2), 2, "other traffic still passes");
}

#[test]
fn a_mirror_port_sees_the_traffic_of_the_mirrored_port() {
    let test = "a_mirror_port_sees_the_traffic_of_the_mirrored_port";
    if !can_run(test) || tern_test_support::tool(test, "tcpdump").is_none() {
        return;
    }
    let lab = Lab::new("mirror");
    let m = Ns::new("tsw", "mirror-m");
    plug(&lab.sw, &m, "m0", "m1", None);
    run_in(&lab.sw, || async {
        Netlink::new().unwrap().enslave("m0", "br0").await.unwrap();
    });
    // Learned addresses: from now on the pings are unicast, which the
    // bridge does not flood to the monitor.
    assert_eq!(pings(&lab.a, C_IP, 3), 3);
    let echoes = || {
        capture(&m, "m1", "icmp", || assert_eq!(pings(&lab.a, C_IP, 10), 10))
            .iter()
            .filter(|l| l.contains("ICMP echo"))
            .count()
    };
    let unmirrored = echoes();
    lab.sw
        .inside(|| {
            shaping::apply(
                "a0",
                &PortShaping {
                    max_bw: None,
                    mirror_to: Some("m0".into()),
                },
            )
        })
        .unwrap();
    let mirrored = echoes();
    eprintln!(
        "mirror: monitor captured {unmirrored} echoes unmirrored, {mirrored} mirrored for 10 pings"
    );
    // Ten requests in and ten replies out of the port, each copied.
    assert_eq!(mirrored, 20, "the monitor's echoes");
    assert_eq!(unmirrored, 0, "the monitor saw echoes without the mirror");
}

#[test]
fn a_port_capped_at_10_mb_s_measures_within_10_percent() {
    let test = "a_port_capped_at_10_mb_s_measures_within_10_percent";
    if !can_run(test) {
        return;
    }
    let lab = Lab::new("cap");
    const CAP: u64 = 10_000_000;
    lab.sw
        .inside(|| {
            shaping::apply(
                "c0",
                &PortShaping {
                    max_bw: Some(CAP),
                    mirror_to: None,
                },
            )
        })
        .unwrap();
    let listener = lab
        .c
        .inside(|| TcpListener::bind(format!("{C_IP}:5001")).expect("bind in C"));
    let total: usize = 40 << 20;
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0;
        // Time the steady state: from the first 4 MiB on (the bucket and
        // slow start are behind by then).
        let mut t_start = None;
        while n < total {
            let k = s.read(&mut buf).expect("read");
            assert!(k > 0, "closed after {n}");
            n += k;
            if t_start.is_none() && n >= 4 << 20 {
                t_start = Some((Instant::now(), n));
            }
        }
        let (t0, n0) = t_start.unwrap();
        (n - n0) as f64 / t0.elapsed().as_secs_f64()
    });
    let mut s = lab.a.inside(|| {
        TcpStream::connect_timeout(
            &format!("{C_IP}:5001").parse().unwrap(),
            Duration::from_secs(5),
        )
        .expect("connect")
    });
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    let rate = server.join().unwrap();
    eprintln!(
        "cap: {:.2} MB/s through a port capped at {:.0} MB/s",
        rate / 1e6,
        CAP as f64 / 1e6
    );
    let err = (rate - CAP as f64).abs() / CAP as f64;
    assert!(err < 0.10, "measured {:.2} MB/s", rate / 1e6);
}

/// The next carrier state reported for `dev`.
async fn next_carrier(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<monitor::CarrierChange>,
    dev: &str,
) -> bool {
    loop {
        let c = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a carrier change in time")
            .expect("the monitor runs");
        if c.name == dev {
            return c.up;
        }
    }
}

#[test]
fn the_carrier_monitor_sees_an_uplink_go_down_and_up() {
    let test = "the_carrier_monitor_sees_an_uplink_go_down_and_up";
    if !can_run(test) {
        return;
    }
    let sw = Ns::new("tsw", "carrier");
    ip(&[
        "-n",
        sw.name(),
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "up1",
    ]);
    ip(&["-n", sw.name(), "link", "set", "up1", "up"]);
    let name = sw.name().to_string();
    run_in(&sw, || async move {
        let nl = Netlink::new().unwrap();
        nl.ensure_bridge("br0").await.unwrap();
        nl.enslave("up0", "br0").await.unwrap();
        // Carrier follows the peer; wait for it before watching.
        let t0 = Instant::now();
        while !nl.link("up0").await.unwrap().unwrap().carrier {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "up0 never got carrier"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut rx = monitor::watch([("up0".to_string(), true)].into()).unwrap();
        ip(&["-n", &name, "link", "set", "up1", "down"]);
        assert!(
            !next_carrier(&mut rx, "up0").await,
            "down when the peer goes down"
        );
        ip(&["-n", &name, "link", "set", "up1", "up"]);
        assert!(next_carrier(&mut rx, "up0").await, "up again");
    });
}

#[test]
fn vlan_ports_need_bridge_vlan_filtering() {
    let test = "vlan_ports_need_bridge_vlan_filtering";
    if !can_run(test) {
        return;
    }
    let sw = Ns::new("tsw", "vlan");
    let r = run_in(&sw, || async {
        let nl = Netlink::new().unwrap();
        nl.ensure_bridge("br0").await.unwrap();
        nl.enable_vlan_filtering("br0").await
    });
    match r {
        Ok(()) => {}
        Err(e @ BridgeError::NoVlanFiltering(_)) => {
            assert!(e.to_string().contains("lacks"), "{e}");
            skip(test, &e.to_string());
        }
        Err(e) => panic!("{}", tern_error_chain(&e)),
    }
}
