//! Capturing and restoring a paused VM's CPU and device state.
//!
//! The encoded types live in [`proto`]; this module moves state between
//! them and KVM. Memory contents are not part of [`VmState`]: saving writes
//! them to a file, migration streams them.

pub mod compat;
pub mod proto;
pub mod time;

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub use proto::VmState;

/// Errors capturing or restoring state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM ioctl failed.
    #[error("KVM: cannot {what}")]
    Kvm {
        /// What was attempted.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A KVM structure in the state has the wrong size.
    #[error("saved {what} is {len} bytes, expected {expected}")]
    BadBlob {
        /// Which structure.
        what: &'static str,
        /// Size found.
        len: usize,
        /// Size required.
        expected: usize,
    },
    /// A required part is missing.
    #[error("saved state has no {0}")]
    Missing(&'static str),
    /// The state does not fit the VM being restored.
    #[error("saved state does not match this VM: {0}")]
    Mismatch(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Kvm { what, source }
}

fn blob<T: IntoBytes + Immutable>(v: &T) -> Vec<u8> {
    v.as_bytes().to_vec()
}

fn unblob<T: FromBytes>(what: &'static str, b: &[u8]) -> Result<T, StateError> {
    T::read_from_bytes(b).map_err(|_| StateError::BadBlob {
        what,
        len: b.len(),
        expected: std::mem::size_of::<T>(),
    })
}

/// The MSRs of this host's KVM that can actually be read back.
pub fn readable_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, StateError> {
    let list = kvm.get_msr_index_list().map_err(kvm_err("list MSRs"))?;
    let mut candidates: Vec<u32> = list.as_slice().to_vec();
    let mut readable = Vec::with_capacity(candidates.len());
    // KVM_GET_MSRS stops at the first MSR it cannot read and returns how
    // many it did: keep those, drop the failing one, go on.
    while !candidates.is_empty() {
        let (n, _) = read_msrs(vcpu, &candidates)?;
        readable.extend_from_slice(&candidates[..n]);
        candidates.drain(..(n + 1).min(candidates.len()));
    }
    Ok(readable)
}

/// One KVM_GET_MSRS for `indices`: how many were read (KVM stops at the
/// first it cannot read) and their values.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<(usize, Msrs), StateError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries)
        .map_err(|_| StateError::Mismatch("too many MSRs for one KVM_GET_MSRS".into()))?;
    let n = vcpu.get_msrs(&mut msrs).map_err(kvm_err("read MSRs"))?;
    Ok((n, msrs))
}

/// Captures one (stopped) vCPU.
pub fn save_vcpu(
    vcpu: &VcpuFd,
    id: u32,
    msr_indices: &[u32],
    parked: bool,
) -> Result<proto::VcpuState, StateError> {
    let r = vcpu.get_regs().map_err(kvm_err("read registers"))?;
    let (n, msrs) = read_msrs(vcpu, msr_indices)?;
    if n != msr_indices.len() {
        return Err(StateError::Mismatch(format!(
            "read {n} of {} MSRs",
            msr_indices.len()
        )));
    }
    Ok(proto::VcpuState {
        id,
        regs: Some(proto::Regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }),
        sregs: blob(
            &vcpu
                .get_sregs()
                .map_err(kvm_err("read special registers"))?,
        ),
        xsave: blob(&vcpu.get_xsave().map_err(kvm_err("read XSAVE state"))?),
        xcrs: blob(&vcpu.get_xcrs().map_err(kvm_err("read XCRs"))?),
        lapic: blob(&vcpu.get_lapic().map_err(kvm_err("read the local APIC"))?),
        msrs: msrs
            .as_slice()
            .iter()
            .map(|m| proto::Msr {
                index: m.index,
                value: m.data,
            })
            .collect(),
        events: blob(
            &vcpu
                .get_vcpu_events()
                .map_err(kvm_err("read vCPU events"))?,
        ),
        mp_state: vcpu
            .get_mp_state()
            .map_err(kvm_err("read MP state"))?
            .mp_state,
        parked,
    })
}

