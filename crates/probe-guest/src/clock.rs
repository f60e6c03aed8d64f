//! The probe's clock: the TSC, kept continuous across jumps.
//!
//! A VMM restores or migrates the guest at an instruction boundary, and the
//! host it lands on may not carry the guest's TSC over: where the host
//! cannot offset what a CPL-3 `rdtsc` reads (see `docs/saved-state.md`),
//! the raw TSC jumps to the new host's value, hours ahead or behind. Every
//! time-based loop of the probe (rate pacing, I/O timing, timeouts) reads
//! [`now`] instead of the raw TSC: a step of more than a second between two
//! readings, or any step backwards, is taken out of the clock (it advances
//! by nothing across it), so a deadline set before the jump stays as far
//! away as it was. The loops read the clock every few microseconds, so a
//! real second between two readings only happens when the guest did not
//! run (paused, saved, migrated), which should not count anyway.
//!
//! The state lives in the status page ([`tern_probe_abi::Status::tsc`] and
//! the fields after it), where the VMM can read what the guest sees. Only
//! vCPU 0 runs steps, so the clock has a single user.

use crate::io::rdtsc;
use crate::{boot, report::report, status};
use core::sync::atomic::Ordering;

/// TSC ticks per second assumed when the VMM gave none (a timeout may then
/// be off by a factor of a few, which is harmless; rates are never measured
/// with the guess).
const GUESSED_HZ: u64 = 3_000_000_000;

/// TSC ticks per second: the VMM's figure, or [`GUESSED_HZ`].
pub fn ticks_per_sec() -> u64 {
    match boot::info().tsc_khz.saturating_mul(1000) {
        0 => GUESSED_HZ,
        hz => hz,
    }
}

/// The guest's continuous clock in TSC ticks: the raw TSC plus every jump
/// taken out so far.
#[inline(always)]
pub fn now() -> u64 {
    let raw = rdtsc();
    let last = status::tsc().swap(raw, Ordering::Relaxed);
    let adjust = status::clock_adjust().load(Ordering::Relaxed);
    let step = raw.wrapping_sub(last);
    // `last == 0`: the first reading since boot, nothing to compare.
    if last != 0 && step > ticks_per_sec() {
        return rebase(raw, last, adjust);
    }
    raw.wrapping_add(adjust)
}

/// Takes the step from `last` to `raw` out of the clock; returns the clock,
/// which reads what it read at `last`.
#[cold]
#[inline(never)]
fn rebase(raw: u64, last: u64, adjust: u64) -> u64 {
    let adjust = adjust.wrapping_sub(raw.wrapping_sub(last));
    status::clock_adjust().store(adjust, Ordering::Relaxed);
    // A backward step: `step` wrapped. Tiny ones (TSCs of two host CPUs a
    // few ticks apart) are taken out silently; big ones are reported.
    let back = last.wrapping_sub(raw);
    let hz = ticks_per_sec();
    if back <= hz {
        return raw.wrapping_add(adjust);
    }
    status::clock_jumps().fetch_add(1, Ordering::Relaxed);
    let ahead = raw > last;
    let ticks = if ahead { raw - last } else { back };
    report!(
        "clock jump direction={} ticks={ticks} from={last} to={raw}",
        if ahead { "ahead" } else { "back" }
    );
    raw.wrapping_add(adjust)
}
