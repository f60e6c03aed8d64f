//! Loading the probe guest: its ELF image and the boot info page.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::{elf::Elf, KernelLoader};
use tern_probe_abi::{
    BootInfo, DeviceInfo, MemRegion, ABI_VERSION, BOOT_INFO_ADDR, BOOT_MAGIC, DEVICE_MEM_BASE,
    IMAGE_BASE, MAX_DEVICES, MAX_MEM_REGIONS, WORKLOAD_MAX,
};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

/// Errors loading the probe guest.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The image file cannot be opened.
    #[error("cannot open probe guest image {path}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image is not a loadable x86-64 ELF.
    #[error("probe guest image {path} is not a loadable x86-64 ELF: {why}")]
    NotElf {
        /// The image.
        path: PathBuf,
        /// The loader's innermost complaint (its own errors nest and repeat).
        why: String,
    },
    /// The image lies outside the area reserved for it.
    #[error("probe guest image {path} spans {start:#x}..{end:#x}, outside {IMAGE_BASE:#x}..{DEVICE_MEM_BASE:#x}")]
    Placement {
        /// The image.
        path: PathBuf,
        /// Lowest address (entry).
        start: u64,
        /// End of the highest segment.
        end: u64,
    },
    /// The workload text does not fit the boot info page.
    #[error("probe workload is {0} bytes, more than {WORKLOAD_MAX}")]
    WorkloadTooLong(usize),
    /// Guest memory too small.
    #[error("guest memory too small for the probe guest's boot info")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// Loads the probe image; returns its entry point.
pub fn load_image(mem: &GuestMem, path: &Path) -> Result<u64, ProbeError> {
    let mut f = File::open(path).map_err(|source| ProbeError::Open {
        path: path.into(),
        source,
    })?;
    let r = Elf::load(mem, None, &mut f, Some(GuestAddress(IMAGE_BASE))).map_err(|e| {
        let mut inner: &dyn std::error::Error = &e;
        while let Some(next) = inner.source() {
            inner = next;
        }
        ProbeError::NotElf {
            path: path.into(),
            why: inner.to_string(),
        }
    })?;
    let start = r.kernel_load.0;
    if start < IMAGE_BASE || r.kernel_end > DEVICE_MEM_BASE || start >= r.kernel_end {
        return Err(ProbeError::Placement {
            path: path.into(),
            start,
            end: r.kernel_end,
        });
    }
    Ok(start)
}

/// Writes the boot info page the guest reads first.
pub fn write_boot_info(
    mem: &GuestMem,
    vcpus: u32,
    tsc_khz: u64,
    regions: &[MemRegion],
    devices: &[DeviceInfo],
    workload: &str,
) -> Result<(), ProbeError> {
    if workload.len() > WORKLOAD_MAX {
        return Err(ProbeError::WorkloadTooLong(workload.len()));
    }
    let mut info = BootInfo {
        magic: BOOT_MAGIC,
        version: ABI_VERSION,
        vcpus,
        tsc_khz,
        mem_count: regions.len().min(MAX_MEM_REGIONS) as u32,
        workload_len: workload.len() as u32,
        mem: [MemRegion::default(); MAX_MEM_REGIONS],
        workload: [0; WORKLOAD_MAX],
        device_count: devices.len().min(MAX_DEVICES) as u32,
        _pad: 0,
        devices: [DeviceInfo::default(); MAX_DEVICES],
    };
    for (slot, d) in info.devices.iter_mut().zip(devices) {
        *slot = *d;
    }
    for (slot, r) in info.mem.iter_mut().zip(regions) {
        *slot = *r;
    }
    info.workload[..workload.len()].copy_from_slice(workload.as_bytes());
    mem.write_slice(&boot_info_bytes(&info), GuestAddress(BOOT_INFO_ADDR))
        .map_err(ProbeError::Memory)
}

