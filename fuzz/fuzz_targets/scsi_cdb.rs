//! SCSI commands from two initiators to a target with disks, a DVD and a
//! missing LUN, with host-side changes between them. See fuzz/README.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: tern_fuzz::seed_corpus(tern_scsi::fuzzing::cdbs_seeds),
    |data: &[u8]| {
        tern_scsi::fuzzing::cdbs(data);
    }
);
