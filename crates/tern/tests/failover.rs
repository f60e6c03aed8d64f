//! Failover of clustered VMs: three real etcd members and three `ternd`
//! nodes on loopback sharing one directory as "shared storage" (TTL 3 s).
//! Two VMs of one anti-affinity class run on n0, each writing a pattern
//! over its disk; `kill -9` of n0's daemon and all its workers. The
//! survivors restart both from shared storage, one on each (anti-affinity),
//! each only after etcd deleted n0's lease; the data n0's guests wrote is on
//! the images; the new guests write and verify their disks again. Bad input
//! (a VM whose disk is not on shared storage, an unknown preferred owner)
//! is refused with nothing written to etcd.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_api::ClusterVm;
use tern_cluster::testing::EtcdCluster;
use tern_probe_abi::blk::{sector_bytes, SECTOR_SIZE};
use tern_test_support::{poll, procs, Ternd};

const TTL_S: u64 = 3;
/// The disk each VM writes, MiB.
const DISK_MIB: u64 = 4;

fn start_node(dir: &Path, endpoints: &str, name: &str, shared: &Path) -> Ternd {
    let ttl = TTL_S.to_string();
    let args = [
        "--cluster",
        endpoints,
        "--node",
        name,
        "--cluster-ttl",
        &ttl,
        "--shared-dir",
        shared.to_str().unwrap(),
    ];
    Ternd::start_with(&dir.join(name), &args)
}

fn cluster_vms(d: &Ternd) -> Vec<ClusterVm> {
    let out = d.tern(&["cluster", "vms", "--json"]);
    assert!(
        out.status.success(),
        "tern cluster vms: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tern cluster vms --json")
}

fn owner(d: &Ternd, vm: &str) -> Option<String> {
    cluster_vms(d)
        .into_iter()
        .find(|v| v.name == vm)
        .and_then(|v| v.owner)
}

/// Seconds since boot (CLOCK_BOOTTIME, the clock of /proc/PID/stat's start
/// times), in clock ticks of 10 ms.
fn uptime_ticks() -> u64 {
    let up = std::fs::read_to_string("/proc/uptime").unwrap();
    let secs: f64 = up.split_whitespace().next().unwrap().parse().unwrap();
    (secs * 100.0) as u64
}

/// A process's start, in clock ticks since boot; `None` once it is gone
/// (or a zombie).
fn started_at(pid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields[0] == "Z" || fields[0] == "X" {
        return None;
    }
    fields[19].parse().ok()
}

/// The survivor named `name`.
fn node_index(name: &str) -> Option<usize> {
    match name {
        "n1" => Some(1),
        "n2" => Some(2),
        _ => None,
    }
}

fn worker_log(d: &Ternd, vm: &Value) -> String {
    let id = vm["id"].as_str().unwrap();
    std::fs::read_to_string(d.state_dir().join("logs").join(format!("{id}.log")))
        .unwrap_or_default()
}

fn verified(d: &Ternd, vm: &str) -> bool {
    let log = worker_log(d, &d.state(vm));
    assert!(!log.contains("result=fail"), "{vm}: {log}");
    log.lines()
        .any(|l| l.contains("blk-verify") && l.contains("result=pass"))
}

/// Every sector of the raw image holds the probe's pattern.
fn check_pattern(image: &Path) {
    let bytes = std::fs::read(image).unwrap();
    assert_eq!(bytes.len() as u64, DISK_MIB << 20);
    for (s, sector) in bytes.chunks_exact(SECTOR_SIZE as usize).enumerate() {
        assert!(
            sector == sector_bytes(s as u64),
            "{}: sector {s} does not hold what the guest wrote",
            image.display()
        );
    }
}

