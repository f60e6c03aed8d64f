//! Guest time across restore and migration: the TSC and kvmclock continue
//! from the values saved, whatever the new host's own TSC reads.
//!
//! KVM offers three ways to set a vCPU's TSC: a host-initiated write of
//! IA32_TSC (`KVM_SET_MSRS`, done with the other MSRs by
//! [`super::restore_vcpu`]), the vCPU attribute `KVM_VCPU_TSC_OFFSET`
//! (Linux 5.16+), and, for kvmclock, `KVM_SET_CLOCK`. After all of them,
//! [`continue_tsc`] reads every vCPU's IA32_TSC back: a host that ignored
//! both ways (measured on KVM PVM, which keeps the offset at 0, so a CPL-3
//! `rdtsc` reads the host's TSC) is reported, not assumed away; the guest
//! then sees its TSC jump (see `docs/saved-state.md`).

use super::{kvm_err, StateError, VmState};
use kvm_bindings::{kvm_device_attr, kvm_msr_entry, Msrs, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET};
use kvm_ioctls::{VcpuFd, VmFd};

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;

/// The vCPU device-attribute ioctls (kvm-ioctls wraps them for aarch64
/// only).
mod ioctls {
    #![allow(missing_docs)]
    use kvm_bindings::kvm_device_attr;
    use vmm_sys_util::ioctl_iow_nr;

    ioctl_iow_nr!(
        KVM_SET_DEVICE_ATTR,
        kvm_bindings::KVMIO,
        0xe1,
        kvm_device_attr
    );
    ioctl_iow_nr!(
        KVM_GET_DEVICE_ATTR,
        kvm_bindings::KVMIO,
        0xe2,
        kvm_device_attr
    );
    ioctl_iow_nr!(
        KVM_HAS_DEVICE_ATTR,
        kvm_bindings::KVMIO,
        0xe3,
        kvm_device_attr
    );
}
use ioctls::{KVM_GET_DEVICE_ATTR, KVM_HAS_DEVICE_ATTR, KVM_SET_DEVICE_ATTR};

/// How far (in TSC ticks at the saved frequency) a vCPU's TSC may read from
/// the saved value and still count as continued: the probe guest's clock
/// takes out jumps above a second, so below that the guest sees none.
fn tolerance(tsc_khz: u64) -> u64 {
    match tsc_khz.saturating_mul(1000) {
        0 => 3_000_000_000,
        hz => hz,
    }
}

/// What KVM did with the saved guest TSC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscRestore {
    /// The state carries no IA32_TSC: nothing to continue.
    NotSaved,
    /// Every vCPU's TSC reads the saved value (within a second).
    Continued {
        /// Which interface made it so.
        via: TscMethod,
    },
    /// The host kept the guest's TSC tied to its own: the guest sees its
    /// TSC jump from `wanted` to `found` (ticks, read on vCPU `vcpu`).
    NotHonoured {
        /// The vCPU read.
        vcpu: u32,
        /// The saved TSC.
        wanted: u64,
        /// What the vCPU's TSC reads after every attempt.
        found: u64,
    },
}

/// The interface that continued the TSC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscMethod {
    /// The host-initiated IA32_TSC write (`KVM_SET_MSRS`).
    Msr,
    /// The `KVM_VCPU_TSC_OFFSET` vCPU attribute, one offset for all vCPUs.
    OffsetAttribute,
}

/// What KVM did with the saved kvmclock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockRestore {
    /// kvmclock reads the saved value (within a second).
    Continued,
    /// kvmclock reads `found` ns instead of the saved `wanted` ns.
    NotHonoured {
        /// The saved kvmclock (ns).
        wanted: u64,
        /// What it reads now (ns).
        found: u64,
    },
}

/// Guest time after a restore: TSC and kvmclock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRestore {
    /// The TSC.
    pub tsc: TscRestore,
    /// kvmclock.
    pub kvmclock: ClockRestore,
}

impl TimeRestore {
    /// Whether the guest sees its time continue (nothing jumped).
    pub fn continued(&self) -> bool {
        !matches!(self.tsc, TscRestore::NotHonoured { .. })
            && self.kvmclock == ClockRestore::Continued
    }
}

