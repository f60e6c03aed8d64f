//! Version agreement against destinations scripted in the test (the
//! previous release itself is exercised by `crates/tern/tests/
//! migrate_compat.rs`; these need no build of it): a destination that
//! answers an older version it refuses gets a second attempt offering
//! that version, which completes; a destination of a version this build
//! does not speak ends the attempt before any memory moves, and the VM
//! runs on.

use std::io::Write as _;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tern_migrate::wire::{self, Kind};
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

/// Answers one control connection as a destination that speaks only
/// `version` would when offered another: its preamble, a refusing
/// `Welcome`, close. Returns the version the source offered.
fn refuse_as(l: &TcpListener, version: u32) -> u32 {
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let offered = wire::read_preamble(&mut s).unwrap();
    wire::write_preamble(&mut s, version).unwrap();
    let refusal = wire::Welcome {
        accepted: false,
        error: format!(
            "peer speaks migration protocol {offered}, this build {version}..={version}"
        ),
        ..Default::default()
    };
    // Best effort, as a real one: the source may have gone already.
    let _ = wire::write_msg(&mut s, Kind::Welcome, &refusal);
    offered
}

#[test]
fn an_older_destination_is_offered_its_own_version_and_the_vm_moves() {
    let name = "an_older_destination_is_offered_its_own_version_and_the_vm_moves";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let (vm, cfg) = source();
    wait_generation(&vm, 1);
    let listener = Listener::bind(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let to = listener.local().unwrap();
    let expect = tern_migrate::config_check(&cfg);
    let old = tern_migrate::MIN_PROTOCOL_VERSION;
    let logged = Mutex::new(Vec::<String>::new());
    let progress = Progress::default();
    let (offers, dest) = std::thread::scope(|s| {
        let d = s.spawn(|| {
            let Listener::Tcp(l) = &listener else {
                unreachable!("bound on TCP")
            };
            let first = refuse_as(l, old);
            // The second attempt: a destination of this build, which
            // speaks the older version too.
            let mut r = tern_migrate::receive(&listener, &expect, None, &|m| {
                logged.lock().unwrap().push(m.to_string())
            })
            .unwrap();
            let mut dcfg = cfg.clone();
            dcfg.memory_source = r.memory.clone();
            let vm = Vm::restore(dcfg, VmHooks::default(), &r.state).unwrap();
            r.await_commit().unwrap();
            vm.start().unwrap();
            r.confirm().unwrap();
            (first, vm)
        });
        let r = tern_migrate::migrate(&vm, &MigrateOptions::new(to.clone()), &progress);
        if r.is_err() {
            // Wake a destination still waiting for the second attempt.
            let tern_migrate::Endpoint::Tcp(addr) = &to else {
                unreachable!("TCP")
            };
            let _ = std::net::TcpStream::connect(addr).and_then(|mut s| s.write_all(b"GET /\r\n"));
        }
        let d = d.join();
        r.unwrap();
        d.unwrap()
    });
    assert_eq!(offers, tern_migrate::PROTOCOL_VERSION, "first offer");
    assert_eq!(progress.snapshot().protocol, old);
    let accepted = logged.lock().unwrap().join("\n");
    assert!(
        accepted.contains(&format!("accepted (protocol {old})")),
        "{accepted}"
    );
    // The VM runs at the destination, paused here.
    assert_eq!(vm.state(), RunState::Paused);
    let g = generation(&dest);
    wait_generation(&dest, g + 1);
    for v in [vm, dest] {
        v.request_stop();
        v.wait();
    }
}

#[test]
fn a_destination_of_an_unspoken_version_is_refused_and_the_vm_runs_on() {
    let name = "a_destination_of_an_unspoken_version_is_refused_and_the_vm_runs_on";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let (vm, _) = source();
    wait_generation(&vm, 1);
    for answer in [
        tern_migrate::MIN_PROTOCOL_VERSION - 1,
        tern_migrate::PROTOCOL_VERSION + 1,
    ] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = format!("tcp:{}", l.local_addr().unwrap()).parse().unwrap();
        let d = std::thread::spawn(move || {
            let offered = refuse_as(&l, answer);
            // No second attempt comes.
            l.set_nonblocking(true).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            assert!(l.accept().is_err(), "the source tried again");
            offered
        });
        let err = tern_migrate::migrate(&vm, &MigrateOptions::new(to), &Progress::default())
            .expect_err("no version in common");
        assert!(matches!(err, MigrateError::Incompatible(_)), "{err}");
        assert_eq!(d.join().unwrap(), tern_migrate::PROTOCOL_VERSION);
        assert_eq!(vm.state(), RunState::Running, "{err}");
    }
    let g = generation(&vm);
    wait_generation(&vm, g + 1);
    vm.request_stop();
    vm.wait();
}
