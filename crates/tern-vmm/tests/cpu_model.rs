//! CPU models end to end with the probe guest: the model and the CPUID the
//! guest saw go into the saved state, and a restore onto a host that
//! cannot offer a saved feature is refused by name. Need /dev/kvm (loud
//! SKIP otherwise) and the built probe guest.

use std::time::{Duration, Instant};

use tern_vmm::cpuid::{CpuModel, CpuidError, GuestCpuid};
use tern_vmm::{Guest, Vm, VmConfig, VmError, VmHooks};

const WORKLOAD: &str = "dirty,mib=4";

fn config(model: CpuModel) -> VmConfig {
    let mut cfg = VmConfig::new(
        1,
        64 << 20,
        Guest::Probe {
            image: tern_test_support::probe_guest(),
            workload: WORKLOAD.into(),
        },
    );
    cfg.serial = tern_devices::serial::SerialMode::Null;
    cfg.cpu_model = model;
    cfg
}

/// Runs a probe VM of `model` a little, pauses it and returns its state.
fn saved(model: CpuModel) -> tern_vmm::VmState {
    let vm = Vm::create(config(model), VmHooks::default()).expect("create VM");
    vm.start().expect("start VM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while vm.probe_status().unwrap().generation < 1 {
        assert!(Instant::now() < deadline, "the probe made no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    vm.pause().unwrap();
    let state = vm.save_state().unwrap();
    vm.request_stop();
    vm.wait();
    state
}

#[test]
fn the_saved_state_records_the_model_and_its_cpuid() {
    if !tern_test_support::kvm_available("the_saved_state_records_the_model_and_its_cpuid") {
        return;
    }
    let host = GuestCpuid::from_proto(saved(CpuModel::Host).cpu.as_ref().unwrap()).unwrap();
    let compat = GuestCpuid::from_proto(saved(CpuModel::Compat).cpu.as_ref().unwrap()).unwrap();
    assert_eq!(
        (host.model, compat.model),
        (CpuModel::Host, CpuModel::Compat)
    );
    let l7 = compat.get(7, 0).map_or(0, |e| e.ebx | e.ecx | e.edx);
    assert_eq!(l7, 0, "compat shows no leaf-7 features");
    // Compat's leaf 1 is host's reduced to the baseline.
    let (h, c) = (host.get(1, 0).unwrap(), compat.get(1, 0).unwrap());
    assert_eq!(c.ecx & !h.ecx, 0);
    assert_eq!(c.ecx & !0x81b8_2201, 0);
    // What a compat guest saw, a host-model build of this host offers.
    compat.check_offered(&host).unwrap();
}

#[test]
fn a_restore_needing_features_this_host_lacks_is_refused_by_name() {
    if !tern_test_support::kvm_available(
        "a_restore_needing_features_this_host_lacks_is_refused_by_name",
    ) {
        return;
    }
    let mut state = saved(CpuModel::Host);
    // As if saved on a host with every leaf-7 EBX feature: no host has all
    // of them (some bits are reserved).
    let cpu = state.cpu.as_mut().unwrap();
    let l7 = cpu
        .cpuid
        .iter_mut()
        .find(|e| e.function == 7 && e.index == 0)
        .unwrap();
    l7.ebx = u32::MAX;
    let e = Vm::restore(config(CpuModel::Host), VmHooks::default(), &state)
        .err()
        .expect("a CPU this host cannot offer is refused");
    match &e {
        VmError::Cpuid(CpuidError::NotOffered { model, missing }) => {
            assert_eq!(*model, CpuModel::Host);
            assert!(!missing.is_empty());
        }
        other => panic!("unexpected error: {other}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("cannot offer") && text.contains("missing"),
        "{text}"
    );
    // A state from before CPU models (no CPUID saved) restores as then.
    let mut old = saved(CpuModel::Host);
    old.cpu = None;
    let vm = Vm::restore(config(CpuModel::Host), VmHooks::default(), &old).unwrap();
    drop(vm);
}
