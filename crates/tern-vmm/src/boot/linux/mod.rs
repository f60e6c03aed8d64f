//! The Linux boot path: a bzImage or an ELF `vmlinux` entered through the
//! 64-bit boot protocol (Documentation/arch/x86/boot.rst).
//!
//! [`load_linux`] puts everything in guest memory; the caller then sets up
//! the CPU (long mode, identity page tables over at least the first 4 GiB,
//! `__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18, interrupts off), sets RSI to
//! [`LinuxEntry::boot_params`] and RIP to [`LinuxEntry::entry`].
//!
//! Guest-physical layout (nothing here overlaps the GDT and TSS at 0x500 or
//! the page tables from 0x9000 that the CPU setup writes; those reach
//! 0x4b000 when the identity map covers 64 GiB):
//!
//! | range | contents |
//! |---|---|
//! | [`BOOT_PARAMS_ADDR`] (4 KiB) | `boot_params` ("zero page") |
//! | [`CMDLINE_ADDR`] .. + [`CMDLINE_SPACE`] | command line, NUL-terminated |
//! | [`EBDA_START`] .. 1 MiB | reserved in the e820 map (EBDA/BIOS area) |
//! | [`ACPI_TABLES_ADDR`] .. + [`ACPI_TABLES_SPACE`] (inside the reserved range above) | ACPI tables when given ([`LinuxConfig::acpi`]): the RSDP first, where the kernel's scan of 0xE0000-0xFFFFF finds it, and `boot_params.acpi_rsdp_addr` points (protocol 2.14+) |
//! | 1 MiB .. | bzImage protected-mode code, or the ELF segments at their physical addresses |
//! | top of RAM below `initrd_addr_max` | initrd, page aligned |
//!
//! Everything read from an image is untrusted: sizes and addresses are
//! checked before use, and a malformed image is an error, never a panic.
//!
//! The parts: `kernel` (image formats and loading), `cmdline` (command
//! line and initrd), `params` (`boot_params` and the e820 map); this module
//! holds the layout, the types and errors, and puts the parts together.

mod cmdline;
mod kernel;
mod params;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::ErrorKind;
use std::path::PathBuf;

use linux_loader::loader::bootparam::E820_MAX_ENTRIES_ZEROPAGE;
use tern_probe_abi::MemRegion;
use vm_memory::{Bytes, GuestAddress};

pub use cmdline::{cmdline_bytes, parse_cmdline_log, place_initrd};
pub use params::{e820_map, parse_e820_log, E820Entry, E820Kind};

use crate::memory::GuestMem;
use cmdline::load_initrd;
use kernel::{load_bzimage, load_elf, probe_image, read_head, Image};

/// Where the `boot_params` structure (the "zero page") is written.
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
/// Where the command line is written: above the largest identity page
/// tables, below [`EBDA_START`].
pub const CMDLINE_ADDR: u64 = 0x8_0000;
/// Room reserved for the command line, terminating NUL included.
pub const CMDLINE_SPACE: u64 = 0x1_0000;
/// Start of the extended BIOS data area; the e820 map reserves from here to
/// 1 MiB, as a PC BIOS would.
pub const EBDA_START: u64 = 0x9_fc00;
// The command line must stay in the RAM part of the legacy area.
const _: () = assert!(CMDLINE_ADDR + CMDLINE_SPACE <= EBDA_START);

/// Where the ACPI tables go: the start of the BIOS area the kernel scans
/// for an RSDP, inside the range the e820 map reserves.
pub const ACPI_TABLES_ADDR: u64 = 0xe_0000;
/// Room for the ACPI tables: up to 1 MiB.
pub const ACPI_TABLES_SPACE: u64 = HIGH_MEMORY_START - ACPI_TABLES_ADDR;
const _: () = assert!(ACPI_TABLES_ADDR >= EBDA_START);

/// Where RAM above the legacy area starts and where the kernel is loaded.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Command line used when the user gives none.
///
/// - `console=ttyS0,115200`: the kernel console on COM1 (port 0x3f8).
/// - `earlyprintk=serial,ttyS0,115200`: registers a boot console on COM1
///   during `setup_arch`, which replays the log from its start, so the
///   "Command line:" and "BIOS-e820:" lines reach the serial port even when
///   the boot stops before the real console driver loads (as under PVM).
/// - `reboot=t`: reboot by triple fault, which the VMM reports as a crash
///   (the worker's status 70). With it a panic (below) is told apart from
///   an orderly reboot; without it the kernel reboots through the FADT's
///   reset register, which ends the VM as a reboot (status 80).
/// - `panic=-1`: reboot (so the VMM stops) at once after a panic instead of
///   hanging.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 reboot=t panic=-1";

