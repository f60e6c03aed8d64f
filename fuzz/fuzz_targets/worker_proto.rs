//! The worker protocol: request lines, reply lines and launch specs, each
//! of which must read back from its own encoding. See fuzz/README.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: tern_fuzz::seed_corpus(tern_worker_proto::fuzzing::decode_seeds),
    |data: &[u8]| {
        tern_worker_proto::fuzzing::decode(data);
    }
);
