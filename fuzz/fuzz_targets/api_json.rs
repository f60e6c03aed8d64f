//! The REST API's JSON bodies: requests as the daemon reads them, replies
//! as the client reads them. See fuzz/README.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: tern_fuzz::seed_corpus(tern_api::fuzzing::json_bodies_seeds),
    |data: &[u8]| {
        tern_api::fuzzing::json_bodies(data);
    }
);
