//! The migration destination's frame decoding: data channel chunks applied
//! to guest memory, and control channel messages. See fuzz/README.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: tern_fuzz::seed_corpus(tern_migrate::fuzzing::frames_seeds),
    |data: &[u8]| {
        tern_migrate::fuzzing::frames(data);
    }
);
