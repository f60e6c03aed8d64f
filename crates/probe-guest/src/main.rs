//! Tern's probe guest: a freestanding program the VMM runs directly at CPL 3
//! in 64-bit long mode, as the workload of its tests (see `ARCHITECTURE.md`,
//! "Guests on these machines", and the `tern-probe-abi` crate for the
//! contract).
//!
//! Entry state on every vCPU: RIP = `_start`, RDI = vCPU index, RSI =
//! `BOOT_INFO_ADDR`, RSP = `stack_top(index) - 8`, RFLAGS = 0x3002 (IOPL 3,
//! IF 0), flat DPL-3 segments, RAM identity-mapped. Because CPL-0 code is
//! emulated (and breaks) under PVM, the probe never needs CPL 0: no IDT, no
//! interrupts, no privileged instructions. It polls.
#![no_std]
#![no_main]

mod blk;
mod boot;
mod clock;
mod io;
mod mem;
mod net;
mod report;
mod scsi;
mod setup;
mod status;
mod virtio;
mod vsock;
mod workloads;

use core::arch::asm;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};
use tern_probe_abi::{EXIT_PANIC, STACKS_BASE, STACK_SIZE};

/// Entry point of every vCPU (SysV ABI: `cpu` in RDI, the boot info address
/// in RSI; the guest uses `BOOT_INFO_ADDR` directly).
#[no_mangle]
pub extern "C" fn _start(cpu: u64, _boot_info: u64) -> ! {
    check_stack(cpu);
    if cpu == 0 {
        workloads::run_primary()
    } else {
        workloads::run_secondary(cpu as u32)
    }
}

/// Catches a VMM that set RDI and RSP inconsistently: two vCPUs on one stack
/// would corrupt each other in ways far harder to diagnose.
fn check_stack(cpu: u64) {
    let rsp: u64;
    // SAFETY: reads the stack pointer; touches nothing.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    let stack = rsp.checked_sub(STACKS_BASE).map(|off| off / STACK_SIZE);
    if stack != Some(cpu) {
        panic!("vCPU {cpu} entered with RSP {rsp:#x}, outside its stack");
    }
}

/// Set by the first panic; a panic inside the panic handler just exits.
static PANICKED: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if !PANICKED.swap(true, Ordering::AcqRel) {
        // One line, message last: it is free text.
        match info.location() {
            Some(at) => report::send_from_panic(format_args!(
                "panic result=fail location={}:{}:{} message={}",
                at.file(),
                at.line(),
                at.column(),
                info.message()
            )),
            None => report::send_from_panic(format_args!(
                "panic result=fail message={}",
                info.message()
            )),
        }
    }
    io::exit(EXIT_PANIC)
}
