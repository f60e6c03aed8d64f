//! A test that panics leaves nothing running: the outer test runs this
//! binary again, selecting an inner test that starts a worker and a daemon
//! with a running VM (whose worker sits in a process group of its own) and
//! then panics; the outer test checks the inner failed and that no process
//! started under it is alive.

use std::process::Command;
use std::time::Duration;

use tern_test_support::{alive, tern_run, Tag, Ternd, Worker};

/// Set (to the outer test's name) in the inner run's environment.
const INNER: &str = "TERN_TEST_CLEANUP_INNER";
/// What the inner test prints before it panics: the pids it started.
const PIDS: &str = "cleanup-inner-pids:";
const PANIC: &str = "panicking on purpose, with a worker and a daemon running";

#[test]
#[ignore = "run by a_panicking_test_leaves_no_process_behind, which checks what it leaves"]
fn inner_starts_a_worker_and_a_daemon_then_panics() {
    assert!(
        std::env::var_os(INNER).is_some(),
        "this test panics on purpose; run a_panicking_test_leaves_no_process_behind instead"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tern_run();
    cmd.args(["--memory", "32M", "--serial", "null"])
        .args(["--guest", "probe:dirty,mib=4"]);
    let w = Worker::start("inner-worker", cmd, &dir.path().join("w.sock"));
    w.wait_generation(1);
    let d = Ternd::start(&dir.path().join("d"));
    let vm = d.json(&[
        "vm",
        "create",
        "spinner",
        "--memory",
        "32M",
        "--guest",
        "probe:dirty,mib=4",
        "--start",
    ]);
    let vm_pid = vm["pid"].as_u64().expect("a running VM has a pid");
    println!("{PIDS} {} {} {vm_pid}", w.pid(), d.pid());
    panic!("{PANIC}");
}

#[test]
fn a_panicking_test_leaves_no_process_behind() {
    let name = "a_panicking_test_leaves_no_process_behind";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    tern_test_support::probe_guest();
    // Everything the inner run starts carries this tag as well as its own.
    let tag = Tag::new();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "inner_starts_a_worker_and_a_daemon_then_panics",
        "--exact",
        "--ignored",
        "--nocapture",
    ])
    .env(INNER, name);
    let out = tag.apply(&mut cmd).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(!out.status.success(), "the inner test passed: {all}");
    assert!(
        stderr.contains(PANIC),
        "the inner test failed otherwise: {all}"
    );
    let pids: Vec<u32> = stdout
        .lines()
        .find_map(|l| l.strip_prefix(PIDS))
        .unwrap_or_else(|| panic!("the inner test printed no pids: {all}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{all}");
    // Give nothing a grace period: the harness kills synchronously.
    let left = tag.live();
    assert!(
        left.is_empty(),
        "processes the panicking test started are alive:\n{}",
        left.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (what, pid) in ["worker", "daemon", "VM's worker"].iter().zip(&pids) {
        assert!(!alive(*pid), "the inner test's {what} (pid {pid}) is alive");
    }
    // The check itself sees tagged processes: a sleeping child under the
    // same kind of tag is found, and killed with its tag.
    let probe = Tag::new();
    let mut sleeper = Command::new("sleep");
    sleeper.arg("60");
    let mut child = probe.apply(&mut sleeper).spawn().unwrap();
    let seen = tern_test_support::poll(Duration::from_secs(5), "the tagged sleeper", || {
        (!probe.live().is_empty()).then(|| probe.live())
    });
    assert_eq!(seen.iter().map(|p| p.pid).collect::<Vec<_>>(), [child.id()]);
    assert!(probe.kill_all().is_empty());
    assert!(!child.wait().unwrap().success());
}
