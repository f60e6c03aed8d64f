//! The handful of instructions the probe uses to talk to the VMM. All of them
//! work at CPL 3: port I/O because the VMM sets RFLAGS.IOPL = 3, `rdtsc`
//! because CR4.TSD is clear. Nothing here may need CPL 0 (see
//! `ARCHITECTURE.md`, "Guests on these machines").

use core::arch::asm;
use core::hint::spin_loop;
use tern_probe_abi::{PORT_EXIT, PORT_PARK, PORT_SERIAL};

/// Writes one byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: `out` exits to the VMM (IOPL = 3 allows it at CPL 3) and has no
    // effect on this program's memory or stack.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags));
    }
}

/// Reads one byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` exits to the VMM like `out` (IOPL = 3) and only writes
    // the named register.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nostack, preserves_flags));
    }
    value
}

/// Writes a 32-bit value to an I/O port. Not `nomem`: the VMM may read guest
/// memory while handling it (a report), so earlier stores must be done.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`; the asm has the default memory clobber, so the
    // compiler completes every store before it.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags));
    }
}

/// Writes bytes to the serial port. The VMM's UART never back-pressures, so
/// there is no need to poll the line status register.
pub fn serial_write(bytes: &[u8]) {
    for &b in bytes {
        outb(PORT_SERIAL, b);
    }
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` only reads the TSC into edx:eax; the VMM leaves CR4.TSD
    // clear so it does not fault at CPL 3.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Ends the whole guest with `status` (an `EXIT_*` constant).
pub fn exit(status: u32) -> ! {
    outl(PORT_EXIT, status);
    // The VMM stops the VM on that write; spin (no `hlt`: it needs CPL 0) in
    // case it lets this vCPU run a little longer.
    loop {
        spin_loop();
    }
}

/// Tells the VMM this vCPU has nothing more to do.
pub fn park(cpu: u32) -> ! {
    outl(PORT_PARK, cpu);
    loop {
        spin_loop();
    }
}
