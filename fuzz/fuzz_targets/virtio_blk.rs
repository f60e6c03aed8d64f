//! virtio-blk requests through the MMIO transport and the block device,
//! from a guest writing arbitrary descriptors, rings and request headers.
//! See fuzz/README.md.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: tern_fuzz::seed_corpus(tern_devices::fuzzing::virtio_blk_seeds),
    |data: &[u8]| {
        tern_devices::fuzzing::virtio_blk(data);
    }
);
