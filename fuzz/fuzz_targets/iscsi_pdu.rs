//! iSCSI PDUs from the network: decoding (with and without digests) and
//! the login state machine. See fuzz/README.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: tern_fuzz::seed_corpus(tern_iscsi::fuzzing::seeds),
    |data: &[u8]| {
        tern_iscsi::fuzzing::pdus(data);
    }
);