/// Serializes `BootInfo` field by field in its `repr(C)` layout (no unsafe
/// transmute needed; the layout test in tern-probe-abi pins the offsets).
fn boot_info_bytes(info: &BootInfo) -> Vec<u8> {
    use std::mem::offset_of;
    let mut b = vec![0u8; std::mem::size_of::<BootInfo>()];
    let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(BootInfo, magic), &info.magic.to_le_bytes());
    put(offset_of!(BootInfo, version), &info.version.to_le_bytes());
    put(offset_of!(BootInfo, vcpus), &info.vcpus.to_le_bytes());
    put(offset_of!(BootInfo, tsc_khz), &info.tsc_khz.to_le_bytes());
    put(
        offset_of!(BootInfo, mem_count),
        &info.mem_count.to_le_bytes(),
    );
    put(
        offset_of!(BootInfo, workload_len),
        &info.workload_len.to_le_bytes(),
    );
    for (i, r) in info.mem.iter().enumerate() {
        let off = offset_of!(BootInfo, mem) + i * std::mem::size_of::<MemRegion>();
        put(off, &r.start.to_le_bytes());
        put(off + 8, &r.len.to_le_bytes());
    }
    put(offset_of!(BootInfo, workload), &info.workload);
    put(
        offset_of!(BootInfo, device_count),
        &info.device_count.to_le_bytes(),
    );
    for (i, d) in info.devices.iter().enumerate() {
        let off = offset_of!(BootInfo, devices) + i * std::mem::size_of::<DeviceInfo>();
        put(off + offset_of!(DeviceInfo, kind), &d.kind.to_le_bytes());
        put(off + offset_of!(DeviceInfo, irq), &d.irq.to_le_bytes());
        put(
            off + offset_of!(DeviceInfo, mmio_base),
            &d.mmio_base.to_le_bytes(),
        );
        put(
            off + offset_of!(DeviceInfo, mmio_len),
            &d.mmio_len.to_le_bytes(),
        );
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, GuestRam};

    #[test]
    fn boot_info_lands_where_the_guest_reads_it() {
        let ram = GuestRam::new(32 << 20, Backing::Anonymous).unwrap();
        let dev = DeviceInfo {
            kind: tern_probe_abi::DEVICE_VIRTIO_BLK,
            irq: 16,
            mmio_base: 0xd000_0000,
            mmio_len: 0x1000,
        };
        let off = |o: usize| GuestAddress(BOOT_INFO_ADDR + o as u64);
        write_boot_info(&ram.mem, 3, 2_000_000, &ram.regions, &[dev], "dirty,mib=4").unwrap();
        let base: u64 = ram
            .mem
            .read_obj(off(std::mem::offset_of!(BootInfo, devices)
                + std::mem::offset_of!(DeviceInfo, mmio_base)))
            .unwrap();
        assert_eq!(base, 0xd000_0000);
        let magic: u64 = ram.mem.read_obj(GuestAddress(BOOT_INFO_ADDR)).unwrap();
        assert_eq!(magic, BOOT_MAGIC);
        let off = |o: usize| GuestAddress(BOOT_INFO_ADDR + o as u64);
        let vcpus: u32 = ram
            .mem
            .read_obj(off(std::mem::offset_of!(BootInfo, vcpus)))
            .unwrap();
        assert_eq!(vcpus, 3);
        let len: u64 = ram
            .mem
            .read_obj(off(std::mem::offset_of!(BootInfo, mem) + 8))
            .unwrap();
        assert_eq!(len, 32 << 20);
        let mut w = [0u8; 11];
        ram.mem
            .read_slice(&mut w, off(std::mem::offset_of!(BootInfo, workload)))
            .unwrap();
        assert_eq!(&w, b"dirty,mib=4");
    }

    #[test]
    fn refuses_non_elf_and_missing_images() {
        let ram = GuestRam::new(32 << 20, Backing::Anonymous).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"#!/bin/sh\necho not an elf\n").unwrap();
        let e = load_image(&ram.mem, &junk).unwrap_err();
        assert!(e.to_string().contains("not a loadable x86-64 ELF"), "{e}");
        let e = load_image(&ram.mem, &dir.path().join("absent")).unwrap_err();
        assert!(e.to_string().contains("cannot open"), "{e}");
        assert!(write_boot_info(&ram.mem, 1, 0, &ram.regions, &[], &"x".repeat(5000)).is_err());
    }
}
