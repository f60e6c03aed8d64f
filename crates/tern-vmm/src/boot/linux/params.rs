//! The e820 memory map Tern gives a Linux guest, and reading back the one
//! a kernel printed.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH,
};
use tern_probe_abi::MemRegion;
use vm_memory::GuestAddress;

use crate::memory::GuestMem;

use super::{
    LinuxError, BOOT_PARAMS_ADDR, CMDLINE_ADDR, EBDA_START, HIGH_MEMORY_START, LOADER_UNDEFINED,
};

/// Type of an e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM (type 1, printed "usable").
    Ram,
    /// Reserved (type 2, printed "reserved").
    Reserved,
    /// Any other type code.
    Other(u32),
}

impl E820Kind {
    /// The numeric e820 type.
    pub fn code(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
            E820Kind::Other(c) => c,
        }
    }

    /// The kind for a numeric e820 type.
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => E820Kind::Ram,
            2 => E820Kind::Reserved,
            c => E820Kind::Other(c),
        }
    }
}

/// One range of the e820 memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// The e820 map Tern gives a Linux guest with RAM `regions`.
///
/// Each RAM region is cut at [`EBDA_START`] and at 1 MiB: the part below
/// `EBDA_START` is usable RAM, the part from `EBDA_START` to 1 MiB is
/// reserved (where a PC has its EBDA, VGA window and BIOS ROM; Linux would
/// reserve it anyway), the part from 1 MiB on is usable RAM. Adjacent ranges
/// of one kind are merged, so the result is in the sorted, merged form the
/// kernel prints as "BIOS-provided physical RAM map". For a guest of up to
/// 3 GiB that is three entries: `[0, 0x9fc00)` usable,
/// `[0x9fc00, 0x100000)` reserved, `[0x100000, size)` usable; a larger guest
/// adds its RAM above 4 GiB as a fourth.
pub fn e820_map(regions: &[MemRegion]) -> Vec<E820Entry> {
    let cuts = [
        (0, EBDA_START, E820Kind::Ram),
        (EBDA_START, HIGH_MEMORY_START, E820Kind::Reserved),
        (HIGH_MEMORY_START, u64::MAX, E820Kind::Ram),
    ];
    let mut sorted: Vec<MemRegion> = regions.iter().copied().filter(|r| r.len > 0).collect();
    sorted.sort_by_key(|r| r.start);
    let mut out: Vec<E820Entry> = Vec::new();
    for r in sorted {
        let end = r.start.saturating_add(r.len);
        for &(lo, hi, kind) in &cuts {
            let s = r.start.max(lo);
            let e = end.min(hi);
            if s >= e {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.kind == kind && last.addr + last.size == s => {
                    last.size = e - last.addr;
                }
                _ => out.push(E820Entry {
                    addr: s,
                    size: e - s,
                    kind,
                }),
            }
        }
    }
    out
}

/// Parses the e820 map a kernel printed (its "BIOS-provided physical RAM
/// map:" lines, `BIOS-e820: [mem 0x%016Lx-0x%016Lx] <type>` with an
/// inclusive end, as in arch/x86/kernel/e820.c) from a serial log.
///
/// Returns the first contiguous run of such lines; a line that does not
/// parse ends it. Timestamps and `\r` are tolerated.
pub fn parse_e820_log(serial_text: &str) -> Vec<E820Entry> {
    const TAG: &str = "BIOS-e820: [mem ";
    let mut out = Vec::new();
    for line in serial_text.lines() {
        match line
            .find(TAG)
            .and_then(|at| parse_e820_line(&line[at + TAG.len()..]))
        {
            Some(e) => out.push(e),
            None if !out.is_empty() => break,
            None => {}
        }
    }
    out
}

/// Parses `0x<start>-0x<end>] <type>`.
fn parse_e820_line(rest: &str) -> Option<E820Entry> {
    let (range, kind) = rest.split_once("] ")?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start.strip_prefix("0x")?, 16).ok()?;
    let end = u64::from_str_radix(end.strip_prefix("0x")?, 16).ok()?;
    let size = end.checked_sub(start)?.checked_add(1)?;
    let kind = kind.trim_end();
    let kind = match kind {
        "usable" => E820Kind::Ram,
        "reserved" => E820Kind::Reserved,
        "ACPI data" => E820Kind::Other(3),
        "ACPI NVS" => E820Kind::Other(4),
        "unusable" => E820Kind::Other(5),
        "soft reserved" => E820Kind::Other(0xefff_ffff),
        other => {
            // "persistent (type 12)" and "type 13".
            let n = other
                .strip_prefix("persistent (type ")
                .and_then(|s| s.strip_suffix(')'))
                .or_else(|| other.strip_prefix("type "))?;
            E820Kind::Other(n.parse().ok()?)
        }
    };
    Some(E820Entry {
        addr: start,
        size,
        kind,
    })
}

/// Fills in the loader's part of the kernel's setup header `hdr` (command
/// line, initrd, loader type) and writes `boot_params` with the e820 map of
/// `regions` and the ACPI RSDP's address `rsdp` at [`BOOT_PARAMS_ADDR`].
pub(super) fn write_boot_params(
    mem: &GuestMem,
    regions: &[MemRegion],
    mut hdr: setup_header,
    initrd: Option<MemRegion>,
    rsdp: Option<u64>,
) -> Result<(), LinuxError> {
    let map = e820_map(regions);
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(LinuxError::TooManyE820Entries(map.len()));
    }

    hdr.type_of_loader = LOADER_UNDEFINED;
    // Only "loaded high" is true of what we did; the other flags are for
    // real-mode setup code we never run, or the kernel's own to set.
    hdr.loadflags = LOADED_HIGH;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    // Tern passes no setup_data chain; an image must not inject one.
    hdr.setup_data = 0;
    hdr.hardware_subarch = 0;
    hdr.hardware_subarch_data = 0;
    if let Some(rd) = initrd {
        // place_initrd kept it below 4 GiB, so it fits the 32-bit fields.
        hdr.ramdisk_image = rd.start as u32;
        hdr.ramdisk_size = rd.len as u32;
    } else {
        hdr.ramdisk_image = 0;
        hdr.ramdisk_size = 0;
    }

    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind.code(),
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMem>(
        &BootParams::new(&params, GuestAddress(BOOT_PARAMS_ADDR)),
        mem,
    )
    .map_err(LinuxError::BootParams)?;
    Ok(())
}
