//! Text output: lines on the serial port, and reports through
//! [`PORT_REPORT`] (each also printed on serial). No allocator: a report is
//! formatted into one static buffer, which a spin lock shares between vCPUs.

use crate::io;
use core::cell::UnsafeCell;
use core::fmt::{self, Write};
use core::hint::spin_loop;
use core::sync::atomic::{AtomicBool, Ordering};
use tern_probe_abi::{Report, PORT_REPORT, REPORT_MAX};

/// Prints a formatted line on the serial port.
macro_rules! println {
    ($($arg:tt)*) => { $crate::report::print_line(format_args!($($arg)*)) };
}

/// Sends a formatted report to the VMM and prints it on the serial port.
macro_rules! report {
    ($($arg:tt)*) => { $crate::report::send(format_args!($($arg)*)) };
}

pub(crate) use {println, report};

/// A report as the VMM reads it: the header directly followed by the text.
#[repr(C)]
struct ReportBuf {
    header: Report,
    text: [u8; REPORT_MAX as usize],
}

impl Write for ReportBuf {
    /// Appends, truncating at [`REPORT_MAX`] rather than failing: a cut report
    /// is more useful than a formatting error.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let len = self.header.len as usize;
        let n = s.len().min(self.text.len() - len);
        self.text[len..len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.header.len += n as u32;
        Ok(())
    }
}

/// Serial output as a [`Write`] sink.
struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        io::serial_write(s.as_bytes());
        Ok(())
    }
}

/// The output lock and the report buffer it guards.
struct Output {
    locked: AtomicBool,
    buf: UnsafeCell<ReportBuf>,
}

// SAFETY: `buf` is only reached through `with_output`, which holds `locked`.
unsafe impl Sync for Output {}

static OUTPUT: Output = Output {
    locked: AtomicBool::new(false),
    buf: UnsafeCell::new(ReportBuf {
        header: Report { len: 0 },
        text: [0; REPORT_MAX as usize],
    }),
};

/// Spins this many times for the lock in the panic handler before going on
/// without it (the panicking vCPU may be the one holding it).
const PANIC_LOCK_SPINS: u32 = 100_000_000;

/// Runs `f` with the report buffer while holding the output lock. With
/// `bounded`, gives up waiting after [`PANIC_LOCK_SPINS`] and runs anyway.
fn with_output<R>(bounded: bool, f: impl FnOnce(&mut ReportBuf) -> R) -> R {
    let mut spins = 0u32;
    while OUTPUT
        .locked
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        spins += 1;
        if bounded && spins >= PANIC_LOCK_SPINS {
            break;
        }
        spin_loop();
    }
    // SAFETY: the lock is held (or, in a panic that waited long enough, its
    // holder is presumed dead), so nothing else uses the buffer now.
    let r = f(unsafe { &mut *OUTPUT.buf.get() });
    OUTPUT.locked.store(false, Ordering::Release);
    r
}

/// Prints one line on the serial port.
pub fn print_line(args: fmt::Arguments<'_>) {
    with_output(false, |_| {
        let _ = Serial.write_fmt(args);
        io::serial_write(b"\n");
    });
}

/// Formats a report, sends it to the VMM and prints it on the serial port.
pub fn send(args: fmt::Arguments<'_>) {
    with_output(false, |buf| send_locked(buf, args));
}

/// [`send`] for the panic handler: does not wait forever for the lock.
pub fn send_from_panic(args: fmt::Arguments<'_>) {
    with_output(true, |buf| send_locked(buf, args));
}

fn send_locked(buf: &mut ReportBuf, args: fmt::Arguments<'_>) {
    buf.header.len = 0;
    let _ = buf.write_fmt(args);
    // Identity-mapped and linked below DATA_BASE, so the guest-physical
    // address is the pointer and fits in 32 bits.
    let addr = buf as *const ReportBuf as usize as u32;
    io::outl(PORT_REPORT, addr);
    let len = buf.header.len as usize;
    io::serial_write(&buf.text[..len]);
    io::serial_write(b"\n");
}
