//! The status page at [`STATUS_ADDR`]: the guest publishes its progress there
//! and the VMM reads it at any moment (also while the guest is paused, and
//! from a saved or migrated copy of memory). Every field is accessed as an
//! atomic over the page, which gives single, untorn loads and stores and
//! keeps the compiler from moving data-page writes past the stores that
//! publish them.

use core::arch::asm;
use core::mem::offset_of;
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use tern_probe_abi::{command, Status, STATUS_ADDR, STATUS_GENERATION_OFFSET};

macro_rules! field {
    ($(#[$doc:meta])* $name:ident: $atomic:ty) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $name() -> &'static $atomic {
            // SAFETY: the status page is identity-mapped RAM reserved for it
            // for the whole run; `Status` is `repr(C)` with naturally aligned
            // fields, and the guest accesses them only through atomics.
            unsafe { <$atomic>::from_ptr(addr_of_mut!((*(STATUS_ADDR as *mut Status)).$name)) }
        }
    };
}

field!(/** [`Status::magic`]. */ magic: AtomicU64);
field!(/** [`Status::phase`]. */ phase: AtomicU32);
field!(/** [`Status::step`]. */ step: AtomicU32);
field!(/** [`Status::command`] (written by the VMM). */ command: AtomicU32);
field!(/** [`Status::command_ack`]. */ command_ack: AtomicU32);
field!(/** [`Status::generation`]. */ generation: AtomicU64);
field!(/** [`Status::cursor`]. */ cursor: AtomicU64);
field!(/** [`Status::pages`]. */ pages: AtomicU64);
field!(/** [`Status::touch_rounds`]. */ touch_rounds: AtomicU64);
field!(/** [`Status::touch_request`] (written by the VMM). */ touch_request: AtomicU64);
field!(/** [`Status::checked_in`]. */ checked_in: AtomicU32);
field!(/** [`Status::blk_capacity_changes`]. */ blk_capacity_changes: AtomicU32);
field!(/** [`Status::blk_capacity`]. */ blk_capacity: AtomicU64);
field!(/** [`Status::blk_in_use_end`]. */ blk_in_use_end: AtomicU64);
field!(/** [`Status::tsc`]. */ tsc: AtomicU64);
field!(/** [`Status::clock_adjust`]. */ clock_adjust: AtomicU64);
field!(/** [`Status::clock_jumps`]. */ clock_jumps: AtomicU64);
field!(/** [`Status::clock_last`]. */ clock_last: AtomicU64);

// `start_pass` writes both fields with one 16-byte store.
const _: () = assert!(offset_of!(Status, generation) as u64 == STATUS_GENERATION_OFFSET);
const _: () = assert!(offset_of!(Status, cursor) == offset_of!(Status, generation) + 8);

/// Publishes (`generation`, cursor 0) with a single instruction.
///
/// Two separate stores would leave an instant, visible to a VMM that pauses
/// the guest there, where the pair no longer describes memory: (g-1, 0) says
/// every page holds g-2, (g, pages) says every page holds g. One `movups`
/// completes or does not, so a pause at an instruction boundary always sees
/// (g-1, pages) or (g, 0), and both mean "every page holds g-1".
#[inline(always)]
pub fn start_pass(generation: u64) {
    let addr = STATUS_ADDR + STATUS_GENERATION_OFFSET;
    // SAFETY: writes the 16 bytes of `generation` and `cursor` in the status
    // page (see `field!`); `movq` zeroes the upper half, which lands on
    // `cursor`. The default memory clobber orders it after earlier stores.
    unsafe {
        asm!(
            "movq {x}, {g}",
            "movups xmmword ptr [{p}], {x}",
            g = in(reg) generation,
            p = in(reg) addr,
            x = out(xmm_reg) _,
            options(nostack, preserves_flags),
        );
    }
}

/// Takes a STOP the VMM wrote into [`Status::command`], if there is one.
///
/// The guest consumes the command (writes NONE back) before it acknowledges
/// it, so a command stays pending for exactly one step: a later open-ended
/// step in the same workload runs until the VMM writes STOP again. The VMM
/// writes a command only after the previous one was acknowledged, so the
/// compare-exchange never races with a new command.
#[inline(always)]
pub fn take_stop() -> bool {
    let cmd = command();
    if cmd.load(Ordering::Acquire) != command::STOP {
        return false;
    }
    let taken = cmd
        .compare_exchange(
            command::STOP,
            command::NONE,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok();
    if taken {
        command_ack().fetch_add(1, Ordering::Release);
    }
    taken
}
