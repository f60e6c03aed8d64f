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
//! vCPU 0 runs steps, so the clock has a single user; what it must survive
//! is being stopped mid-reading (see [`now`]).

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
///
/// The VMM can stop the guest between any two instructions, save it, and
/// (a test, or a tool moving an image between hosts) rewrite
/// `clock_adjust` before it resumes. Two rules keep that safe: the
/// correction is read before the TSC, so a reading taken across the stop
/// pairs the old correction with a TSC of the same host; and the
/// correction is only ever changed by a compare-exchange against the value
/// the reading used, so a stale copy held in a register is never stored
/// over a rewritten one (the reading is taken again instead).
#[inline(always)]
pub fn now() -> u64 {
    loop {
        let adjust = status::clock_adjust().load(Ordering::Relaxed);
        let raw = rdtsc();
        status::tsc().store(raw, Ordering::Relaxed);
        let clock = raw.wrapping_add(adjust);
        let last = status::clock_last().load(Ordering::Relaxed);
        // `last == 0`: the first reading since boot, nothing to compare. A
        // step backwards wraps to a huge one.
        if last == 0 || clock.wrapping_sub(last) <= ticks_per_sec() {
            status::clock_last().store(clock, Ordering::Relaxed);
            return clock;
        }
        if let Some(clock) = jump(clock, last, adjust) {
            return clock;
        }
    }
}

/// The clock stepped from `last` to `clock`: more than a second ahead, or
/// back. Returns what the clock reads now, or `None` when `clock_adjust` no
/// longer holds `adjust` (rewritten while the guest was stopped): the
/// caller reads again.
#[cold]
#[inline(never)]
fn jump(clock: u64, last: u64, adjust: u64) -> Option<u64> {
    let back = last.wrapping_sub(clock);
    let hz = ticks_per_sec();
    // A tiny backward step (TSCs of two host CPUs a few ticks apart): the
    // clock holds at `last` until the TSC passes it; nothing is changed.
    if back <= hz {
        return Some(last);
    }
    // A real jump: taken out, so the clock reads `last` (the time the guest
    // did not run does not count).
    let step = clock.wrapping_sub(last);
    status::clock_adjust()
        .compare_exchange(
            adjust,
            adjust.wrapping_sub(step),
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .ok()?;
    status::clock_jumps().fetch_add(1, Ordering::Relaxed);
    let ahead = step <= u64::MAX / 2;
    let ticks = if ahead { step } else { back };
    report!(
        "clock jump direction={} ticks={ticks} from={last} to={clock}",
        if ahead { "ahead" } else { "back" }
    );
    Some(last)
}
