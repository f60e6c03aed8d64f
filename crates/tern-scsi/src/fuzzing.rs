//! The entry point fuzzers drive (`fuzz/fuzz_targets/scsi_cdb.rs`, and the
//! stable fallback in this module's tests): arbitrary commands from two
//! initiators to a target with a disk, a read-only disk, a DVD and a LUN
//! that does not exist, with host-side changes between them. Any response
//! is fine; a panic is a bug.

use std::sync::{Arc, Mutex};

use tern_block::{BlockBackend, BlockError, DiskFormat, ResizePolicy};

use crate::{DiskConfig, DvdConfig, NexusId, ScsiTarget};

/// A disk in memory.
struct MemDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemDisk {
    fn new(size: usize, read_only: bool) -> Arc<MemDisk> {
        Arc::new(MemDisk {
            data: Mutex::new(vec![0; size]),
            read_only,
        })
    }

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, BlockError> {
        let capacity = self.capacity();
        match offset.checked_add(len as u64) {
            Some(end) if end <= capacity => Ok(offset as usize..end as usize),
            _ => Err(BlockError::OutOfRange {
                offset,
                len: len as u64,
                capacity,
            }),
        }
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockBackend for MemDisk {
    fn capacity(&self) -> u64 {
        self.data().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn id(&self) -> &str {
        "fuzz-disk"
    }
    fn format(&self) -> DiskFormat {
        DiskFormat::Raw
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data()[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let r = self.range(offset, buf.len())?;
        self.data()[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let r = self.range(offset, len as usize)?;
        self.data()[r].fill(0);
        Ok(())
    }
    fn resize(&self, new_size: u64, policy: &ResizePolicy) -> Result<(), BlockError> {
        let cur = self.capacity();
        policy.check(cur, new_size)?;
        if new_size > 16 << 20 {
            return Err(BlockError::BadSize(new_size));
        }
        self.data().resize(new_size as usize, 0);
        Ok(())
    }
}

/// A small in-memory disk for tests and fuzzing.
pub fn mem_disk(size: usize, read_only: bool) -> Arc<dyn BlockBackend> {
    MemDisk::new(size, read_only)
}

/// Largest data-in buffer the fuzzer asks for.
const MAX_DATA_IN: usize = 256 << 10;

fn target() -> ScsiTarget {
    let t = ScsiTarget::new();
    let ok = t
        .add_disk(0, DiskConfig::new(mem_disk(64 << 10, false)))
        .is_ok()
        && t.add_disk(1, DiskConfig::new(mem_disk(16 << 10, true)))
            .is_ok()
        && t.add_dvd(
            2,
            DvdConfig {
                serial: "fuzz-dvd".into(),
                medium: Some(mem_disk(32 << 10, true)),
            },
        )
        .is_ok();
    debug_assert!(ok, "the fuzz target's LUNs are distinct");
    t
}

/// Runs the commands `data` encodes. Each record: a header byte (bits 0-1
/// the LUN 0..3, bit 2 the initiator, bits 3-5 a host action), a CDB length
/// byte, a data-out length byte (in 64-byte units), a data-in length byte
/// (in 512-byte units), then the CDB and the data-out bytes.
pub fn cdbs(data: &[u8]) {
    let t = target();
    let nexus = [
        NexusId::Virtio {
            vm: "a".into(),
            controller: 0,
        },
        NexusId::Iscsi {
            iqn: "iqn.2026-01.fuzz:b".into(),
            isid: [0x80, 0, 0, 0, 0, 1],
        },
    ];
    let mut rest = data;
    while rest.len() >= 4 {
        let (h, cdb_len, out_len, in_len) = (
            rest[0],
            rest[1] as usize,
            rest[2] as usize * 64,
            rest[3] as usize * 512,
        );
        rest = &rest[4..];
        let cdb_len = cdb_len.min(rest.len()).min(32);
        let (cdb, r) = rest.split_at(cdb_len);
        let out_len = out_len.min(r.len());
        let (out, r) = r.split_at(out_len);
        rest = r;
        // Host actions interleaved with the guest's commands. Their errors
        // (no such LUN, prevented, bad size) are part of what is fuzzed.
        match (h >> 3) & 7 {
            1 => {
                let _ = t.resize(0, (cdb.len() as u64 + 1) * 4096, &ResizePolicy::default());
            }
            2 => {
                let _ = t.eject_medium(2, h & 0x40 != 0);
            }
            3 => {
                let _ = t.insert_medium(2, mem_disk(8 << 10, true));
            }
            4 => {
                let _ = t.remove(3);
                let _ = t.add_disk(3, DiskConfig::new(mem_disk(4096, false)));
            }
            5 => t.reset(),
            6 => {
                if let Ok(s) = t.save() {
                    let _ = t.restore(&s);
                }
            }
            _ => {}
        }
        let lun = (h & 3) as u16;
        let n = &nexus[((h >> 2) & 1) as usize];
        let r = t.execute(n, lun, cdb, out, in_len.min(MAX_DATA_IN));
        assert!(r.data_in.len() <= in_len.min(MAX_DATA_IN));
    }
}

/// Valid inputs to start from: common commands to each LUN.
pub fn cdbs_seeds() -> Vec<Vec<u8>> {
    fn rec(h: u8, cdb: &[u8], out: &[u8], in_blocks: u8) -> Vec<u8> {
        let mut out_padded = out.to_vec();
        out_padded.resize(out.len().div_ceil(64) * 64, 0);
        let mut v = vec![h, cdb.len() as u8, (out_padded.len() / 64) as u8, in_blocks];
        v.extend_from_slice(cdb);
        v.extend(out_padded);
        v
    }
    let mut pr_out = vec![0u8; 24];
    pr_out[15] = 0x11;
    let seeds: Vec<Vec<Vec<u8>>> = vec![
        vec![
            rec(0, &[0x12, 0, 0, 0, 0xFF, 0], &[], 1),
            rec(0, &[0x00, 0, 0, 0, 0, 0], &[], 0),
            rec(0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0], &[], 2),
            rec(0, &[0x2A, 0x08, 0, 0, 0, 1, 0, 0, 1, 0], &[0xAB; 512], 0),
        ],
        vec![
            rec(0, &[0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], &pr_out, 0),
            rec(
                0,
                &[0x5F, 0x01, 0x05, 0, 0, 0, 0, 0, 24, 0],
                &{
                    let mut p = vec![0u8; 24];
                    p[7] = 0x11;
                    p
                },
                0,
            ),
            rec(4, &[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[1; 512], 0),
            rec(0, &[0x5E, 0x03, 0, 0, 0, 0, 0, 0x10, 0, 0], &[], 8),
        ],
        vec![
            rec(2, &[0x46, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[], 8),
            rec(2, &[0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], &[], 1),
            rec(2 | (2 << 3), &[0x1E, 0, 0, 0, 1, 0], &[], 0),
            rec(2, &[0x1B, 0, 0, 0, 2, 0], &[], 0),
            rec(2 | (3 << 3), &[0x43, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0], &[], 1),
        ],
        vec![
            rec(
                1 | (4 << 3),
                &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
                &[],
                1,
            ),
            rec(3, &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], &[], 2),
            rec(0, &[0x1A, 0, 0x3F, 0, 0xFF, 0], &[], 1),
            rec(
                1 << 3,
                &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
                &[],
                1,
            ),
            rec(
                0,
                &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
                &{
                    let mut u = vec![0, 22, 0, 16, 0, 0, 0, 0];
                    u.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 0]);
                    u
                },
                0,
            ),
        ],
    ];
    seeds.into_iter().map(|s| s.concat()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stable fallback: seeds, their prefixes and single-byte changes.
    #[test]
    fn seeds_prefixes_and_mutations_do_not_panic() {
        for s in cdbs_seeds() {
            for end in 0..=s.len() {
                cdbs(&s[..end]);
            }
            for i in 0..s.len() {
                for v in [0x00, 0x01, 0x7F, 0x80, 0xFF] {
                    let mut m = s.clone();
                    m[i] = v;
                    cdbs(&m);
                }
            }
        }
    }

    #[test]
    fn every_opcode_with_noise() {
        // Each of the 256 opcodes with a few field patterns to every LUN.
        let mut input = Vec::new();
        for opc in 0..=255u8 {
            for pat in [0x00u8, 0xFF, 0x5A] {
                for lun in 0..4u8 {
                    let mut cdb = [pat; 16];
                    cdb[0] = opc;
                    input.extend_from_slice(&[lun | ((pat & 1) << 2), 16, 1, 2]);
                    input.extend_from_slice(&cdb);
                    input.extend_from_slice(&[pat; 64]);
                }
            }
        }
        cdbs(&input);
    }
}
