//! N-1 compatibility: the previous release (the commit in
//! `release/previous-release.toml`, built from git history by
//! `tern_test_support::prev_release`) and this build migrate VMs to each
//! other, worker to worker in both directions and daemon to daemon, with
//! the probe guest dirtying memory throughout and verifying every page at
//! the end. Without the commit in the history (a shallow clone) the tests
//! skip loudly. The first run builds the previous release (minutes; the
//! time is printed), later runs reuse it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tern_test_support::prev_release::{self, PrevRelease};
use tern_test_support::proto::requests::ProbeStop;
use tern_test_support::proto::Client;
use tern_test_support::{poll, procs, tern_run, Ternd, Worker};

const WORKLOAD: &str = "probe:dirty,mib=16,rate=32+verify";

/// The previous release, built; `None` after a loud skip (no KVM, no
/// commit in the history).
fn previous(test: &str) -> Option<PrevRelease> {
    if !tern_test_support::kvm_available(test) {
        return None;
    }
    tern_test_support::probe_guest();
    prev_release::build(test)
}

/// `tern run` of the release `run` with the probe workload, as `name`,
/// with its control socket in `dir`.
fn worker(name: &str, dir: &Path, mut run: Command, extra: &[&str]) -> Worker {
    run.args(["--vcpus", "2", "--memory", "64M", "--guest", WORKLOAD]);
    run.args(["--serial", "null"]);
    run.args(extra);
    Worker::with_control(name, run, &dir.join(format!("{name}.sock")))
}

/// A destination of release `run` listening on loopback; its endpoint.
fn destination(name: &str, dir: &Path, run: Command) -> (Worker, String) {
    let listening = dir.join(format!("{name}.listening"));
    let w = worker(
        name,
        dir,
        run,
        &[
            "--incoming",
            "tcp:127.0.0.1:0",
            "--listening-file",
            listening.to_str().unwrap(),
        ],
    );
    w.wait_line("waiting for a migration on ", Duration::from_secs(20));
    let doc = tern_worker_proto::Listening::read(&listening)
        .unwrap()
        .expect("the listening file is written before the log line");
    (w, doc.endpoint.to_string())
}

/// `tern migrate` of the source's release (`cli`) to the end; the last
/// JSON status.
fn migrate(cli: &Path, src: &Worker, to: &str) -> Value {
    let mut cmd = Command::new(cli);
    cmd.args(["migrate", "--json", "--control"])
        .arg(src.sock())
        .args(["--to", to, "--channels", "2"]);
    let out = procs::output(&mut cmd).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "migrate from {} to {to} failed: {}\n{stdout}",
        src.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or(Value::Null);
    assert_eq!(last["phase"], "completed", "{last}");
    assert_eq!(
        src.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{} did not end: {}",
        src.name(),
        src.stderr()
    );
    last
}

#[test]
fn a_dirtying_vm_migrates_from_the_previous_release_and_back() {
    let test = "a_dirtying_vm_migrates_from_the_previous_release_and_back";
    let Some(prev) = previous(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let old_src = worker("old-source", dir.path(), prev.tern_run(), &[]);
    old_src.wait_generation(1);

    // Previous release -> this build: it offers its version, we speak it.
    let (new, ep) = destination("new", dir.path(), tern_run());
    migrate(&prev.tern(), &old_src, &ep);
    new.wait_line("migration complete", Duration::from_secs(10));
    let accepted = new.wait_line("accepted (protocol ", Duration::from_secs(1));
    assert!(
        accepted.contains(&format!("(protocol {})", prev.protocol)),
        "{accepted}"
    );
    // The guest runs on here: it makes progress.
    let g = new.generation();
    new.wait_generation(g + 1);

    // This build -> previous release: the old destination refuses our
    // version and names its own; we connect again speaking it.
    let (old, ep) = destination("old", dir.path(), prev.tern_run());
    let st = migrate(&tern_test_support::tern_exe(), &new, &ep);
    assert_eq!(st["protocol"], prev.protocol, "{st}");
    let refused = old.wait_line("refused the source", Duration::from_secs(1));
    assert!(
        refused.contains("peer speaks migration protocol"),
        "the first attempt offered our newer version: {refused}"
    );
    old.wait_line("migration complete", Duration::from_secs(10));

    // Twice moved, still dirtying: every page it wrote checks out.
    let g = old.generation();
    old.wait_generation(g + 1);
    let report = old.finish_and_verify();
    eprintln!("{test}: {report}");
}

/// The state directory's control socket and log of VM `id`.
fn worker_files(d: &Ternd, id: &str) -> (PathBuf, PathBuf) {
    let state = d.state_dir();
    (
        state.join("run").join(format!("{id}.ctl")),
        state.join("logs").join(format!("{id}.log")),
    )
}

/// The first line of `log` containing `needle`, waiting up to 10 s.
fn log_line(log: &Path, needle: &str) -> String {
    poll(Duration::from_secs(10), needle, || {
        std::fs::read_to_string(log)
            .ok()?
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
    })
}

#[test]
fn a_previous_release_daemon_hands_a_vm_to_a_current_one_and_takes_it_back() {
    let test = "a_previous_release_daemon_hands_a_vm_to_a_current_one_and_takes_it_back";
    let Some(prev) = previous(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let old = Ternd::start_release(&tmp.path().join("old"), (prev.ternd(), prev.tern()), &[]);
    let new = Ternd::start(&tmp.path().join("new"));
    old.json(&[
        "vm",
        "create",
        "mover",
        "--memory",
        "64M",
        "--guest",
        "probe:dirty,mib=16,rate=20+verify",
        "--start",
    ]);
    let before = old.state("mover");
    let id = before["id"].as_str().unwrap().to_string();

    // The previous release's daemon and worker send; this build receives.
    let m = old.json(&["vm", "migrate", "mover", "--to", &new.host()]);
    assert_eq!(m["state"], "completed", "{m}");
    old.fails(&["vm", "show", "mover"], 2, "no VM named");
    let moved = new.state("mover");
    assert_eq!(moved["state"], "running", "{moved}");
    assert_eq!(moved["id"], before["id"]);
    let (_, new_log) = worker_files(&new, &id);
    let accepted = log_line(&new_log, "accepted (protocol ");
    assert!(
        accepted.contains(&format!("(protocol {})", prev.protocol)),
        "{accepted}"
    );

    // And back, as a rolling upgrade moves VMs both ways: the old worker
    // refuses our version first, then accepts its own.
    let m = new.json(&["vm", "migrate", "mover", "--to", &old.host()]);
    assert_eq!(m["state"], "completed", "{m}");
    assert_eq!(old.state("mover")["state"], "running");
    let (ctl, old_log) = worker_files(&old, &id);
    log_line(
        &old_log,
        "refused the source: peer speaks migration protocol",
    );
    log_line(&old_log, "migration complete");

    // The guest stops dirtying and checks every page, twice moved.
    Client::new(&ctl)
        .with_timeout(Duration::from_secs(30))
        .call(ProbeStop {})
        .unwrap();
    poll(Duration::from_secs(60), "the guest to verify", || {
        (old.state("mover")["state"] == "stopped").then_some(())
    });
    let log = std::fs::read_to_string(&old_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("verify") && l.contains("bad=0") && l.contains("result=pass")),
        "{log}"
    );
}
