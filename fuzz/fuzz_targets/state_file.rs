//! Saved-state files: header checks, and the payload of a saved state and
//! a checkpoint tree. See fuzz/README.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: tern_fuzz::seed_corpus(tern_snapshot::fuzzing::state_file_seeds),
    |data: &[u8]| {
        tern_snapshot::fuzzing::state_file(data);
    }
);
