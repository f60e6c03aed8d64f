//! Failover clustering, first slice: three real etcd members and three
//! `ternd` daemons joined with `--cluster`/`--node` (on loopback, each daemon
//! on its own socket and state directory: no network namespaces yet). A
//! daemon killed with SIGKILL is declared down by every other node once its
//! lease expires; one etcd member of three lost stops nothing; a daemon that
//! cannot reach etcd, or asks for a live node's name, exits at start with
//! nothing registered. The lease TTL is 3 s here (10 s by default).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_api::{ClusterInfo, ClusterNode, ClusterNodeState};
use tern_cluster::testing::EtcdCluster;
use tern_test_support::{poll, procs, Ternd};

const TTL_S: u64 = 3;

fn node_args(endpoints: &str, name: &str) -> Vec<String> {
    vec![
        "--cluster".into(),
        endpoints.into(),
        "--node".into(),
        name.into(),
        "--cluster-ttl".into(),
        TTL_S.to_string(),
    ]
}

fn start_node(dir: &Path, endpoints: &str, name: &str) -> Ternd {
    let args = node_args(endpoints, name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ternd::start_with(&dir.join(name), &args)
}

fn nodes(d: &Ternd) -> Vec<ClusterNode> {
    let out = d.tern(&["cluster", "nodes", "--json"]);
    assert!(
        out.status.success(),
        "tern cluster nodes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tern cluster nodes --json")
}

fn state_of(d: &Ternd, name: &str) -> Option<ClusterNodeState> {
    nodes(d)
        .into_iter()
        .find(|n| n.name == name)
        .map(|n| n.state)
}

/// Runs `ternd ARGS` to its end (it must fail at start), under a fresh tag.
fn ternd_fails(dir: &Path, args: &[String]) -> (Option<i32>, String) {
    std::fs::create_dir_all(dir).unwrap();
    let out = procs::output(
        Command::new(tern_test_support::ternd_exe())
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("d.sock"))
            .arg("--worker")
            .arg(tern_test_support::tern_exe())
            .args(args)
            .stdin(Stdio::null()),
    )
    .expect("run ternd");
    assert!(
        !dir.join("d.sock").exists(),
        "a daemon that could not join still bound its socket"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn killed_daemon_goes_down_everywhere_and_one_etcd_member_lost_stops_nothing() {
    let test = "killed_daemon_goes_down_everywhere_and_one_etcd_member_lost_stops_nothing";
    let dir = tempfile::tempdir().unwrap();
    let Some(mut etcd) = EtcdCluster::start(test, &dir.path().join("etcd"), 3) else {
        return;
    };
    let eps = etcd.endpoints_arg();
    let mut daemons: Vec<Ternd> = ["n0", "n1", "n2"]
        .iter()
        .map(|n| start_node(dir.path(), &eps, n))
        .collect();

    // Every node answers for the whole cluster.
    for d in &daemons {
        let mut seen = nodes(d);
        seen.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<_> = seen.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n0", "n1", "n2"]);
        assert!(
            seen.iter().all(|n| n.state == ClusterNodeState::Up),
            "{seen:?}"
        );
        assert!(seen.iter().all(|n| n.memory > 0 && n.vcpus > 0), "{seen:?}");
    }
    let out = daemons[1].tern(&["cluster", "status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: ClusterInfo = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (info.node.as_str(), info.nodes_up, info.nodes_total),
        ("n1", 3, 3)
    );
    assert_eq!(info.ttl_s, TTL_S);

    // A second daemon under a live node's name is refused at start.
    let (code, err) = ternd_fails(&dir.path().join("dup"), &node_args(&eps, "n1"));
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("node 'n1' is already up"), "{err}");
    assert_eq!(state_of(&daemons[0], "n1"), Some(ClusterNodeState::Up));

    // kill -9 of n2's daemon: the others see it down once its lease expires.
    daemons[2].kill();
    let killed = Instant::now();
    poll(
        Duration::from_secs(TTL_S * 4),
        "n2 down as n0 sees it",
        || (state_of(&daemons[0], "n2") == Some(ClusterNodeState::Down)).then_some(()),
    );
    let detected = killed.elapsed();
    eprintln!(
        "cluster: SIGKILLed daemon declared down after {:.2} s (TTL {TTL_S} s)",
        detected.as_secs_f64()
    );
    assert!(
        detected >= Duration::from_secs(TTL_S) / 2,
        "n2 declared down after {detected:?}: before its lease could have expired"
    );
    assert_eq!(state_of(&daemons[1], "n2"), Some(ClusterNodeState::Down));

    // One etcd member of three killed: the two nodes stay up past 2 TTLs.
    etcd.kill(0);
    std::thread::sleep(Duration::from_secs(TTL_S * 2));
    for (d, name) in daemons[..2].iter().zip(["n0", "n1"]) {
        assert_eq!(
            state_of(d, name),
            Some(ClusterNodeState::Up),
            "{name} with 2 of 3 etcd members: {}",
            d.log()
        );
    }
    // The restarted daemon joins again under its name.
    daemons[2].restart();
    poll(Duration::from_secs(10), "n2 up again", || {
        (state_of(&daemons[0], "n2") == Some(ClusterNodeState::Up)).then_some(())
    });
}

#[test]
fn daemon_that_cannot_reach_etcd_exits_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let (code, err) = ternd_fails(dir.path(), &node_args(&url, "lonely"));
    assert_eq!(code, Some(69), "{err}");
    assert!(
        err.contains("cannot join the cluster as node 'lonely'") && err.contains(&url),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    // A node without --cluster is refused by clap; a daemon outside any
    // cluster answers /v1/cluster with a clear 404.
    let solo = Ternd::start(&dir.path().join("solo"));
    let out = solo.tern(&["cluster", "nodes"]);
    assert_eq!(out.status.code(), Some(2), "not found exit code");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("not in a cluster"), "{msg}");
}

/// The worker half of "one copy, always": renewals keep the VM running; an
/// older fencing token is refused; once renewals stop, the worker pauses
/// and stops its VM by itself when the deadline passes.
#[test]
fn worker_stops_itself_when_its_ownership_deadline_passes() {
    use tern_test_support::proto::requests::OwnershipRenew;
    use tern_test_support::proto::ErrorCode;
    use tern_test_support::{tern_run, Worker};

    let test = "worker_stops_itself_when_its_ownership_deadline_passes";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let mut cmd = tern_run();
    cmd.args(["--memory", "64M", "--guest", "probe:dirty,mib=8,rate=64"]);
    let w = Worker::start_temp("owned", cmd);
    let renew = |token, ms| OwnershipRenew {
        token,
        deadline_ms: ms,
    };
    // Renewed every 400 ms with a 1.2 s deadline: 2.4 s later it still runs.
    for _ in 0..6 {
        let r = w.call(renew(7, 1200));
        assert_eq!(r.token, 7);
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            w.exited().is_none(),
            "stopped while renewed: {}",
            w.stderr()
        );
    }
    let old = w.refused(renew(6, 1200));
    assert_eq!(old.code, ErrorCode::Conflict, "{old:?}");
    assert!(old.message.contains("older"), "{old:?}");
    let too_long = w.refused(renew(7, 24 * 3600 * 1000));
    assert_eq!(too_long.code, ErrorCode::BadRequest, "{too_long:?}");

    // The last renewal: a newer token, a 1 s deadline, then silence.
    let last = Instant::now();
    w.call(renew(8, 1000));
    assert!(
        w.wait_status(Duration::from_secs(10)).is_some(),
        "the worker ran on past its deadline: {}",
        w.stderr()
    );
    let stopped = last.elapsed();
    eprintln!(
        "cluster: worker stopped {:.3} s after its last renewal (deadline 1.000 s)",
        stopped.as_secs_f64()
    );
    assert!(
        stopped >= Duration::from_millis(1000),
        "stopped before its deadline: {stopped:?}"
    );
    assert!(
        stopped < Duration::from_millis(2500),
        "stopped {stopped:?} after the last renewal (deadline 1 s)"
    );
    assert!(
        w.stderr().contains("ownership deadline passed"),
        "{}",
        w.stderr()
    );
}
