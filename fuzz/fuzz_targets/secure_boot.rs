//! PE images and EFI_SIGNATURE_LISTs for the Secure Boot check: a verdict
//! or a typed error, never a panic. See fuzz/README.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: tern_fuzz::seed_corpus(tern_secureboot::fuzzing::seeds),
    |data: &[u8]| {
        tern_secureboot::fuzzing::image_and_lists(data);
    }
);
