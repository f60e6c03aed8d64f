//! The daemon with real workers (`tern run`, needs /dev/kvm): supervision
//! of a killed worker and concurrent lifecycle requests.
//!
//! Build first: `cargo build -p tern -p probe-guest` (same target dir).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tern_api::{CreateVm, Size, VmState};

fn spec(name: &str, guest: &str) -> CreateVm {
    CreateVm {
        name: name.into(),
        vcpus: Some(1),
        memory: Some(Size(64 << 20)),
        guest: guest.into(),
        disks: vec![],
    }
}

fn alive(pid: u32) -> bool {
    tern_daemon::worker::process_start(pid).is_some()
}

/// Polls `f` until it returns `Some`, failing after `t`.
async fn until<T>(t: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < t,
            "timed out after {t:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_fails_its_vm_and_the_daemon_keeps_serving() {
    if !tern_test_support::kvm_available(
        "a_killed_worker_fails_its_vm_and_the_daemon_keeps_serving",
    ) {
        return;
    }
    let t = common::start(common::tern_exe()).await;
    let c = &t.client;
    c.create_vm(&spec("victim", "probe:touch")).await.unwrap();
    c.create_vm(&spec("bystander", "probe:touch"))
        .await
        .unwrap();
    let v = c.vm_action("victim", "start").await.unwrap();
    let b = c.vm_action("bystander", "start").await.unwrap();
    assert_eq!(v.state, VmState::Running);
    let pid = v.pid.unwrap();
    assert!(alive(pid));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let v = until(
        Duration::from_secs(10),
        "the VM to be marked failed",
        async || {
            let v = c.get_vm("victim").await.unwrap();
            (v.state == VmState::Failed).then_some(v)
        },
    )
    .await;
    let reason = v.reason.unwrap();
    assert!(reason.contains("SIGKILL"), "reason: {reason}");
    assert!(reason.contains(&pid.to_string()), "reason: {reason}");
    assert_eq!(v.pid, None);
    let events = c.events(None, Some("victim"), None).await.unwrap();
    assert_eq!(events.last().unwrap().kind, "failed");
    // The daemon and the other VM are unharmed; nothing was restarted.
    let b2 = c.get_vm("bystander").await.unwrap();
    assert_eq!((b2.state, b2.pid), (VmState::Running, b.pid));
    assert!(!alive(pid));
    // A failed VM can be started again on request, and stopped.
    let v = c.vm_action("victim", "start").await.unwrap();
    assert_eq!(v.state, VmState::Running);
    assert_eq!(v.reason, None);
    for name in ["victim", "bystander"] {
        let v = c.vm_action(name, "stop").await.unwrap();
        assert_eq!(v.state, VmState::Stopped, "{name}");
        assert_eq!(v.reason.as_deref(), Some("stopped on request"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_start_fails_with_its_error() {
    if !tern_test_support::kvm_available("a_worker_that_cannot_start_fails_with_its_error") {
        return;
    }
    let t = common::start(common::tern_exe()).await;
    // A probe image that does not exist: the worker exits 66 with a message.
    let bad = common::start_with(common::tern_exe(), |cfg| {
        cfg.probe_image = Some("/nonexistent/probe".into());
    })
    .await;
    let c = &bad.client;
    c.create_vm(&spec("bad", "probe:hello")).await.unwrap();
    let e = c.vm_action("bad", "start").await.unwrap_err();
    assert_eq!(e.status(), Some(500), "{e}");
    assert!(e.to_string().contains("/nonexistent/probe"), "{e}");
    let v = c.get_vm("bad").await.unwrap();
    assert_eq!(v.state, VmState::Failed);
    assert!(v.reason.unwrap().contains("exit status 66"));
    // A guest that finishes by itself is stopped, not failed.
    let _ = t
        .client
        .create_vm(&spec("hi", "probe:hello"))
        .await
        .unwrap();
    let _ = t.client.vm_action("hi", "start").await;
    let v = until(
        Duration::from_secs(20),
        "the hello guest to finish",
        async || {
            let v = t.client.get_vm("hi").await.unwrap();
            (!v.state.has_worker()).then_some(v)
        },
    )
    .await;
    assert_eq!(v.state, VmState::Stopped, "{:?}", v.reason);
    assert_eq!(
        v.reason.as_deref(),
        Some("the guest finished (exit status 0)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_create_start_stop_requests_leave_the_registry_consistent() {
    if !tern_test_support::kvm_available(
        "fifty_parallel_create_start_stop_requests_leave_the_registry_consistent",
    ) {
        return;
    }
    let t = common::start(common::tern_exe()).await;
    const VMS: usize = 20;
    // 50 creates for 20 names: exactly 20 succeed, 30 conflict.
    let creates = (0..50).map(|i| {
        let c = t.client.clone();
        tokio::spawn(async move {
            c.create_vm(&spec(&format!("c{}", i % VMS), "probe:touch"))
                .await
        })
    });
    let mut ok = 0;
    for h in futures_util::future::join_all(creates).await {
        match h.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.status(), Some(409), "{e}"),
        }
    }
    assert_eq!(ok, VMS);
    assert_eq!(t.client.list_vms().await.unwrap().len(), VMS);

    // 50 starts and stops at once: each is done or refused for the state.
    let seen_pids = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let ops = (0..50).map(|i| {
        let c = t.client.clone();
        let pids = seen_pids.clone();
        let action = ["start", "stop", "start"][i / VMS];
        tokio::spawn(async move {
            let r = c.vm_action(&format!("c{}", i % VMS), action).await;
            if let Ok(v) = &r {
                if let Some(p) = v.pid {
                    pids.lock().unwrap().insert(p);
                }
            }
            (action, r)
        })
    });
    for h in futures_util::future::join_all(ops).await {
        let (action, r) = h.unwrap();
        if let Err(e) = r {
            assert_eq!(e.status(), Some(409), "{action}: {e}");
        }
    }

    // Consistent: no VM left half-way, every running VM has a live worker
    // that answers, every stopped VM has none.
    let vms = t.client.list_vms().await.unwrap();
    assert_eq!(vms.len(), VMS);
    let mut running = 0;
    for v in &vms {
        match v.state {
            VmState::Running => {
                running += 1;
                let pid = v.pid.expect("a running VM has a pid");
                assert!(alive(pid), "{}: worker {pid} is gone", v.name);
                seen_pids.lock().unwrap().insert(pid);
            }
            VmState::Stopped => assert_eq!(v.pid, None, "{}", v.name),
            s => panic!("{} left in state {s} ({:?})", v.name, v.reason),
        }
    }
    let live = seen_pids
        .lock()
        .unwrap()
        .iter()
        .filter(|p| alive(**p))
        .count();
    assert_eq!(live, running, "live workers vs running VMs");
    let events = t.client.events(None, None, None).await.unwrap();
    let starts = events.iter().filter(|e| e.kind == "started").count();
    let stops = events.iter().filter(|e| e.kind == "stopped").count();
    assert_eq!(
        starts - stops,
        running,
        "started/stopped events vs running VMs"
    );

    // Stop and delete everything in parallel.
    let ends = vms.iter().map(|v| {
        let c = t.client.clone();
        let (name, state) = (v.name.clone(), v.state);
        tokio::spawn(async move {
            if state == VmState::Running {
                c.vm_action(&name, "stop").await.unwrap();
            }
            c.delete_vm(&name).await.unwrap();
        })
    });
    for h in futures_util::future::join_all(ends).await {
        h.unwrap();
    }
    assert!(t.client.list_vms().await.unwrap().is_empty());
    for p in seen_pids.lock().unwrap().iter() {
        assert!(!alive(*p), "worker {p} outlived its VM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_taken_applied_and_deleted_through_the_api() {
    let name = "checkpoints_are_taken_applied_and_deleted_through_the_api";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let t = common::start(common::tern_exe()).await;
    let c = &t.client;
    c.create_vm(&spec("cp", "probe:touch")).await.unwrap();
    if !c.host().await.unwrap().features.checkpoints {
        let e = c.create_checkpoint("cp", "one").await.unwrap_err();
        assert_eq!(e.status(), Some(501), "{e}");
        assert!(e.to_string().contains("not implemented yet"), "{e}");
        tern_test_support::skip(
            name,
            "the VM worker has no checkpoints yet; the daemon answers 501",
        );
        return;
    }
    // Checkpoints live in the worker: none without one.
    let e = c.create_checkpoint("cp", "one").await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    c.vm_action("cp", "start").await.unwrap();
    let one = c.create_checkpoint("cp", "one").await.unwrap();
    assert_eq!(one.name, "one");
    let e = c.create_checkpoint("cp", "one").await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    c.create_checkpoint("cp", "two").await.unwrap();
    let names: Vec<_> = c
        .list_checkpoints("cp")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["one", "two"]);
    let vm = c.apply_checkpoint("cp", "one").await.unwrap();
    assert_eq!(vm.state, VmState::Running);
    let e = c.apply_checkpoint("cp", "nope").await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    c.delete_checkpoint("cp", "two").await.unwrap();
    c.delete_checkpoint("cp", &one.id).await.unwrap();
    assert!(c.list_checkpoints("cp").await.unwrap().is_empty());
    c.vm_action("cp", "stop").await.unwrap();
}