/// Offset of the 64-bit entry point in the protected-mode part of a bzImage.
const BZIMAGE_ENTRY_64: u64 = 0x200;
/// Offset of the setup header in a bzImage and in `boot_params`.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// The boot protocol version that brought the 64-bit entry point.
const PROTOCOL_64BIT: u16 = 0x020c;
/// The version we claim in a header synthesized for an ELF kernel.
const PROTOCOL_SYNTH: u16 = 0x020f;
/// `type_of_loader` for a loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// Kernel defaults for fields a header older than the field lacks.
const DEFAULT_CMDLINE_SIZE: u32 = 255;
const DEFAULT_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;
/// x86-64 `COMMAND_LINE_SIZE - 1`, for ELF kernels (they carry no header).
const ELF_CMDLINE_SIZE: u32 = 2047;
const ELF_INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
/// The 32-bit `ramdisk_image` field cannot point higher.
const FOUR_GIB: u64 = 1 << 32;
const PAGE: u64 = 4096;

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxConfig {
    /// The kernel: a bzImage or an ELF `vmlinux` (told apart by content).
    pub kernel: PathBuf,
    /// The command line, passed to the kernel verbatim.
    pub cmdline: String,
    /// An initial ramdisk, if any.
    pub initrd: Option<PathBuf>,
    /// ACPI tables, built for [`ACPI_TABLES_ADDR`] within
    /// [`ACPI_TABLES_SPACE`]; without them the kernel finds no RSDP.
    pub acpi: Option<tern_acpi::AcpiTables>,
}

impl LinuxConfig {
    /// Boots `kernel` with [`DEFAULT_CMDLINE`] and no initrd.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        LinuxConfig {
            kernel: kernel.into(),
            cmdline: DEFAULT_CMDLINE.to_string(),
            initrd: None,
            acpi: None,
        }
    }
}

/// The kind of kernel image found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage (x86 boot sector + setup + compressed kernel).
    BzImage,
    /// An uncompressed ELF `vmlinux`.
    Elf,
}

/// Where the loaded kernel starts and what it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxEntry {
    /// 64-bit entry point (RIP): `startup_64` of the image.
    pub entry: u64,
    /// Address of `boot_params` (RSI).
    pub boot_params: u64,
    /// What the image was.
    pub format: KernelFormat,
    /// Guest memory the loaded image occupies (file contents only; a bzImage
    /// decompresses elsewhere, within `kernel_reserved`).
    pub kernel: MemRegion,
    /// Guest memory the kernel needs before it has parsed the e820 map:
    /// the image plus, for a bzImage, its decompression buffer
    /// (`max(pref_address, load aligned) + init_size`).
    pub kernel_reserved: MemRegion,
    /// Address of the NUL-terminated command line.
    pub cmdline: u64,
    /// Where the initrd was put.
    pub initrd: Option<MemRegion>,
}