/// The saved IA32_TSC of vCPU `index`, if the state has one.
pub fn saved_tsc(st: &VmState, index: usize) -> Option<u64> {
    st.vcpus
        .get(index)?
        .msrs
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .map(|m| m.value)
}

/// Reads a vCPU's IA32_TSC now.
pub fn read_tsc(vcpu: &VcpuFd) -> Result<u64, StateError> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .map_err(|_| StateError::Mismatch("cannot build a one-MSR list".into()))?;
    let n = vcpu.get_msrs(&mut msrs).map_err(kvm_err("read IA32_TSC"))?;
    if n != 1 {
        return Err(StateError::Missing("readable IA32_TSC on this host"));
    }
    Ok(msrs.as_slice()[0].data)
}

/// Signed distance from `wanted` to `found`, as the magnitude of the gap.
fn gap(found: u64, wanted: u64) -> u64 {
    (found.wrapping_sub(wanted) as i64).unsigned_abs()
}

/// The first vCPU whose TSC is more than the tolerance from the saved one:
/// (index, what it reads).
fn first_off(
    vcpus: &[&VcpuFd],
    st: &VmState,
    tol: u64,
) -> Result<Option<(u32, u64, u64)>, StateError> {
    for (i, v) in vcpus.iter().enumerate() {
        let Some(wanted) = saved_tsc(st, i).or_else(|| saved_tsc(st, 0)) else {
            continue;
        };
        let found = read_tsc(v)?;
        if gap(found, wanted) > tol {
            return Ok(Some((i as u32, wanted, found)));
        }
    }
    Ok(None)
}

fn attr(addr: u64) -> kvm_device_attr {
    kvm_device_attr {
        flags: 0,
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr,
    }
}

/// Whether this vCPU has the TSC offset attribute.
fn has_offset_attr(vcpu: &VcpuFd) -> bool {
    let a = attr(0);
    // SAFETY: KVM_HAS_DEVICE_ATTR only reads the `kvm_device_attr` passed,
    // which lives across the call; the fd is a vCPU fd.
    unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_HAS_DEVICE_ATTR(), &a) == 0 }
}

fn get_offset(vcpu: &VcpuFd) -> Result<u64, StateError> {
    let mut off: u64 = 0;
    let a = attr(std::ptr::addr_of_mut!(off) as u64);
    // SAFETY: for KVM_VCPU_TSC_OFFSET, KVM writes one u64 at `a.addr`,
    // which points at `off`, alive across the call.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_GET_DEVICE_ATTR(), &a) };
    if r != 0 {
        return Err(StateError::Kvm {
            what: "read the TSC offset",
            source: kvm_ioctls::Error::last(),
        });
    }
    Ok(off)
}

fn set_offset(vcpu: &VcpuFd, off: u64) -> Result<(), StateError> {
    let a = attr(std::ptr::addr_of!(off) as u64);
    // SAFETY: for KVM_VCPU_TSC_OFFSET, KVM reads one u64 at `a.addr`, which
    // points at `off`, alive across the call.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_SET_DEVICE_ATTR(), &a) };
    if r != 0 {
        return Err(StateError::Kvm {
            what: "set the TSC offset",
            source: kvm_ioctls::Error::last(),
        });
    }
    Ok(())
}

/// Sets every vCPU's TSC frequency to the saved one where it differs (a
/// host with TSC scaling honours it; elsewhere the guest's TSC runs at this
/// host's rate, which is reported). Call before the MSRs are restored: the
/// frequency changes what an IA32_TSC write means.
pub fn continue_tsc_rate(vcpus: &[&VcpuFd], st: &VmState) {
    if st.tsc_khz == 0 {
        return;
    }
    for (i, v) in vcpus.iter().enumerate() {
        let Ok(here) = v.get_tsc_khz() else { return };
        let here = u64::from(here);
        // KVM's own tolerance for "the same frequency" is 250 ppm.
        if here.abs_diff(st.tsc_khz) * 4000 <= st.tsc_khz {
            continue;
        }
        let Ok(khz) = u32::try_from(st.tsc_khz) else {
            tracing::warn!(saved = st.tsc_khz, "saved TSC frequency out of range");
            return;
        };
        if let Err(e) = v.set_tsc_khz(khz) {
            tracing::warn!(
                vcpu = i,
                saved_khz = st.tsc_khz,
                host_khz = here,
                error = %e,
                "this host cannot run the guest's TSC at its saved rate"
            );
        }
    }
}

