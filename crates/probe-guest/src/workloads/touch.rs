//! `touch`: on each round the VMM asks for, stamps a known pseudo-random set
//! of pages, so a test can compare the VMM's dirty log with the set it
//! computes itself with [`touch_page`].
//!
//! While idle the loop must store nothing (only loads of the status page), or
//! it would dirty pages the test does not expect.

use super::{fill_data_page, too_large, Ctx, PAGES_PER_MIB};
use crate::report::report;
use crate::status;
use core::hint::spin_loop;
use core::sync::atomic::Ordering;
use tern_probe_abi::stamp::{data_pages, touch_page};
use tern_probe_abi::workload::Step;

/// Runs `touch` until the VMM sends STOP.
pub(super) fn touch(ctx: &Ctx, step: &Step) -> bool {
    let available = data_pages(ctx.regions);
    let span_pages = step.span.saturating_mul(PAGES_PER_MIB);
    if span_pages > available {
        return too_large("touch", span_pages, available);
    }
    let (rounds, request) = (status::touch_rounds(), status::touch_request());
    loop {
        let done = rounds.load(Ordering::Relaxed);
        if request.load(Ordering::Acquire) > done {
            let round = done + 1;
            for i in 0..step.pages {
                let index = touch_page(step.seed, round, i, span_pages);
                fill_data_page(ctx.regions, index, round);
            }
            // Release: the round's pages are written before it is published.
            rounds.store(round, Ordering::Release);
        } else if status::take_stop() {
            report_stopped(done, step, span_pages);
            return true;
        } else {
            spin_loop();
        }
    }
}

/// Kept out of line: formatting takes the address of its arguments, and
/// inlined it would make the idle loop spill `done` to the stack on every
/// iteration, dirtying the stack page.
#[inline(never)]
fn report_stopped(rounds: u64, step: &Step, span_pages: u64) {
    report!(
        "touch rounds={rounds} pages={} span_pages={span_pages} seed={}",
        step.pages,
        step.seed
    );
}
