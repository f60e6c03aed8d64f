//! The memory functions the compiler emits calls to. On the Linux target
//! `compiler_builtins` leaves them to libc, which the probe does not link.
//! Written with string instructions (or volatile loads) so the optimizer
//! cannot turn their loops back into calls to themselves.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dest` (the regions must not overlap).
///
/// # Safety
/// `src` must be valid for `n` byte reads and `dest` for `n` byte writes.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; `rep movsb` copies forwards
    // with DF clear (the SysV ABI's state at every call).
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// Copies `n` bytes from `src` to `dest`; the regions may overlap.
///
/// # Safety
/// `src` must be valid for `n` byte reads and `dest` for `n` byte writes.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // `dest` is below `src` or past its end: a forward copy is safe.
        // SAFETY: forwarded caller guarantees.
        return unsafe { memcpy(dest, src, n) };
    }
    // Overlapping with `dest` above `src`: copy backwards, from the last byte.
    // SAFETY: the caller guarantees both ranges; DF is restored before return.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dest
}

/// Fills `n` bytes at `dest` with `c`.
///
/// # Safety
/// `dest` must be valid for `n` byte writes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; DF is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// Compares `n` bytes; returns their difference at the first mismatch.
///
/// # Safety
/// Both pointers must be valid for `n` byte reads.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: `i < n` and the caller guarantees `n` readable bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// Compares `n` bytes for equality (zero if equal).
///
/// # Safety
/// Both pointers must be valid for `n` byte reads.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded caller guarantees.
    unsafe { memcmp(a, b, n) }
}

/// The precompiled `core` is built to unwind, and its unwind tables name this
/// personality routine; with `panic = "abort"` nothing ever unwinds, so it is
/// never called (`link.ld` drops the tables). Defined only to satisfy the
/// linker, as `#[lang = "eh_personality"]` needs a nightly compiler.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
