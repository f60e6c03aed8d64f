//! The commit step, against a destination scripted in the test: before the
//! source commits, any failure lets it resume its VM; once it has
//! committed, it never resumes on its own, even when the destination's
//! confirmation never comes (the destination may be running the VM).

use std::time::{Duration, Instant};

use tern_migrate::{Listener, MigrateError, MigrateOptions, Progress};
use tern_vmm::{Guest, RunState, Vm, VmConfig, VmHooks};

/// A running probe VM rewriting 4 MiB of memory.
fn source() -> (Vm, VmConfig) {
    let cfg = VmConfig::new(
        1,
        32 << 20,
        Guest::Probe {
            image: tern_test_support::probe_guest(),
            workload: "dirty,mib=4,rate=10".into(),
        },
    );
    let vm = Vm::create(cfg.clone(), VmHooks::default()).unwrap();
    vm.start().unwrap();
    (vm, cfg)
}

fn generation(vm: &Vm) -> u64 {
    vm.probe_status().map(|s| s.generation).unwrap_or(0)
}

fn wait_generation(vm: &Vm, at_least: u64) {
    let t = Instant::now();
    while generation(vm) < at_least {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the guest made no progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Migrates `vm` to a destination that runs `dest` on what it received;
/// returns the source's error.
fn migrate_to(
    vm: &Vm,
    cfg: &VmConfig,
    dest: impl FnOnce(tern_migrate::Received) + Send + 'static,
) -> MigrateError {
    let listener = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let to = listener.local().unwrap();
    let expect = tern_migrate::config_check(cfg);
    let d = std::thread::spawn(move || {
        let r = tern_migrate::receive(&listener, &expect, None, &|_| {}).unwrap();
        dest(r);
    });
    let err = tern_migrate::migrate(vm, &MigrateOptions::new(to), &Progress::default())
        .expect_err("the scripted destination never confirms");
    d.join().unwrap();
    err
}

#[test]
fn a_source_that_committed_stays_paused_when_the_confirmation_is_lost() {
    let name = "a_source_that_committed_stays_paused_when_the_confirmation_is_lost";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let (vm, cfg) = source();
    wait_generation(&vm, 1);
    let err = migrate_to(&vm, &cfg, |mut r| {
        r.await_commit().unwrap();
        // Gone after the commit, before saying the VM runs.
        drop(r);
    });
    assert!(matches!(err, MigrateError::Unconfirmed(_)), "{err}");
    assert!(err.to_string().contains("stays paused"), "{err}");
    assert_eq!(vm.state(), RunState::Paused);
    let g = generation(&vm);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vm.state(), RunState::Paused, "resumed on its own");
    assert_eq!(generation(&vm), g, "the guest ran after the commit");
    vm.request_stop();
    vm.wait();
}

#[test]
fn a_source_resumes_when_the_destination_is_gone_before_the_commit() {
    let name = "a_source_resumes_when_the_destination_is_gone_before_the_commit";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let (vm, cfg) = source();
    wait_generation(&vm, 1);
    // Everything arrived, then the destination went away without a word.
    let err = migrate_to(&vm, &cfg, drop);
    assert!(!matches!(err, MigrateError::Unconfirmed(_)), "{err}");
    assert_eq!(vm.state(), RunState::Running, "{err}");
    let g = generation(&vm);
    wait_generation(&vm, g + 1);
    // A destination that refuses after receiving everything: the same.
    let err = migrate_to(&vm, &cfg, |r| r.fail("no room here"));
    assert!(err.to_string().contains("no room here"), "{err}");
    assert_eq!(vm.state(), RunState::Running);
    let g = generation(&vm);
    wait_generation(&vm, g + 1);
    vm.request_stop();
    vm.wait();
}