/// Continues the guest's TSC on every vCPU after [`super::restore_vcpu`]
/// wrote the saved IA32_TSC: where that write was not honoured, one TSC
/// offset (vCPU 0's saved value minus what it reads) is applied to all
/// vCPUs through `KVM_VCPU_TSC_OFFSET`; then every vCPU is read back.
pub fn continue_tsc(vcpus: &[&VcpuFd], st: &VmState) -> Result<TscRestore, StateError> {
    let (Some(first), Some(wanted)) = (vcpus.first(), saved_tsc(st, 0)) else {
        return Ok(TscRestore::NotSaved);
    };
    let tol = tolerance(st.tsc_khz);
    let Some(off) = first_off(vcpus, st, tol)? else {
        return Ok(TscRestore::Continued {
            via: TscMethod::Msr,
        });
    };
    if vcpus.iter().all(|v| has_offset_attr(v)) {
        // The guest reads host TSC + offset: move the offset by what vCPU 0
        // is off, the same for every vCPU, so they stay in step.
        let now = read_tsc(first)?;
        let offset = get_offset(first)?.wrapping_add(wanted.wrapping_sub(now));
        for v in vcpus {
            set_offset(v, offset)?;
        }
        return Ok(match first_off(vcpus, st, tol)? {
            None => TscRestore::Continued {
                via: TscMethod::OffsetAttribute,
            },
            Some((vcpu, wanted, found)) => TscRestore::NotHonoured {
                vcpu,
                wanted,
                found,
            },
        });
    }
    let (vcpu, wanted, found) = off;
    Ok(TscRestore::NotHonoured {
        vcpu,
        wanted,
        found,
    })
}

/// Checks kvmclock against the saved value after `KVM_SET_CLOCK` (and after
/// the TSC offsets moved, which can move kvmclock's master clock).
pub fn check_kvmclock(fd: &VmFd, st: &VmState) -> Result<ClockRestore, StateError> {
    let found = fd.get_clock().map_err(kvm_err("read the clock"))?.clock;
    Ok(if gap(found, st.clock) <= 1_000_000_000 {
        ClockRestore::Continued
    } else {
        ClockRestore::NotHonoured {
            wanted: st.clock,
            found,
        }
    })
}

/// Continues TSC and kvmclock on a VM whose VM-wide and vCPU state were
/// just restored from `st`, and logs what the host did not honour.
pub fn continue_time(
    fd: &VmFd,
    vcpus: &[&VcpuFd],
    st: &VmState,
) -> Result<TimeRestore, StateError> {
    let tsc = continue_tsc(vcpus, st)?;
    let kvmclock = check_kvmclock(fd, st)?;
    let out = TimeRestore { tsc, kvmclock };
    if let TscRestore::NotHonoured {
        vcpu,
        wanted,
        found,
    } = tsc
    {
        tracing::warn!(
            vcpu,
            saved_tsc = wanted,
            guest_tsc = found,
            jump_ticks = found.wrapping_sub(wanted) as i64,
            "this host's KVM does not let the VMM set the guest's TSC: the guest sees it jump"
        );
    }
    if let ClockRestore::NotHonoured { wanted, found } = kvmclock {
        tracing::warn!(
            saved_ns = wanted,
            kvmclock_ns = found,
            "kvmclock did not continue from the saved value"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_is_symmetric_and_wraps() {
        assert_eq!(gap(10, 3), 7);
        assert_eq!(gap(3, 10), 7);
        assert_eq!(gap(0, u64::MAX), 1);
    }

    #[test]
    fn the_saved_tsc_is_found_per_vcpu() {
        let st = VmState {
            vcpus: vec![super::super::proto::VcpuState {
                msrs: vec![super::super::proto::Msr {
                    index: MSR_IA32_TSC,
                    value: 42,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(saved_tsc(&st, 0), Some(42));
        assert_eq!(saved_tsc(&st, 1), None);
    }
}
