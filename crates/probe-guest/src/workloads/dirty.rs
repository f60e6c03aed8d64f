//! `dirty`: rewrites a working set pass after pass, each page stamped with its
//! index and the pass (generation); `verify`: checks every stamp.
//!
//! The invariant both rely on, and which a VMM may check from outside at any
//! instruction boundary (paused, saved, migrated): `Status.generation` and
//! `Status.cursor` describe memory exactly, as [`expected_generation`] reads
//! them, except for the single page at the cursor that may be half written.
//! Hence the cursor moves only after its page is complete, and a new pass
//! starts with one store of both fields ([`status::start_pass`]).

use super::{check_data_page, fill_data_page, too_large, Ctx, PAGES_PER_MIB};
use crate::clock;
use crate::report::{println, report};
use crate::status;
use core::hint::spin_loop;
use core::sync::atomic::Ordering;
use tern_probe_abi::command;
use tern_probe_abi::stamp::{data_pages, expected_generation, PageCheck};
use tern_probe_abi::workload::Step;

/// Most mismatching pages `verify` reports one by one.
const MAX_MISMATCH_REPORTS: u64 = 8;

/// Runs `dirty` until the VMM sends STOP.
pub(super) fn dirty(ctx: &Ctx, step: &Step) -> bool {
    let available = data_pages(ctx.regions);
    let pages = step.mib.saturating_mul(PAGES_PER_MIB);
    if pages > available {
        return too_large("dirty", pages, available);
    }
    let mut generation = status::generation().load(Ordering::Acquire);
    let mut cursor = status::cursor().load(Ordering::Acquire);
    if generation == 0 {
        // Nothing written yet: the pages are zero, which is generation 0.
        status::pages().store(pages, Ordering::Release);
    } else {
        // A later `dirty` step carries on where the last one stopped, which
        // only describes memory if the working set is the same.
        let previous = status::pages().load(Ordering::Acquire);
        if previous != pages {
            report!("dirty pages={pages} previous={previous} result=fail reason=size-changed");
            return false;
        }
    }
    if generation == 0 || cursor == pages {
        generation += 1;
        cursor = 0;
        status::start_pass(generation);
    }

    let mut pace = Pace::new(ctx.tsc_hz, step.rate);
    if step.rate != 0 && ctx.tsc_hz == 0 {
        println!("dirty: TSC frequency unknown, writing without a rate limit");
    }
    let (mut written, mut passes) = (0u64, 0u64);
    loop {
        pace.wait(written);
        // Stopping only here, between pages, leaves no half-written page.
        if status::take_stop() {
            report!(
                "dirty stopped generation={generation} cursor={cursor} pages={pages} \
                 passes={passes} written={written}"
            );
            return true;
        }
        fill_data_page(ctx.regions, cursor, generation);
        cursor += 1;
        // Release: the page's stores come first.
        status::cursor().store(cursor, Ordering::Release);
        written += 1;
        if cursor == pages {
            passes += 1;
            generation += 1;
            cursor = 0;
            status::start_pass(generation);
        }
    }
}

/// Rate control: page `k` of the step is due `k / (rate * 256)` seconds after
/// the start, by the TSC.
struct Pace {
    tsc_hz: u64,
    /// Pages per second; 0: no limit.
    pages_per_sec: u64,
    base_tsc: u64,
    base_page: u64,
}

impl Pace {
    fn new(tsc_hz: u64, rate_mib: u64) -> Self {
        let pages_per_sec = if tsc_hz == 0 {
            0
        } else {
            rate_mib.saturating_mul(PAGES_PER_MIB)
        };
        Pace {
            tsc_hz,
            pages_per_sec,
            base_tsc: clock::now(),
            base_page: 0,
        }
    }

    /// Spins until page `page` is due, or a command arrives.
    #[inline(always)]
    fn wait(&mut self, page: u64) {
        if self.pages_per_sec == 0 {
            return;
        }
        let ticks = u128::from(page - self.base_page) * u128::from(self.tsc_hz)
            / u128::from(self.pages_per_sec);
        let due = self
            .base_tsc
            .saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX));
        loop {
            let now = clock::now();
            if now >= due {
                // More than 100 ms late (the guest was paused, or the host
                // busy): forget the debt instead of bursting to catch up, so
                // the rate stays the one asked for.
                if now - due > self.tsc_hz / 10 {
                    self.base_tsc = now;
                    self.base_page = page;
                }
                return;
            }
            if status::command().load(Ordering::Relaxed) != command::NONE {
                return;
            }
            spin_loop();
        }
    }
}

/// Checks every page the `dirty` steps wrote against the stamp the status
/// page says it must hold.
pub(super) fn verify(ctx: &Ctx) -> bool {
    let pages = status::pages().load(Ordering::Acquire);
    if pages == 0 {
        report!("verify pages=0 result=fail reason=no-dirty-step");
        return false;
    }
    let generation = status::generation().load(Ordering::Acquire);
    let cursor = status::cursor().load(Ordering::Acquire);
    let mut bad = 0u64;
    for index in 0..pages {
        let expected = expected_generation(index, generation, cursor);
        let (addr, check) = check_data_page(ctx.regions, index, expected);
        if let PageCheck::Mismatch {
            word,
            found_index,
            found_generation,
        } = check
        {
            bad += 1;
            if bad <= MAX_MISMATCH_REPORTS {
                report!(
                    "verify mismatch page={index} addr={addr:#x} word={word} \
                     expected_generation={expected} found_index={found_index} \
                     found_generation={found_generation}"
                );
            }
        }
    }
    let result = if bad == 0 { "pass" } else { "fail" };
    report!(
        "verify pages={pages} bad={bad} result={result} generation={generation} cursor={cursor}"
    );
    bad == 0
}
