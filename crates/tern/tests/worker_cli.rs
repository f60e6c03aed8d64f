//! `tern run` end to end: the real binary, the probe guest, the control
//! socket, and every bad input the worker must refuse with one clear line.

use std::process::{Output, Stdio};
use std::time::Duration;

use tern_test_support::proto::requests::{Pause, ProbeStop, Resume, Shutdown};
use tern_test_support::proto::VmState;
use tern_test_support::{procs, tern_run, Worker};

fn run(args: &[&str]) -> Output {
    procs::output(tern_run().args(args).stdin(Stdio::null())).expect("spawn tern")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn hello_prints_the_greeting_and_exits_zero() {
    if !tern_test_support::kvm_available("hello_prints_the_greeting_and_exits_zero") {
        return;
    }
    let out = run(&["--guest", "probe:hello"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        stdout.contains("Hello from the Tern probe guest!"),
        "stdout: {stdout}"
    );
    assert!(text(&out.stderr).contains("hello result=pass"));
}

#[test]
fn vcpus_workload_with_1_2_and_4_vcpus() {
    if !tern_test_support::kvm_available("vcpus_workload_with_1_2_and_4_vcpus") {
        return;
    }
    for n in ["1", "2", "4"] {
        let out = run(&["--vcpus", n, "--memory", "64M", "--guest", "probe:vcpus"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{n} vCPUs: {stderr}");
        assert!(
            stderr.contains(&format!("checked_in={n} expected={n} result=pass")),
            "{n} vCPUs: {stderr}"
        );
    }
}

#[test]
fn control_socket_pauses_resumes_and_stops_the_dirty_workload() {
    if !tern_test_support::kvm_available(
        "control_socket_pauses_resumes_and_stops_the_dirty_workload",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl.sock");
    let mut cmd = tern_run();
    cmd.args(["--vcpus", "2", "--memory", "128M"])
        .args(["--guest", "probe:dirty,mib=16,rate=64+verify"])
        .args(["--serial", "null"]);
    let w = Worker::start("worker", cmd, &sock);
    w.wait_generation(2);
    assert_eq!(w.call(Pause {}).state, VmState::Paused);
    let frozen = w.progress();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(w.progress(), frozen, "progress while paused");
    assert_eq!(w.call(Resume {}).state, VmState::Running);
    std::thread::sleep(Duration::from_millis(300));
    let after = w.progress();
    assert!(
        after > frozen,
        "no progress after resume: {frozen:?} {after:?}"
    );
    // Bad requests get an error reply, and the worker keeps serving (an
    // unknown request is what the protocol's types cannot express).
    let bad = w.raw_request(r#"{"cmd":"explode"}"#);
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("bad request"));
    w.refused(Resume {});
    w.call(ProbeStop {});
    let (code, stderr) = w.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("verify pages=4096 bad=0 result=pass"),
        "{stderr}"
    );
    assert!(!sock.exists(), "control socket left behind");
}

#[test]
fn shutdown_request_ends_the_worker_with_zero() {
    if !tern_test_support::kvm_available("shutdown_request_ends_the_worker_with_zero") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tern_run();
    cmd.args(["--memory", "64M", "--guest", "probe:dirty,mib=4"])
        .args(["--serial", "null"]);
    let w = Worker::start("worker", cmd, &dir.path().join("ctl.sock"));
    w.call(Shutdown {});
    assert_eq!(w.wait_exit(Duration::from_secs(60)), Some(0));
}

/// Bad input: one clear line on stderr, a documented exit code, no panic.
#[test]
fn bad_input_gets_one_clear_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let not_elf = dir.path().join("not-elf");
    std::fs::write(&not_elf, "#!/bin/sh\n").unwrap();
    let not_elf = not_elf.to_str().unwrap().to_string();
    let kvm = tern_test_support::kvm_available("bad_input_gets_one_clear_line_and_a_nonzero_exit");
    // (args, expected exit code, expected text); the KVM-dependent cases
    // (limits only KVM knows) run only with /dev/kvm.
    let mut cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--guest", "probe:bogus"],
            64,
            "unknown probe workload 'bogus'",
        ),
        (
            vec!["--guest", "probe:dirty,mib=0"],
            64,
            "must be at least 1",
        ),
        (vec!["--guest", "linux"], 64, "unknown guest 'linux'"),
        (
            vec!["--vcpus", "0", "--guest", "probe:hello"],
            64,
            "at least 1 vCPU",
        ),
        (
            vec!["--memory", "12Q", "--guest", "probe:hello"],
            64,
            "unknown suffix",
        ),
        (
            vec!["--guest", "probe:hello", "--kvm", "/nonexistent/kvm"],
            69,
            "cannot open /nonexistent/kvm",
        ),
        (
            vec!["--guest", "probe:hello", "--kvm", "/dev/null"],
            69,
            "/dev/null is not a KVM device",
        ),
    ];
    if kvm {
        cases.extend([
            (
                vec![
                    "--guest",
                    "probe:hello",
                    "--probe-image",
                    "/nonexistent/probe",
                ],
                66,
                "cannot open probe guest image /nonexistent/probe",
            ),
            (
                vec!["--guest", "probe:hello", "--probe-image", &not_elf],
                64,
                "is not a loadable x86-64 ELF",
            ),
            (vec!["--kernel", "/nonexistent/vmlinuz"], 66, "not found"),
            (
                vec!["--kernel", &not_elf],
                64,
                "is not a bzImage or an ELF vmlinux",
            ),
            (
                vec!["--memory", "0", "--guest", "probe:hello"],
                64,
                "must be at least 1 MiB",
            ),
            (
                vec!["--memory", "64T", "--guest", "probe:hello"],
                64,
                "but this host has only",
            ),
            (
                vec!["--vcpus", "100000", "--guest", "probe:hello"],
                64,
                "this host's KVM allows at most",
            ),
            (
                vec!["--vcpus", "65", "--guest", "probe:hello"],
                64,
                "the probe guest allows at most 64",
            ),
        ]);
    }
    for (args, code, want) in cases {
        let out = run(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
        // clap adds a usage hint line after its own one-line error.
        assert!(lines <= 3, "{args:?}: more than one error line: {stderr}");
    }
}