/// Restores one vCPU (created, CPUID set, not yet run).
pub fn restore_vcpu(vcpu: &VcpuFd, s: &proto::VcpuState) -> Result<(), StateError> {
    let r = s.regs.as_ref().ok_or(StateError::Missing("registers"))?;
    let sregs: kvm_sregs = unblob("special registers", &s.sregs)?;
    let xsave: kvm_xsave = unblob("XSAVE state", &s.xsave)?;
    let xcrs: kvm_xcrs = unblob("XCRs", &s.xcrs)?;
    let lapic: kvm_lapic_state = unblob("local APIC", &s.lapic)?;
    let events: kvm_vcpu_events = unblob("vCPU events", &s.events)?;
    // Order matters: mode (sregs, EFER) before MSRs; the APIC after sregs
    // (apic_base); pending events last.
    vcpu.set_mp_state(kvm_mp_state {
        mp_state: s.mp_state,
    })
    .map_err(kvm_err("set MP state"))?;
    vcpu.set_sregs(&sregs)
        .map_err(kvm_err("set special registers"))?;
    vcpu.set_regs(&kvm_regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    })
    .map_err(kvm_err("set registers"))?;
    // SAFETY: `xsave` is a full `kvm_xsave` read back from KVM_GET_XSAVE
    // (size checked by `unblob`); KVM validates its contents.
    unsafe { vcpu.set_xsave(&xsave) }.map_err(kvm_err("set XSAVE state"))?;
    vcpu.set_xcrs(&xcrs).map_err(kvm_err("set XCRs"))?;
    let entries: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .map(|m| kvm_msr_entry {
            index: m.index,
            data: m.value,
            ..Default::default()
        })
        .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|_| StateError::Mismatch("too many MSRs".into()))?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
    if n != entries.len() {
        return Err(StateError::Mismatch(format!(
            "this host accepted {n} of {} MSRs (first refused: {:#x})",
            entries.len(),
            entries[n].index
        )));
    }
    vcpu.set_lapic(&lapic)
        .map_err(kvm_err("set the local APIC"))?;
    vcpu.set_vcpu_events(&events)
        .map_err(kvm_err("set vCPU events"))?;
    Ok(())
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// Captures VM-wide KVM state (interrupt controllers, PIT, clock) into `s`.
pub fn save_vm(fd: &VmFd, s: &mut VmState) -> Result<(), StateError> {
    s.irqchips.clear();
    for chip_id in CHIPS {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        fd.get_irqchip(&mut chip)
            .map_err(kvm_err("read the interrupt controllers"))?;
        s.irqchips.push(blob(&chip));
    }
    s.pit = blob(&fd.get_pit2().map_err(kvm_err("read the PIT"))?);
    let clock = fd.get_clock().map_err(kvm_err("read the clock"))?;
    s.clock = clock.clock;
    s.clock_flags = clock.flags;
    Ok(())
}

/// Restores VM-wide KVM state from `s`.
pub fn restore_vm(fd: &VmFd, s: &VmState) -> Result<(), StateError> {
    if s.irqchips.len() != CHIPS.len() {
        return Err(StateError::Missing("interrupt controller state"));
    }
    let pit: kvm_pit_state2 = unblob("PIT", &s.pit)?;
    fd.set_pit2(&pit).map_err(kvm_err("set the PIT"))?;
    // Only the clock value is restored; flags like TSC_STABLE describe the
    // host and are KVM's to set.
    fd.set_clock(&kvm_clock_data {
        clock: s.clock,
        ..Default::default()
    })
    .map_err(kvm_err("set the clock"))?;
    for (want, bytes) in CHIPS.iter().zip(&s.irqchips) {
        let chip: kvm_irqchip = unblob("interrupt controller", bytes)?;
        if chip.chip_id != *want {
            return Err(StateError::Mismatch(format!(
                "interrupt controller {} where {want} was expected",
                chip.chip_id
            )));
        }
        fd.set_irqchip(&chip)
            .map_err(kvm_err("set the interrupt controllers"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn wrong_sized_blobs_are_refused_not_misread() {
        let e = unblob::<kvm_sregs>("special registers", &[0u8; 7]).unwrap_err();
        assert!(e.to_string().contains("is 7 bytes"), "{e}");
        let ok: kvm_sregs = unblob("x", &blob(&kvm_sregs::default())).unwrap();
        assert_eq!(ok.cr0, 0);
    }

    #[test]
    fn vm_state_round_trips_through_protobuf() {
        let s = VmState {
            vcpus: vec![proto::VcpuState {
                id: 3,
                regs: Some(proto::Regs {
                    rip: 0x20_0000,
                    ..Default::default()
                }),
                msrs: vec![proto::Msr {
                    index: 0x10,
                    value: 99,
                }],
                parked: true,
                ..Default::default()
            }],
            clock: 12345,
            probe: true,
            ..Default::default()
        };
        let bytes = s.encode_to_vec();
        assert_eq!(VmState::decode(bytes.as_slice()).unwrap(), s);
    }
}
