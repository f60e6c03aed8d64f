//! The topology leaves: N vCPUs shown as one socket of N cores, one thread
//! each, the vCPU id as APIC id.
//!
//! KVM's supported set carries the host's topology (its core counts, its
//! cache sharing, APIC ids of the CPU Tern happened to run on); a guest
//! that reads it sizes its scheduler domains and its per-package data for
//! a machine it is not. Intel's leaves 4, 0xB and 0x1F and AMD's
//! 0x80000008 ECX, 0x8000001D and 0x8000001E are rewritten, together with
//! leaf 1 EBX (APIC id, logical count, CLFLUSH size), so every count agrees.

use super::{CpuidEntry, Vendor};

/// Bits of APIC id that number the cores of a socket of `vcpus`.
pub fn core_bits(vcpus: u32) -> u32 {
    vcpus.max(1).next_power_of_two().trailing_zeros()
}

/// Level type of leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Rewrites the topology leaves for `vcpus` vCPUs (the ids are set per
/// vCPU by [`set_vcpu_id`]). The subleaves of 0xB and 0x1F are replaced.
pub fn normalize(entries: &mut Vec<CpuidEntry>, vendor: Vendor, vcpus: u32) {
    let vcpus = vcpus.max(1);
    let shift = core_bits(vcpus);
    let ids = (1u32 << shift) - 1;
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // CLFLUSH line size in 8-byte units (64 bytes when KVM gives none).
                let clflush = match (e.ebx >> 8) & 0xff {
                    0 => 8,
                    n => n,
                };
                e.ebx = (e.ebx & 0xff) | (clflush << 8) | (vcpus.min(255) << 16);
                if vcpus > 1 {
                    e.edx |= 1 << 28; // HTT: the logical count is valid
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            0x4 if vendor == Vendor::Intel && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { ids.min(0xfff) } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | (ids.min(63) << 26);
            }
            0x8000_0001 if vendor == Vendor::Amd => {
                // CmpLegacy: the logical count of leaf 1 counts cores.
                if vcpus > 1 {
                    e.ecx |= 1 << 1;
                } else {
                    e.ecx &= !(1 << 1);
                }
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                let apic_size = if vcpus > 1 { shift } else { 0 };
                e.ecx = (e.ecx & !0xf0ff) | (apic_size << 12) | (vcpus - 1).min(0xff);
            }
            0x8000_001d if vendor == Vendor::Amd && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { ids.min(0xfff) } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | (sharing << 14);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                // One thread per compute unit, one node.
                (e.ebx, e.ecx, e.edx) = (0, 0, 0);
            }
            _ => {}
        }
    }
    for leaf in [0xb, 0x1f] {
        if !entries.iter().any(|e| e.function == leaf) {
            continue;
        }
        entries.retain(|e| e.function != leaf);
        let mut smt = CpuidEntry::new(leaf, 0, true);
        (smt.eax, smt.ebx, smt.ecx) = (0, 1, LEVEL_SMT << 8);
        let mut core = CpuidEntry::new(leaf, 1, true);
        (core.eax, core.ebx, core.ecx) = (shift, vcpus, (LEVEL_CORE << 8) | 1);
        // The invalid level that ends the list.
        let mut end = CpuidEntry::new(leaf, 2, true);
        end.ecx = 2;
        entries.extend([smt, core, end]);
    }
}

/// Sets vCPU `id`'s APIC id in the leaves that report it.
pub fn set_vcpu_id(e: &mut CpuidEntry, vendor: Vendor, id: u32) {
    match e.function {
        0x1 => e.ebx = (e.ebx & 0x00ff_ffff) | (id.min(255) << 24),
        0xb | 0x1f => e.edx = id,
        0x8000_001e if vendor == Vendor::Amd => {
            e.eax = id;
            e.ebx = id & 0xff; // compute unit id = core id
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_bits_cover_every_id() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(core_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
