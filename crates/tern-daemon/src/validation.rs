//! Checks of names, sizes and guest settings that requests carry: each
//! returns [`OpError::BadRequest`] naming what is wrong.

use tern_api::limits::{
    name_ok, DISK_ALIGN, MAX_DISK, MAX_MEMORY, MAX_VCPUS, MEMORY_ALIGN, MIN_DISK, MIN_MEMORY,
};

use crate::error::OpError;

/// Checks a VM or disk name.
pub fn check_name(kind: &str, name: &str) -> Result<(), OpError> {
    if name_ok(name) {
        Ok(())
    } else {
        Err(OpError::BadRequest(format!(
            "invalid {kind} name '{name}': use 1-63 characters of A-Z a-z 0-9 . _ -, \
             not starting with . or -"
        )))
    }
}

/// Checks a guest spec (`probe:WORKLOAD`, or `boot:ORDER` to boot from
/// the VM's disks, e.g. `boot:disk` or `boot:disk:1,disk:0`).
pub fn check_guest(guest: &str) -> Result<(), OpError> {
    if let Some(order) = guest.strip_prefix("boot:") {
        return boot_order(order)
            .map(|_| ())
            .map_err(|e| OpError::BadRequest(format!("invalid guest '{guest}': {e}")));
    }
    let workload = guest.strip_prefix("probe:").ok_or_else(|| {
        OpError::BadRequest(format!(
            "invalid guest '{guest}': expected probe:WORKLOAD (e.g. probe:hello) or boot:disk[:N],..."
        ))
    })?;
    tern_probe_abi::workload::parse(workload)
        .map(|_| ())
        .map_err(|e| OpError::BadRequest(format!("invalid guest '{guest}': {e}")))
}

/// A `boot:` guest's order. Only the VM's disks: the daemon attaches no
/// DVD drives yet.
pub fn boot_order(order: &str) -> Result<Vec<tern_worker_proto::launch::BootDevice>, String> {
    let devices = tern_worker_proto::launch::BootDevice::parse_order(order)?;
    if devices
        .iter()
        .any(|d| matches!(d, tern_worker_proto::launch::BootDevice::Dvd { .. }))
    {
        return Err("the daemon attaches no DVD drives yet: boot from disk[:N]".into());
    }
    Ok(devices)
}

/// Checks guest memory.
pub fn check_memory(memory: u64) -> Result<(), OpError> {
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory) || !memory.is_multiple_of(MEMORY_ALIGN) {
        return Err(OpError::BadRequest(format!(
            "invalid memory size {memory} bytes: must be a multiple of 2 MiB from 16 MiB to 1 TiB"
        )));
    }
    Ok(())
}

/// Checks a vCPU count.
pub fn check_vcpus(vcpus: u32) -> Result<(), OpError> {
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(OpError::BadRequest(format!(
            "invalid vcpus {vcpus}: must be from 1 to 64"
        )));
    }
    Ok(())
}

/// Checks a disk size.
pub fn check_size(size: u64) -> Result<(), OpError> {
    if !(MIN_DISK..=MAX_DISK).contains(&size) || !size.is_multiple_of(DISK_ALIGN) {
        return Err(OpError::BadRequest(format!(
            "invalid disk size {size} bytes: must be a multiple of 1 MiB from 1 MiB to 64 TiB"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert!(check_size(1 << 20).is_ok());
        assert!(check_size(0).is_err());
        assert!(check_size((1 << 20) + 512).is_err());
        assert!(check_size(65 << 40).is_err());
    }

    #[test]
    fn guests_are_probe_workloads_or_disk_boot_orders() {
        for ok in ["probe:hello", "boot:disk", "boot:disk:1,disk:0"] {
            assert!(check_guest(ok).is_ok(), "{ok}");
        }
        for bad in [
            "boot:",
            "boot:dvd",
            "boot:disk:x",
            "kernel:/boot/vmlinuz",
            "hello",
        ] {
            assert!(check_guest(bad).is_err(), "{bad}");
        }
    }
}
