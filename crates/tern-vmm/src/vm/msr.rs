//! Guest MSR accesses that KVM leaves to Tern.
//!
//! Without this, KVM answers an MSR it does not know with a #GP and, for
//! the performance-counter MSRs of a vCPU without a PMU, ignores the
//! access and logs `Unhandled WRMSR(0xc0010007)` in the host's kernel log
//! (Linux probes the counters at boot). With `KVM_CAP_X86_USER_SPACE_MSR`
//! those accesses exit to Tern instead (`KVM_MSR_EXIT_REASON_UNKNOWN`),
//! and where KVM offers no PMU an MSR filter sends the counter MSRs here
//! too (`KVM_MSR_EXIT_REASON_FILTER`). Tern answers the set in [`ANSWERED`]
//! the way hardware without the feature does (reads 0, writes ignored) and
//! injects a #GP for every other MSR, logging each MSR once. Where the
//! host's KVM lacks the capability (KVM PVM), KVM keeps its own behaviour.

use std::collections::HashSet;
use std::sync::Mutex;

use kvm_bindings::{
    kvm_enable_cap, KVM_CAP_PMU_CAPABILITY, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{
    Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, ReadMsrExit, VmFd,
    WriteMsrExit,
};

/// An MSR range Tern answers: reads 0, writes ignored.
pub struct Answered {
    /// First MSR.
    pub first: u32,
    /// Last MSR (inclusive).
    pub last: u32,
    /// What it is.
    pub what: &'static str,
}

const fn r(first: u32, last: u32, what: &'static str) -> Answered {
    Answered { first, last, what }
}

/// The MSRs Tern answers when KVM does not: performance counters of a
/// vCPU without a PMU (what a CPU whose counters are all disabled reads).
pub const ANSWERED: &[Answered] = &[
    r(
        0xc001_0000,
        0xc001_0003,
        "AMD PERF_CTL0-3 (K7 event selects)",
    ),
    r(0xc001_0004, 0xc001_0007, "AMD PERF_CTR0-3 (K7 counters)"),
    r(
        0xc001_0200,
        0xc001_020b,
        "AMD PERF_CTL/PERF_CTR0-5 (core extension)",
    ),
    r(0x0000_00c1, 0x0000_00c8, "Intel IA32_PMC0-7"),
    r(0x0000_0186, 0x0000_018d, "Intel IA32_PERFEVTSEL0-7"),
    r(0x0000_0309, 0x0000_030b, "Intel IA32_FIXED_CTR0-2"),
    r(
        0x0000_038d,
        0x0000_0390,
        "Intel fixed-counter control and global PMU status/control",
    ),
];

fn answered(index: u32) -> Option<&'static Answered> {
    ANSWERED
        .iter()
        .find(|a| (a.first..=a.last).contains(&index))
}

/// What [`enable`] got from KVM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrExits {
    /// Unknown MSRs exit to Tern.
    pub user_space: bool,
    /// The counter MSRs are filtered to Tern (KVM offers no PMU).
    pub counters_filtered: bool,
}

/// Turns on MSR exits for `fd` where this host's KVM has them; without
/// them KVM keeps handling every MSR itself (logged once).
pub fn enable(kvm: &Kvm, fd: &VmFd) -> MsrExits {
    let mut got = MsrExits {
        user_space: false,
        counters_filtered: false,
    };
    if !kvm.check_extension(Cap::X86UserSpaceMsr) {
        tracing::info!("this host's KVM has no KVM_CAP_X86_USER_SPACE_MSR: KVM answers every MSR");
        return got;
    }
    // KVM_CHECK_EXTENSION(PMU_CAPABILITY) is 0 where KVM virtualizes no PMU.
    let pmu = kvm.check_extension_raw(KVM_CAP_PMU_CAPABILITY.into()) > 0;
    let filter = !pmu && kvm.check_extension(Cap::X86MsrFilter);
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_MSR_EXIT_REASON_UNKNOWN)
        | if filter {
            u64::from(KVM_MSR_EXIT_REASON_FILTER)
        } else {
            0
        };
    if let Err(e) = fd.enable_cap(&cap) {
        tracing::warn!(error = %e, "cannot enable MSR exits: KVM answers every MSR");
        return got;
    }
    got.user_space = true;
    if filter {
        // A bitmap of zeros denies every MSR of a range: denied accesses
        // exit with KVM_MSR_EXIT_REASON_FILTER. Other MSRs stay KVM's.
        let zeros = [0u8; 2];
        let ranges: Vec<MsrFilterRange<'_>> = ANSWERED
            .iter()
            .map(|a| MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base: a.first,
                msr_count: a.last - a.first + 1,
                bitmap: &zeros,
            })
            .collect();
        match fd.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges) {
            Ok(()) => got.counters_filtered = true,
            Err(e) => tracing::warn!(error = %e, "cannot filter the counter MSRs"),
        }
    }
    tracing::debug!(?got, pmu, "MSR exits");
    got
}

/// MSRs already logged, with the direction (true: write).
static LOGGED: Mutex<Option<HashSet<(u32, bool)>>> = Mutex::new(None);

fn log_once(index: u32, write: bool, data: u64) {
    let mut seen = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.get_or_insert_with(HashSet::new).insert((index, write)) {
        return;
    }
    let op = if write { "wrmsr" } else { "rdmsr" };
    match answered(index) {
        Some(a) => tracing::info!(
            "guest {op} {index:#x} ({}) answered: {}",
            a.what,
            if write { "ignored" } else { "0" }
        ),
        None => tracing::warn!("guest {op} {index:#x} (data {data:#x}): unknown MSR, #GP injected"),
    }
}

/// Answers a guest RDMSR that exited to Tern.
pub fn read(exit: ReadMsrExit<'_>) {
    log_once(exit.index, false, 0);
    if answered(exit.index).is_some() {
        *exit.data = 0;
        *exit.error = 0;
    } else {
        *exit.error = 1;
    }
}

/// Answers a guest WRMSR that exited to Tern.
pub fn write(exit: WriteMsrExit<'_>) {
    log_once(exit.index, true, exit.data);
    *exit.error = u8::from(answered(exit.index).is_none());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answered_ranges_hold_the_counters_linux_probes() {
        // The MSR L1's KVM complained about, and the edges of the ranges.
        for msr in [0xc001_0007, 0xc001_0000, 0xc001_020b, 0x186, 0xc1] {
            assert!(answered(msr).is_some(), "{msr:#x}");
        }
        for msr in [0xc001_0008, 0xc001_020c, 0x10, 0x1b] {
            assert!(answered(msr).is_none(), "{msr:#x}");
        }
        // The filter's bitmap covers each range.
        assert!(ANSWERED.iter().all(|a| a.last - a.first < 16));
    }
}
