//! What the VMM told the guest: the [`BootInfo`] page.

use tern_probe_abi::{
    BootInfo, MemRegion, ABI_VERSION, BOOT_INFO_ADDR, BOOT_MAGIC, MAX_MEM_REGIONS,
};

/// The boot info page. The VMM fills it before the first vCPU runs and never
/// changes it afterwards.
pub fn info() -> &'static BootInfo {
    // SAFETY: BOOT_INFO_ADDR is identity-mapped RAM holding a `BootInfo`
    // (any bit pattern is a valid one), read-only for the whole run.
    unsafe { &*(BOOT_INFO_ADDR as *const BootInfo) }
}

/// Whether the VMM speaks this guest's ABI; the reason (one word) if not.
pub fn validate(info: &BootInfo) -> Result<(), &'static str> {
    if info.magic != BOOT_MAGIC {
        Err("bad-magic")
    } else if info.version != ABI_VERSION {
        Err("unsupported-version")
    } else if info.mem_count as usize > MAX_MEM_REGIONS {
        Err("too-many-regions")
    } else if info.workload_len as usize > info.workload.len() {
        Err("workload-too-long")
    } else {
        Ok(())
    }
}

/// The RAM regions (valid after [`validate`]).
pub fn regions(info: &BootInfo) -> &[MemRegion] {
    &info.mem[..info.mem_count as usize]
}

/// Total RAM in bytes.
pub fn ram_bytes(info: &BootInfo) -> u64 {
    regions(info).iter().map(|r| r.len).sum()
}

/// The workload text (valid after [`validate`]); `None` if it is not UTF-8.
pub fn workload(info: &BootInfo) -> Option<&str> {
    core::str::from_utf8(&info.workload[..info.workload_len as usize]).ok()
}