#[test]
fn killed_node_vms_restart_on_survivors_from_shared_storage() {
    let test = "killed_node_vms_restart_on_survivors_from_shared_storage";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = EtcdCluster::start(test, &dir.path().join("etcd"), 3) else {
        return;
    };
    let eps = etcd.endpoints_arg();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let mut nodes: Vec<Ternd> = ["n0", "n1", "n2"]
        .iter()
        .map(|n| start_node(dir.path(), &eps, n, &shared))
        .collect();
    let n0 = &nodes[0];

    let size = format!("{DISK_MIB}M");
    let guest = format!("probe:blk-verify,mib={DISK_MIB}+dirty,mib=4,rate=16");
    for vm in ["a", "b"] {
        let img = shared.join(format!("{vm}.raw"));
        n0.json(&[
            "volume",
            "create",
            vm,
            "--size",
            &size,
            "--format",
            "raw",
            "--path",
            img.to_str().unwrap(),
        ]);
        n0.json(&[
            "vm", "create", vm, "--memory", "64M", "--disk", vm, "--guest", &guest,
        ]);
    }
    // Bad input, each refused with nothing in etcd: a disk off shared
    // storage (n0's own disk directory), an unknown preferred owner.
    n0.json(&["volume", "create", "private", "--size", "4M"]);
    n0.json(&[
        "vm",
        "create",
        "local",
        "--memory",
        "64M",
        "--disk",
        "private",
        "--guest",
        "probe:hello",
    ]);
    n0.fails(
        &["cluster", "add-vm", "local"],
        65,
        "is not on shared storage",
    );
    let out = n0.tern(&["cluster", "add-vm", "a", "--preferred-owner", "nosuch"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown node 'nosuch'"),
        "{err}"
    );
    assert!(cluster_vms(&nodes[1]).is_empty(), "bad input reached etcd");

    // a (high priority) and b, one anti-affinity class; both started on n0.
    let a = n0.json(&[
        "cluster",
        "add-vm",
        "a",
        "--priority",
        "high",
        "--anti-affinity",
        "web",
    ]);
    assert_eq!(a["stopped"], true, "{a}");
    n0.json(&["cluster", "add-vm", "b", "--anti-affinity", "web"]);
    for vm in ["a", "b"] {
        assert_eq!(n0.json(&["vm", "start", vm])["state"], "running");
    }
    // Every node sees n0 own them.
    for d in &nodes {
        for vm in ["a", "b"] {
            assert_eq!(owner(d, vm).as_deref(), Some("n0"));
        }
    }
    // Started elsewhere while n0 owns it: refused.
    nodes[1].fails(&["vm", "show", "a"], 2, "no VM named");
    poll(
        Duration::from_secs(30),
        "n0's guests wrote their disks",
        || (verified(n0, "a") && verified(n0, "b")).then_some(()),
    );
    let old_tokens: Vec<i64> = ["a", "b"]
        .iter()
        .map(|vm| {
            let t = tern_cluster::fence::recorded(&shared.join(format!("{vm}.raw")))
                .unwrap()
                .expect("token file beside the image");
            assert_eq!(t.node, "n0");
            t.token
        })
        .collect();
    // Workers that keep being renewed run on past several TTLs.
    let pids: Vec<u64> = ["a", "b"]
        .iter()
        .map(|vm| n0.state(vm)["pid"].as_u64().unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(TTL_S + 1));
    assert!(
        pids.iter().all(|p| started_at(*p).is_some()),
        "{}",
        n0.log()
    );

    // kill -9 of n0's daemon and all its workers.
    let killed = Instant::now();
    nodes[0].kill();
    for p in &pids {
        procs::kill(*p as u32);
    }
    poll(Duration::from_secs(5), "n0's workers gone", || {
        pids.iter().all(|p| started_at(*p).is_none()).then_some(())
    });
    let dead_at = uptime_ticks();
    // What n0's guests wrote is on shared storage.
    for vm in ["a", "b"] {
        check_pattern(&shared.join(format!("{vm}.raw")));
    }

    let placed = poll(
        Duration::from_secs(TTL_S * 6),
        "a and b running on survivors",
        || {
            let mut on = Vec::new();
            for vm in ["a", "b"] {
                let o = owner(&nodes[1], vm)?;
                let v = nodes[node_index(&o)?].json(&["vm", "show", vm]);
                (v["state"] == "running").then_some(())?;
                on.push((o, v));
            }
            Some(on)
        },
    );
    let elapsed = killed.elapsed();
    eprintln!(
        "failover: node kill to both VMs running elsewhere: {:.2} s (TTL {TTL_S} s)",
        elapsed.as_secs_f64()
    );
    assert!(
        elapsed >= Duration::from_secs(TTL_S) / 2,
        "restarted after {elapsed:?}: before n0's lease could have expired"
    );
    // Anti-affinity: one on each survivor.
    let owners: Vec<&str> = placed.iter().map(|(o, _)| o.as_str()).collect();
    assert!(
        owners == ["n1", "n2"] || owners == ["n2", "n1"],
        "{owners:?}"
    );
    // No VM ran on two nodes at once: every new worker started after the
    // old ones were gone (one machine, one clock).
    for (o, v) in &placed {
        let pid = v["pid"].as_u64().unwrap();
        let start = started_at(pid).expect("the new worker runs");
        assert!(
            start >= dead_at.saturating_sub(1),
            "VM {} on {o}: worker started at tick {start}, the old one was gone at {dead_at}",
            v["name"]
        );
    }
    // The new owners handed the disks a newer token; the guests write and
    // verify their disks again there.
    for ((vm, (o, _)), old) in ["a", "b"].iter().zip(&placed).zip(&old_tokens) {
        let t = tern_cluster::fence::recorded(&shared.join(format!("{vm}.raw")))
            .unwrap()
            .unwrap();
        assert_eq!(&t.node, o);
        assert!(t.token > *old, "{vm}: token {} after {old}", t.token);
        // The old owner's token is refused by the storage now.
        let stale = tern_cluster::fence::hand_over(&shared.join(format!("{vm}.raw")), *old, "n0");
        assert!(
            matches!(stale, Err(tern_cluster::fence::FenceError::Stale { .. })),
            "{vm}: {stale:?}"
        );
        let idx = node_index(o).unwrap();
        poll(
            Duration::from_secs(30),
            "guest verified on the survivor",
            || verified(&nodes[idx], vm).then_some(()),
        );
        // The survivor recorded the take-over with the new token.
        let out = nodes[idx].tern(&["vm", "events", "--json"]);
        let took = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| {
                e["kind"] == "cluster-vm-failed-over"
                    && e["vm"] == *vm
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&format!("fencing token {}", t.token)))
            });
        assert!(took, "no failover event for {vm} on {o}");
    }
    // A stop on request releases the VM marked stopped: nobody restarts it.
    let (o, _) = &placed[1];
    let idx = node_index(o).unwrap();
    nodes[idx].json(&["vm", "stop", "b"]);
    std::thread::sleep(Duration::from_secs(TTL_S + 1));
    let b = cluster_vms(&nodes[1])
        .into_iter()
        .find(|v| v.name == "b")
        .unwrap();
    assert!(b.stopped && b.owner.is_none(), "{b:?}");
    drop(nodes);
}
