//! Open arbitrary bytes as a VHDX and read from it: errors are fine,
//! panics are bugs. Run with `cargo fuzz run open_read` (nightly), or see
//! fuzz/README.md for the stable-toolchain build.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vhdx::fuzzing::open_and_read(data);
});
