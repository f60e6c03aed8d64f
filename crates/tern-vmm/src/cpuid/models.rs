//! CPU models: which of KVM's supported features a guest is shown.
//!
//! `host` shows everything KVM offers (normalized). `compat` is a fixed
//! baseline every x86-64 KVM host of the last decade can offer, for VMs
//! that must move between hosts with different CPUs (Hyper-V's processor
//! compatibility mode, QEMU's `x86-64-v2`): the x86-64-v2 instruction set
//! (SSE3, SSSE3, SSE4.1, SSE4.2, POPCNT, CMPXCHG16B, LAHF/SAHF in long
//! mode), the features KVM emulates in software on every host (x2APIC,
//! TSC deadline timer, ARAT) and KVM's basic paravirtual features
//! (kvmclock, steal time, PV EOI, PV unhalt, PV TLB flush, PV IPIs). No
//! XSAVE (so no AVX), no leaf 7 features, no PMU, no SVM/VMX, no invariant
//! TSC. docs/cpu-models.md lists it register by register.

use super::{find_mut, CpuidEntry, Reg};

/// One register of the compat baseline: the bits allowed to stay.
pub struct Allowed {
    /// Leaf.
    pub function: u32,
    /// Subleaf.
    pub index: u32,
    /// Register.
    pub reg: Reg,
    /// Bits kept (when KVM offers them).
    pub mask: u32,
}

const fn a(function: u32, index: u32, reg: Reg, mask: u32) -> Allowed {
    Allowed {
        function,
        index,
        reg,
        mask,
    }
}

/// The compat model's feature registers. A feature register not listed
/// here is cleared.
pub const COMPAT: &[Allowed] = &[
    // SSE3, SSSE3, CX16, SSE4.1, SSE4.2, x2APIC, POPCNT, TSC-deadline,
    // hypervisor.
    a(0x1, 0, Reg::Ecx, 0x81b8_2201),
    // FPU..SSE2 as every x86-64 CPU has them, HTT (set by the topology).
    a(0x1, 0, Reg::Edx, 0x178b_fbff),
    // ARAT.
    a(0x6, 0, Reg::Eax, 1 << 2),
    // LAHF/SAHF in long mode (CmpLegacy is the topology's).
    a(0x8000_0001, 0, Reg::Ecx, 0x3),
    // SYSCALL, NX, LM.
    a(0x8000_0001, 0, Reg::Edx, (1 << 11) | (1 << 20) | (1 << 29)),
    // kvmclock, NOP I/O delay, kvmclock2, steal time, PV EOI, PV unhalt,
    // PV TLB flush, PV send IPI, kvmclock stable bit.
    a(0x4000_0001, 0, Reg::Eax, 0x0100_0aeb),
];

/// Leaves the compat model keeps (informational ones whole, feature ones
/// masked by [`COMPAT`]); every other leaf is removed.
const COMPAT_LEAVES: &[u32] = &[
    0x0,
    0x1,
    0x2,
    0x4,
    0x6,
    0x7,
    0xb,
    0xd,
    0x1f,
    0x4000_0000,
    0x4000_0001,
    0x8000_0000,
    0x8000_0001,
    0x8000_0002,
    0x8000_0003,
    0x8000_0004,
    0x8000_0005,
    0x8000_0006,
    0x8000_0007,
    0x8000_0008,
];

/// Registers of the kept leaves that carry features and are cleared in
/// compat unless [`COMPAT`] allows bits of them.
const COMPAT_CLEARED: &[(u32, u32, Reg)] = &[
    (0x1, 0, Reg::Ecx),
    (0x1, 0, Reg::Edx),
    (0x6, 0, Reg::Eax),
    (0x6, 0, Reg::Ecx),
    (0x7, 0, Reg::Eax),
    (0x7, 0, Reg::Ebx),
    (0x7, 0, Reg::Ecx),
    (0x7, 0, Reg::Edx),
    (0x8000_0001, 0, Reg::Ecx),
    (0x8000_0001, 0, Reg::Edx),
    (0x8000_0007, 0, Reg::Edx),
    (0x8000_0008, 0, Reg::Ebx),
    (0x4000_0001, 0, Reg::Eax),
    (0x4000_0001, 0, Reg::Edx),
];

/// Reduces `entries` to the compat baseline.
pub fn apply_compat(entries: &mut Vec<CpuidEntry>) {
    entries.retain(|e| COMPAT_LEAVES.contains(&e.function) && !(e.function == 0x7 && e.index > 0));
    for &(function, index, reg) in COMPAT_CLEARED {
        let allowed = COMPAT
            .iter()
            .find(|a| a.function == function && a.index == index && a.reg == reg)
            .map_or(0, |a| a.mask);
        if let Some(e) = find_mut(entries, function, index) {
            *e.reg_mut(reg) &= allowed;
        }
    }
}
