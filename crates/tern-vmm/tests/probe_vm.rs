//! VMM tests with the probe guest: dirty tracking is exact, pause stops the
//! guest, vCPUs all run, crashes are reported. Need /dev/kvm (loud SKIP
//! otherwise) and the built probe guest (`cargo build --workspace`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tern_probe_abi::stamp::{data_page_addr, touch_page};
use tern_probe_abi::{phase, stack_top, PAGE_SIZE, STACK_SIZE, STATUS_ADDR, STATUS_MAGIC};
use tern_vmm::{Guest, Vm, VmConfig, VmExit, VmHooks};

fn probe_vm(vcpus: u32, memory: u64, workload: &str) -> Vm {
    let cfg = VmConfig {
        serial: tern_devices::serial::SerialMode::Null,
        ..VmConfig::new(
            vcpus,
            memory,
            Guest::Probe {
                image: tern_test_support::probe_guest(),
                workload: workload.into(),
            },
        )
    };
    let vm = Vm::create(cfg, VmHooks::default()).expect("create VM");
    vm.start().expect("start VM");
    vm
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn dirty_log_holds_exactly_the_pages_the_guest_wrote() {
    if !tern_test_support::kvm_available("dirty_log_holds_exactly_the_pages_the_guest_wrote") {
        return;
    }
    const PAGES: u64 = 64;
    const SPAN_MIB: u64 = 16;
    const SEED: u64 = 7;
    let vm = probe_vm(
        1,
        64 << 20,
        &format!("touch,pages={PAGES},span={SPAN_MIB},seed={SEED}"),
    );
    wait_until("the touch step", Duration::from_secs(10), || {
        let s = vm.probe_status().unwrap();
        s.magic == STATUS_MAGIC && s.phase == phase::RUNNING
    });
    // A first round proves the guest is inside the step's idle loop (phase
    // RUNNING is published just before the step starts).
    vm.probe_touch(1).unwrap();
    wait_until("the first touch round", Duration::from_secs(10), || {
        vm.probe_status().unwrap().touch_rounds == 1
    });
    vm.start_dirty_log().unwrap();
    // Idle, the guest only polls: nothing may be dirtied.
    std::thread::sleep(Duration::from_millis(100));
    let idle = vm.read_dirty_log().unwrap();
    assert_eq!(
        idle.count(),
        0,
        "idle guest dirtied {:x?}",
        idle.pages().collect::<Vec<_>>()
    );

    let regions = vm.ram().regions.clone();
    let span_pages = SPAN_MIB * (1 << 20) / PAGE_SIZE;
    let stack: BTreeSet<u64> = (stack_top(0) - STACK_SIZE..stack_top(0))
        .step_by(PAGE_SIZE as usize)
        .collect();
    for round in 2..=4u64 {
        vm.probe_touch(round).unwrap();
        wait_until("the touch round", Duration::from_secs(10), || {
            vm.probe_status().unwrap().touch_rounds == round
        });
        let dirty: BTreeSet<u64> = vm.read_dirty_log().unwrap().pages().collect();
        let expected: BTreeSet<u64> = (0..PAGES)
            .map(|i| data_page_addr(&regions, touch_page(SEED, round, i, span_pages)).unwrap())
            .collect();
        let data: BTreeSet<u64> = dirty
            .iter()
            .copied()
            .filter(|&p| p >= tern_probe_abi::DATA_BASE)
            .collect();
        assert_eq!(data, expected, "round {round}: data pages differ");
        // Outside the data area only the status page (written by the VMM and
        // the guest) and the guest's own stack may be dirty.
        assert!(
            dirty.contains(&STATUS_ADDR),
            "round {round}: status page missing"
        );
        for p in dirty.difference(&expected) {
            assert!(
                *p == STATUS_ADDR || stack.contains(p),
                "round {round}: unexpected dirty page {p:#x}"
            );
        }
    }
    vm.probe_stop_step().unwrap();
    assert_eq!(
        vm.wait_timeout(Duration::from_secs(10)),
        Some(VmExit::Guest(0))
    );
}

#[test]
fn pause_freezes_the_guest_and_resume_continues() {
    if !tern_test_support::kvm_available("pause_freezes_the_guest_and_resume_continues") {
        return;
    }
    let vm = probe_vm(2, 128 << 20, "dirty,mib=8,rate=64+verify");
    let progress = |vm: &Vm| {
        let s = vm.probe_status().unwrap();
        (s.generation, s.cursor)
    };
    wait_until("dirty progress", Duration::from_secs(10), || {
        progress(&vm).0 >= 2
    });
    vm.start_dirty_log().unwrap();
    vm.pause().unwrap();
    let _ = vm.read_dirty_log().unwrap();
    let frozen = progress(&vm);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(progress(&vm), frozen, "guest progressed while paused");
    assert_eq!(
        vm.read_dirty_log().unwrap().count(),
        0,
        "pages dirtied while paused"
    );
    vm.resume().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = progress(&vm);
    assert!(
        after > frozen,
        "no progress after resume: {frozen:?} -> {after:?}"
    );
    assert!(vm.read_dirty_log().unwrap().count() > 0);
    vm.probe_stop_step().unwrap();
    assert_eq!(
        vm.wait_timeout(Duration::from_secs(20)),
        Some(VmExit::Guest(0))
    );
    let reports = vm.reports().all();
    assert!(
        reports
            .iter()
            .any(|r| r.starts_with("verify") && r.contains("bad=0")),
        "{reports:?}"
    );
}

#[test]
fn every_vcpu_checks_in() {
    if !tern_test_support::kvm_available("every_vcpu_checks_in") {
        return;
    }
    for n in [1, 2, 4] {
        let vm = probe_vm(n, 64 << 20, "vcpus");
        assert_eq!(
            vm.wait_timeout(Duration::from_secs(20)),
            Some(VmExit::Guest(0)),
            "{n} vCPUs"
        );
        let want = format!("checked_in={n} expected={n}");
        assert!(
            vm.reports().all().iter().any(|r| r.contains(&want)),
            "{n} vCPUs: {:?}",
            vm.reports().all()
        );
    }
}

#[test]
fn stop_request_ends_a_running_guest() {
    if !tern_test_support::kvm_available("stop_request_ends_a_running_guest") {
        return;
    }
    let vm = probe_vm(2, 64 << 20, "dirty,mib=4");
    wait_until("dirty progress", Duration::from_secs(10), || {
        vm.probe_status().unwrap().generation >= 1
    });
    vm.request_stop();
    assert_eq!(
        vm.wait_timeout(Duration::from_secs(10)),
        Some(VmExit::Stopped)
    );
    assert!(vm.pause().is_err(), "a stopped VM cannot be paused");
}

#[test]
fn a_guest_crash_is_reported_with_rip_not_a_hang() {
    if !tern_test_support::kvm_available("a_guest_crash_is_reported_with_rip_not_a_hang") {
        return;
    }
    // An image whose entry executes `ud2`: with no IDT the #UD cannot be
    // delivered, and the VMM must say so instead of hanging.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ud2.elf");
    std::fs::write(&image, ud2_elf()).unwrap();
    let cfg = VmConfig {
        serial: tern_devices::serial::SerialMode::Null,
        ..VmConfig::new(
            1,
            32 << 20,
            Guest::Probe {
                image,
                workload: "hello".into(),
            },
        )
    };
    let vm = Vm::create(cfg, VmHooks::default()).unwrap();
    vm.start().unwrap();
    match vm.wait_timeout(Duration::from_secs(10)) {
        Some(VmExit::Crashed { vcpu, rip, reason }) => {
            assert_eq!(vcpu, 0);
            assert_eq!(rip, 0x20_0000, "{reason}");
        }
        other => panic!("expected a crash, got {other:?}"),
    }
}

/// A minimal ELF64 executable with one PT_LOAD at 0x200000 holding `ud2`.
fn ud2_elf() -> Vec<u8> {
    let mut e = vec![0u8; 0x1000];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // 64-bit
    e[5] = 1; // little endian
    e[6] = 1; // version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = 64;
    e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    e[ph + 8..ph + 16].copy_from_slice(&0x800u64.to_le_bytes()); // offset
    e[ph + 16..ph + 24].copy_from_slice(&0x20_0000u64.to_le_bytes()); // vaddr
    e[ph + 24..ph + 32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // paddr
    e[ph + 32..ph + 40].copy_from_slice(&2u64.to_le_bytes()); // filesz
    e[ph + 40..ph + 48].copy_from_slice(&2u64.to_le_bytes()); // memsz
    e[0x800..0x802].copy_from_slice(&[0x0f, 0x0b]); // ud2
    e
}

#[test]
fn save_then_restore_continues_with_every_page_intact() {
    if !tern_test_support::kvm_available("save_then_restore_continues_with_every_page_intact") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm = probe_vm(2, 96 << 20, "dirty,mib=32,rate=200+verify");
    wait_until("two passes", Duration::from_secs(20), || {
        vm.probe_status().unwrap().generation >= 2
    });
    assert!(
        vm.save_state().is_err(),
        "saving a running VM must be refused"
    );
    vm.pause().unwrap();
    let state = vm.save_state().unwrap();
    let before = vm.probe_status().unwrap();
    let mem_path = dir.path().join("memory");
    let mut f = std::fs::File::create(&mem_path).unwrap();
    vm.ram().save_to(&mut f, &mem_path).unwrap();
    drop(f);
    vm.request_stop();
    assert_eq!(
        vm.wait_timeout(Duration::from_secs(10)),
        Some(VmExit::Stopped)
    );
    drop(vm);
    assert_eq!(state.vcpus.len(), 2);
    assert!(
        state.vcpus[1].parked,
        "vCPU 1 parked itself before the save"
    );

    for lazy in [true, false] {
        let mut cfg = VmConfig::new(
            2,
            96 << 20,
            Guest::Probe {
                image: tern_test_support::probe_guest(),
                workload: "dirty,mib=32,rate=200+verify".into(),
            },
        );
        cfg.serial = tern_devices::serial::SerialMode::Null;
        cfg.memory_source = tern_vmm::MemorySource::File {
            path: mem_path.clone(),
            lazy,
        };
        let vm = Vm::restore(cfg, VmHooks::default(), &state).unwrap();
        let restored = vm.probe_status().unwrap();
        assert_eq!(
            (restored.generation, restored.cursor),
            (before.generation, before.cursor),
            "lazy={lazy}"
        );
        vm.start().unwrap();
        wait_until("progress after restore", Duration::from_secs(20), || {
            vm.probe_status().unwrap().generation > before.generation
        });
        vm.probe_stop_step().unwrap();
        assert_eq!(
            vm.wait_timeout(Duration::from_secs(20)),
            Some(VmExit::Guest(0)),
            "lazy={lazy}: {:?}",
            vm.reports().all()
        );
        assert!(
            vm.reports()
                .all()
                .iter()
                .any(|r| r.starts_with("verify") && r.contains("bad=0")),
            "lazy={lazy}: {:?}",
            vm.reports().all()
        );
    }
}

#[test]
fn restore_refuses_a_state_that_does_not_fit() {
    if !tern_test_support::kvm_available("restore_refuses_a_state_that_does_not_fit") {
        return;
    }
    let vm = probe_vm(1, 64 << 20, "dirty,mib=4");
    wait_until("progress", Duration::from_secs(10), || {
        vm.probe_status().unwrap().generation >= 1
    });
    vm.pause().unwrap();
    let state = vm.save_state().unwrap();
    vm.request_stop();
    vm.wait();
    let image = tern_test_support::probe_guest();
    let guest = Guest::Probe {
        image,
        workload: "dirty,mib=4".into(),
    };
    let e = Vm::restore(
        VmConfig::new(2, 64 << 20, guest.clone()),
        VmHooks::default(),
        &state,
    )
    .err()
    .expect("vCPU count mismatch refused");
    assert!(e.to_string().contains("vCPUs"), "{e}");
    let e = Vm::restore(
        VmConfig::new(1, 128 << 20, guest),
        VmHooks::default(),
        &state,
    )
    .err()
    .expect("memory mismatch refused");
    assert!(e.to_string().contains("memory"), "{e}");
}

/// A save in the middle of guest disk I/O: without the virtio transport's
/// queue state the restored driver's requests would never complete.
#[test]
fn save_and_restore_during_disk_io_keeps_the_virtqueue_going() {
    if !tern_test_support::kvm_available(
        "save_and_restore_during_disk_io_keeps_the_virtqueue_going",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let workload = "blk-iops,secs=3,qd=4,mix=randwrite";
    let config = |source| {
        let mut cfg = VmConfig::new(
            1,
            64 << 20,
            Guest::Probe {
                image: tern_test_support::probe_guest(),
                workload: workload.into(),
            },
        );
        cfg.serial = tern_devices::serial::SerialMode::Null;
        cfg.disks = vec![tern_vmm::devices::DiskConfig {
            path: disk.clone(),
            ..Default::default()
        }];
        cfg.memory_source = source;
        cfg
    };
    let vm = Vm::create(config(tern_vmm::MemorySource::Fresh), VmHooks::default()).unwrap();
    vm.start().unwrap();
    vm.reports()
        .wait_for(Duration::from_secs(10), |r| r.starts_with("blk-iops"))
        .expect("the guest's disk I/O started");
    vm.pause().unwrap();
    let state = vm.save_state().unwrap();
    assert_eq!(state.devices.len(), 1, "the disk's transport is saved");
    let mem_path = dir.path().join("memory");
    let mut f = std::fs::File::create(&mem_path).unwrap();
    vm.ram().save_to(&mut f, &mem_path).unwrap();
    vm.request_stop();
    vm.wait();
    vm.disks().close();
    drop(vm);

    let source = tern_vmm::MemorySource::File {
        path: mem_path,
        lazy: true,
    };
    let vm = Vm::restore(config(source), VmHooks::default(), &state).unwrap();
    vm.start().unwrap();
    let exit = vm.wait_timeout(Duration::from_secs(30));
    let reports = vm.reports().all();
    assert_eq!(exit, Some(VmExit::Guest(0)), "{reports:?}");
    assert!(
        reports
            .iter()
            .any(|r| r.starts_with("blk-iops") && r.contains("result=pass")),
        "{reports:?}"
    );
}
