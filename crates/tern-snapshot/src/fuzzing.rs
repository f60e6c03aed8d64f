//! Entry points fuzzers drive (`fuzz/`, and the stable fallback in this
//! module's tests): saved-state files as a reader meets them. Any outcome
//! but a panic (or a huge allocation) is fine.

use std::path::Path;

use crate::file::{self, Header};
use crate::proto;

/// Decodes `data` as a whole state file (magic, header, lengths, checksum,
/// versions), and then, wrapped in a valid header so the checksum does not
/// stop the fuzzer, as the payload of a saved state (required fields, the
/// configuration, the VM state) and of a checkpoint tree. Returns whether
/// the payload decoded as a saved state whose configuration is valid.
pub fn state_file(data: &[u8]) -> bool {
    let path = Path::new("fuzz/state.bin");
    if let Ok((h, payload)) = file::decode(path, data) {
        let _ = file::decode_payload::<proto::Snapshot>(path, h, payload);
    }
    let whole = file::encode(Header::default(), data);
    let Ok((h, payload)) = file::decode(path, &whole) else {
        return false;
    };
    let _ = file::decode_payload::<proto::CheckpointTree>(path, h, payload);
    let Ok(read) = file::decode_payload::<proto::Snapshot>(path, h, payload) else {
        return false;
    };
    let dir = Path::new("/nonexistent/fuzz");
    read.message
        .config
        .as_ref()
        .is_some_and(|c| crate::saved::config_from_proto(c, dir, dir).is_ok())
}

/// Valid payloads for [`state_file`]: a probe and a Linux guest's saved
/// state, with disks, vCPU state and a memory image; a checkpoint tree.
pub fn state_file_seeds() -> Vec<Vec<u8>> {
    use tern_vmm::state::proto::{VcpuState, VmState};
    use tern_vmm::{Guest, VmConfig};
    let mut probe = VmConfig::new(
        2,
        128 << 20,
        Guest::Probe {
            image: "probe-guest".into(),
            workload: "dirty,mib=16".into(),
        },
    );
    probe.disks.push(tern_vmm::devices::DiskConfig {
        path: "disk.vhdx".into(),
        format: Some(tern_block::DiskFormat::Vhdx),
        read_only: false,
        qos: Default::default(),
        poll: false,
    });
    let linux = VmConfig::new(
        1,
        256 << 20,
        Guest::Linux {
            kernel: "vmlinuz".into(),
            initrd: Some("initrd".into()),
            cmdline: "console=ttyS0".into(),
        },
    );
    let mut seeds: Vec<Vec<u8>> = [probe, linux]
        .iter()
        .map(|c| {
            let snap = proto::Snapshot {
                config: Some(crate::saved::config_to_proto(c)),
                state: Some(VmState {
                    vcpus: vec![VcpuState::default(); c.vcpus as usize],
                    ..Default::default()
                }),
                required: vec!["2.1".into()],
                memory: Some(proto::MemoryImage {
                    file: "memory.bin".into(),
                    size: c.memory,
                    included: true,
                }),
                created_unix_ms: 1,
                writer: "fuzz".into(),
            };
            prost::Message::encode_to_vec(&snap)
        })
        .collect();
    seeds.push(prost::Message::encode_to_vec(&proto::CheckpointTree {
        checkpoints: vec![proto::Checkpoint::default(); 2],
        ..Default::default()
    }));
    // A whole file too: the header checks see a valid one.
    seeds.push(file::encode(Header::default(), &seeds[0]));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_saved_state_seeds_decode_with_valid_configurations() {
        let seeds = state_file_seeds();
        assert!(state_file(&seeds[0]));
        assert!(state_file(&seeds[1]));
        assert!(!state_file(b"not a state"));
    }

    /// The stable fallback: prefixes and single-byte changes of every seed.
    #[test]
    fn seeds_and_their_mutations_never_panic() {
        for seed in state_file_seeds() {
            for cut in 0..seed.len() {
                state_file(&seed[..cut]);
            }
            let mut m = seed.clone();
            for at in 0..m.len() {
                for x in [0xff, 0x80, 0x01] {
                    m[at] ^= x;
                    state_file(&m);
                    m[at] ^= x;
                }
            }
        }
    }
}