/// Why a Linux kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// The kernel file does not exist.
    #[error("kernel image {0} not found")]
    KernelNotFound(PathBuf),
    /// The kernel file could not be read.
    #[error("cannot read kernel image {path}")]
    KernelRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither a bzImage nor an ELF `vmlinux`.
    #[error("{path} is not a bzImage or an ELF vmlinux: {why}")]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// The image is a kernel, but not one this loader can start.
    #[error("kernel {path} is not supported: {why}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
    /// The kernel does not fit in guest RAM.
    #[error("kernel {path} needs RAM up to {need:#x}, but RAM from 1 MiB ends at {have:#x}")]
    KernelTooLarge {
        /// The file.
        path: PathBuf,
        /// End of the memory the kernel needs.
        need: u64,
        /// End of the RAM region the kernel is loaded in.
        have: u64,
    },
    /// linux-loader refused or failed to copy the image.
    #[error("cannot load kernel {path}")]
    Load {
        /// The file.
        path: PathBuf,
        /// linux-loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// Guest RAM lacks the low memory the boot protocol uses.
    #[error("guest RAM must start at 0 and extend past 1 MiB to boot Linux")]
    NoLowMemory,
    /// The command line is longer than the kernel accepts.
    #[error("command line is {len} bytes, the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit (`cmdline_size`).
        max: u64,
    },
    /// The command line contains a NUL byte, which would cut it short.
    #[error("command line contains a NUL byte at offset {0}")]
    CmdlineNul(usize),
    /// The initrd file does not exist.
    #[error("initrd {0} not found")]
    InitrdNotFound(PathBuf),
    /// The initrd file could not be read.
    #[error("cannot read initrd {path}")]
    InitrdRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The initrd is empty.
    #[error("initrd {0} is empty")]
    InitrdEmpty(PathBuf),
    /// No RAM is free for the initrd where the kernel can reach it.
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest RAM between {floor:#x} and {limit:#x}"
    )]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// End of the memory the kernel needs.
        floor: u64,
        /// Highest address the kernel accepts for the initrd's end.
        limit: u64,
    },
    /// Copying the initrd into guest memory failed.
    #[error("cannot copy initrd {path} into guest memory")]
    InitrdLoad {
        /// The file.
        path: PathBuf,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The e820 map has more entries than `boot_params` holds.
    #[error(
        "guest RAM layout needs {0} e820 entries, boot_params holds {E820_MAX_ENTRIES_ZEROPAGE}"
    )]
    TooManyE820Entries(usize),
    /// Writing boot data into guest memory failed.
    #[error("cannot write the {what} into guest memory")]
    Write {
        /// What was being written.
        what: &'static str,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// ACPI tables built for another place than [`ACPI_TABLES_ADDR`].
    #[error("ACPI tables at {start:#x}..{end:#x} are outside {ACPI_TABLES_ADDR:#x}..1 MiB")]
    AcpiPlacement {
        /// Their first byte.
        start: u64,
        /// One past their last.
        end: u64,
    },
    /// Writing `boot_params` failed.
    #[error("cannot write boot_params into guest memory")]
    BootParams(#[source] linux_loader::configurator::Error),
}

/// Writes `acpi`'s tables into `mem`; returns the RSDP's address.
fn write_acpi(mem: &GuestMem, acpi: &tern_acpi::AcpiTables) -> Result<u64, LinuxError> {
    let (start, end) = (acpi.rsdp_addr(), acpi.end());
    if start < ACPI_TABLES_ADDR || end > ACPI_TABLES_ADDR + ACPI_TABLES_SPACE {
        return Err(LinuxError::AcpiPlacement { start, end });
    }
    for t in acpi.tables() {
        mem.write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(|source| LinuxError::Write {
                what: "ACPI tables",
                source,
            })?;
    }
    Ok(start)
}

/// Loads the kernel, command line and initrd of `cfg` into `mem` (RAM
/// ranges `regions`) and writes `boot_params` for the 64-bit boot protocol.
pub fn load_linux(
    mem: &GuestMem,
    regions: &[MemRegion],
    cfg: &LinuxConfig,
) -> Result<LinuxEntry, LinuxError> {
    let low_end = regions
        .iter()
        .find(|r| r.start == 0)
        .map(|r| r.len)
        .filter(|&len| len > HIGH_MEMORY_START)
        .ok_or(LinuxError::NoLowMemory)?;
    // Refuse a bad command line before the expensive part.
    if let Some(at) = cfg.cmdline.bytes().position(|b| b == 0) {
        return Err(LinuxError::CmdlineNul(at));
    }

    let path = &cfg.kernel;
    let mut file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => LinuxError::KernelNotFound(path.clone()),
        _ => LinuxError::KernelRead {
            path: path.clone(),
            source: e,
        },
    })?;
    let file_len = file
        .metadata()
        .map_err(|source| LinuxError::KernelRead {
            path: path.clone(),
            source,
        })?
        .len();
    let head = read_head(&mut file, path)?;
    let image = probe_image(path, &head, file_len)?;

    let loaded = match image {
        Image::BzImage { hdr, setup_size } => {
            load_bzimage(mem, path, &mut file, hdr, setup_size, file_len, low_end)?
        }
        Image::Elf => load_elf(mem, path, &mut file, &head, low_end)?,
    };
    let hdr = loaded.hdr;

    let cmdline_max = if hdr.version >= 0x0206 {
        u64::from(hdr.cmdline_size)
    } else {
        u64::from(DEFAULT_CMDLINE_SIZE)
    };
    let cmdline = cmdline_bytes(&cfg.cmdline, cmdline_max)?;
    mem.write_slice(&cmdline, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| LinuxError::Write {
            what: "command line",
            source,
        })?;

    let initrd = match &cfg.initrd {
        None => None,
        Some(p) => {
            let max = if hdr.version >= 0x0203 {
                hdr.initrd_addr_max
            } else {
                DEFAULT_INITRD_ADDR_MAX
            };
            let limit = (u64::from(max) + 1).min(FOUR_GIB);
            let floor = loaded.reserved.start + loaded.reserved.len;
            Some(load_initrd(mem, regions, p, floor, limit)?)
        }
    };

    let rsdp = match &cfg.acpi {
        Some(acpi) => Some(write_acpi(mem, acpi)?),
        None => None,
    };
    // acpi_rsdp_addr is read from protocol 2.14 on; older kernels scan.
    let rsdp = rsdp.filter(|_| hdr.version >= 0x020e);
    params::write_boot_params(mem, regions, loaded.hdr, initrd, rsdp)?;

    Ok(LinuxEntry {
        entry: loaded.entry,
        boot_params: BOOT_PARAMS_ADDR,
        format: image.format(),
        kernel: loaded.image,
        kernel_reserved: loaded.reserved,
        cmdline: CMDLINE_ADDR,
        initrd,
    })
}
