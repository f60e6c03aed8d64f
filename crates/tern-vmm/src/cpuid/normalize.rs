//! The pipeline from KVM's supported set to a guest's CPUID template.

use super::{find, find_mut, models, topology, xsave, CpuModel, CpuidEntry, CpuidError, Vendor};

/// The hypervisor bit of leaf 1 ECX.
const HYPERVISOR: u32 = 1 << 31;

/// Builds the template for `vcpus` vCPUs of `model` from KVM's supported
/// set: the model's features, the hypervisor bit and leaves, XSAVE made
/// consistent, the topology of one socket of `vcpus` cores. Sorted by leaf
/// and subleaf.
pub fn normalize(
    supported: &[CpuidEntry],
    model: CpuModel,
    vcpus: u32,
) -> Result<Vec<CpuidEntry>, CpuidError> {
    for leaf in [0x0, 0x1] {
        if find(supported, leaf, 0).is_none() {
            return Err(CpuidError::MissingLeaf(leaf));
        }
    }
    let mut entries = supported.to_vec();
    let vendor = Vendor::of(&entries);
    if model == CpuModel::Compat {
        models::apply_compat(&mut entries);
    }
    if let Some(l1) = find_mut(&mut entries, 0x1, 0) {
        l1.ecx |= HYPERVISOR;
    }
    hypervisor_leaves(&mut entries);
    xsave::normalize(&mut entries);
    topology::normalize(&mut entries, vendor, vcpus);
    entries.sort_by_key(|e| (e.function, e.index));
    Ok(entries)
}

/// KVM's own leaves (0x40000000: signature and the highest hypervisor
/// leaf; 0x40000001: KVM's paravirtual features, kvmclock among them) stay
/// as KVM offers them; the highest-leaf value is made to match the leaves
/// that are there.
fn hypervisor_leaves(entries: &mut [CpuidEntry]) {
    let top = entries
        .iter()
        .filter(|e| (0x4000_0001..0x4000_0100).contains(&e.function))
        .map(|e| e.function)
        .max();
    if let Some(base) = find_mut(entries, 0x4000_0000, 0) {
        base.eax = top.unwrap_or(0x4000_0000);
    }
}
