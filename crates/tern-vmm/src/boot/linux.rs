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
//! | 1 MiB .. | bzImage protected-mode code, or the ELF segments at their physical addresses |
//! | top of RAM below `initrd_addr_max` | initrd, page aligned |
//!
//! Everything read from an image is untrusted: sizes and addresses are
//! checked before use, and a malformed image is an error, never a panic.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH,
    XLF_KERNEL_64,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use tern_probe_abi::MemRegion;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

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

/// Where RAM above the legacy area starts and where the kernel is loaded.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Command line used when the user gives none.
///
/// - `console=ttyS0,115200`: the kernel console on COM1 (port 0x3f8).
/// - `earlyprintk=serial,ttyS0,115200`: registers a boot console on COM1
///   during `setup_arch`, which replays the log from its start, so the
///   "Command line:" and "BIOS-e820:" lines reach the serial port even when
///   the boot stops before the real console driver loads (as under PVM).
/// - `reboot=t`: reboot by triple fault, which the VMM sees as a shutdown
///   exit; Tern emulates no keyboard controller or ACPI reset register.
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
}

impl LinuxConfig {
    /// Boots `kernel` with [`DEFAULT_CMDLINE`] and no initrd.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        LinuxConfig {
            kernel: kernel.into(),
            cmdline: DEFAULT_CMDLINE.to_string(),
            initrd: None,
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
    /// Writing `boot_params` failed.
    #[error("cannot write boot_params into guest memory")]
    BootParams(#[source] linux_loader::configurator::Error),
}

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

/// The highest page-aligned address for `size` bytes of initrd inside one
/// of `regions`, not below `floor` and ending at or below `limit`.
pub fn place_initrd(regions: &[MemRegion], size: u64, floor: u64, limit: u64) -> Option<u64> {
    regions
        .iter()
        .filter_map(|r| {
            let top = r.start.checked_add(r.len)?.min(limit);
            let addr = top.checked_sub(size)? & !(PAGE - 1);
            (addr >= r.start && addr >= floor).then_some(addr)
        })
        .max()
}

/// Checks `cmdline` against the kernel's limit of `max` bytes (without the
/// terminating NUL) and returns the bytes to write, NUL included.
pub fn cmdline_bytes(cmdline: &str, max: u64) -> Result<Vec<u8>, LinuxError> {
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(LinuxError::CmdlineNul(at));
    }
    let max = max.min(CMDLINE_SPACE - 1);
    if cmdline.len() as u64 > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut v = Vec::with_capacity(cmdline.len() + 1);
    v.extend_from_slice(cmdline.as_bytes());
    v.push(0);
    Ok(v)
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
    let mut hdr = loaded.hdr;

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

/// Bytes of the file start read to recognise the format (covers the setup
/// header and an ELF header).
const HEAD_LEN: usize = 4096;

fn read_head(file: &mut File, path: &Path) -> Result<Vec<u8>, LinuxError> {
    let mut head = Vec::with_capacity(HEAD_LEN);
    file.by_ref()
        .take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|source| LinuxError::KernelRead {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(head)
}

#[derive(Clone, Copy)]
enum Image {
    BzImage { hdr: setup_header, setup_size: u64 },
    Elf,
}

impl Image {
    fn format(&self) -> KernelFormat {
        match self {
            Image::BzImage { .. } => KernelFormat::BzImage,
            Image::Elf => KernelFormat::Elf,
        }
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Tells a bzImage from an ELF file and checks what can be checked from the
/// first bytes and the file length.
fn probe_image(path: &Path, head: &[u8], file_len: u64) -> Result<Image, LinuxError> {
    let not = |why: String| LinuxError::NotAKernel {
        path: path.to_path_buf(),
        why,
    };
    let unsupported = |why: String| LinuxError::Unsupported {
        path: path.to_path_buf(),
        why,
    };
    if head.is_empty() {
        return Err(not("the file is empty".into()));
    }
    if head.starts_with(b"\x7fELF") {
        if head.len() < 64 {
            return Err(not("truncated ELF header".into()));
        }
        if head[4] != 2 {
            return Err(unsupported("32-bit ELF; need an x86-64 vmlinux".into()));
        }
        if head[5] != 1 {
            return Err(unsupported("big-endian ELF".into()));
        }
        let machine = le16(head, 18);
        if machine != 62 {
            return Err(unsupported(format!(
                "ELF machine {machine}, not x86-64 (62)"
            )));
        }
        return Ok(Image::Elf);
    }
    let hdr_end = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();
    if head.len() < hdr_end || le32(head, 0x202) != HDRS_MAGIC {
        return Err(not("no ELF magic and no \"HdrS\" setup header".into()));
    }
    let mut hdr = setup_header::default();
    vm_memory::ByteValued::as_mut_slice(&mut hdr)
        .copy_from_slice(&head[SETUP_HEADER_OFFSET..hdr_end]);
    let version = hdr.version;
    let xloadflags = hdr.xloadflags;
    if version < PROTOCOL_64BIT || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(unsupported(format!(
            "no 64-bit entry point (boot protocol {}.{:02}, needs 2.12 with XLF_KERNEL_64)",
            version >> 8,
            version & 0xff
        )));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(unsupported("not a bzImage (zImage loads low)".into()));
    }
    let sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let setup_size = (sects + 1) * 512;
    // syssize counts 16-byte paragraphs of the protected-mode part.
    let sys_size = u64::from(hdr.syssize) * 16;
    if file_len <= setup_size || file_len - setup_size < sys_size {
        return Err(not(format!(
            "truncated bzImage: {file_len} bytes, header announces {}",
            setup_size + sys_size
        )));
    }
    Ok(Image::BzImage { hdr, setup_size })
}

struct Loaded {
    entry: u64,
    hdr: setup_header,
    image: MemRegion,
    reserved: MemRegion,
}

fn too_large(path: &Path, need: u64, have: u64) -> LinuxError {
    LinuxError::KernelTooLarge {
        path: path.to_path_buf(),
        need,
        have,
    }
}

fn load_bzimage(
    mem: &GuestMem,
    path: &Path,
    file: &mut File,
    hdr: setup_header,
    setup_size: u64,
    file_len: u64,
    low_end: u64,
) -> Result<Loaded, LinuxError> {
    let load = HIGH_MEMORY_START;
    let image_end = load + (file_len - setup_size);
    // Where the decompressor will work: head_64.S aligns the load address up
    // to kernel_alignment (relocatable kernels), never below pref_address,
    // and needs init_size bytes from there.
    let align = u64::from(hdr.kernel_alignment);
    let pref = hdr.pref_address;
    let base = if hdr.relocatable_kernel != 0 && align.is_power_of_two() {
        ((load + align - 1) & !(align - 1)).max(pref)
    } else {
        pref.max(load)
    };
    let need = base
        .checked_add(u64::from(hdr.init_size))
        .ok_or_else(|| too_large(path, u64::MAX, low_end))?
        .max(image_end);
    if need > low_end {
        return Err(too_large(path, need, low_end));
    }
    // The file may have grown since it was measured; linux-loader then fails
    // cleanly on the memory bound.
    let res = BzImage::load(mem, Some(GuestAddress(load)), file, None).map_err(|source| {
        LinuxError::Load {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let hdr = res.setup_header.unwrap_or(hdr);
    Ok(Loaded {
        entry: load + BZIMAGE_ENTRY_64,
        hdr,
        image: MemRegion {
            start: load,
            len: res.kernel_end.saturating_sub(load),
        },
        reserved: MemRegion {
            start: load,
            len: need - load,
        },
    })
}

/// Most program headers we read; real kernels have a handful.
const MAX_PHDRS: u64 = 256;

fn load_elf(
    mem: &GuestMem,
    path: &Path,
    file: &mut File,
    head: &[u8],
    low_end: u64,
) -> Result<Loaded, LinuxError> {
    let not = |why: String| LinuxError::NotAKernel {
        path: path.to_path_buf(),
        why,
    };
    let entry = le64(head, 24);
    let phoff = le64(head, 32);
    let phentsize = u64::from(le16(head, 54));
    let phnum = u64::from(le16(head, 56));
    if phentsize != 56 || phnum == 0 || phnum > MAX_PHDRS {
        return Err(not(format!(
            "bad ELF program headers ({phnum} of {phentsize} bytes)"
        )));
    }
    let mut phdrs = vec![0u8; (phnum * phentsize) as usize];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut phdrs))
        .map_err(|_| not("truncated ELF program headers".into()))?;
    // The extent of what linux-loader will copy: PT_LOAD with file contents.
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for ph in phdrs.chunks_exact(56) {
        let (p_type, paddr, filesz, memsz) =
            (le32(ph, 0), le64(ph, 24), le64(ph, 32), le64(ph, 40));
        if p_type != 1 || filesz == 0 {
            continue;
        }
        let end = paddr
            .checked_add(memsz.max(filesz))
            .ok_or_else(|| not("ELF segment address overflows".into()))?;
        lo = lo.min(paddr);
        hi = hi.max(end);
    }
    if lo == u64::MAX {
        return Err(not("ELF file has no loadable segment".into()));
    }
    if lo < HIGH_MEMORY_START {
        return Err(LinuxError::Unsupported {
            path: path.to_path_buf(),
            why: format!("ELF segment at {lo:#x}, below 1 MiB where the boot data lives"),
        });
    }
    if hi > low_end {
        return Err(too_large(path, hi, low_end));
    }
    if !(lo..hi).contains(&entry) {
        return Err(LinuxError::Unsupported {
            path: path.to_path_buf(),
            why: format!("entry point {entry:#x} outside the loaded segments {lo:#x}..{hi:#x}"),
        });
    }
    let res =
        Elf::load(mem, None, file, Some(GuestAddress(HIGH_MEMORY_START))).map_err(|source| {
            LinuxError::Load {
                path: path.to_path_buf(),
                source,
            }
        })?;
    // An ELF kernel has no setup header: write the one a bzImage of the same
    // protocol would carry, with the kernel's compiled-in limits.
    let hdr = setup_header {
        boot_flag: BOOT_FLAG_MAGIC,
        header: HDRS_MAGIC,
        version: PROTOCOL_SYNTH,
        loadflags: LOADED_HIGH,
        code32_start: lo as u32,
        initrd_addr_max: ELF_INITRD_ADDR_MAX,
        kernel_alignment: 0x20_0000,
        relocatable_kernel: 0,
        xloadflags: XLF_KERNEL_64,
        cmdline_size: ELF_CMDLINE_SIZE,
        ..Default::default()
    };
    Ok(Loaded {
        entry: res.kernel_load.0,
        hdr,
        image: MemRegion {
            start: lo,
            len: hi - lo,
        },
        reserved: MemRegion {
            start: lo,
            len: hi - lo,
        },
    })
}

fn load_initrd(
    mem: &GuestMem,
    regions: &[MemRegion],
    path: &Path,
    floor: u64,
    limit: u64,
) -> Result<MemRegion, LinuxError> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => LinuxError::InitrdNotFound(path.to_path_buf()),
        _ => LinuxError::InitrdRead {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let size = file
        .metadata()
        .map_err(|source| LinuxError::InitrdRead {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if size == 0 {
        return Err(LinuxError::InitrdEmpty(path.to_path_buf()));
    }
    let addr = place_initrd(regions, size, floor, limit).ok_or(LinuxError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        floor,
        limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| LinuxError::InitrdLoad {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(MemRegion {
        start: addr,
        len: size,
    })
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

/// The command line a kernel printed (`Command line: ...`, from x86-64's
/// `setup_arch`), or `None` if the log has none yet.
///
/// Only complete lines count, so a line still being printed is not cut
/// short; the kernel's later "Kernel command line:" is not matched.
pub fn parse_cmdline_log(serial_text: &str) -> Option<&str> {
    const TAG: &str = "Command line: ";
    let mut rest = serial_text;
    while let Some(nl) = rest.find('\n') {
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        if let Some(at) = line.find(TAG) {
            let line = line.strip_suffix('\r').unwrap_or(line);
            return Some(&line[at + TAG.len()..]);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{ram_regions, Backing, GuestRam};
    use std::io::Write;

    fn ram(start: u64, len: u64) -> MemRegion {
        MemRegion { start, len }
    }

    fn e(addr: u64, size: u64, kind: E820Kind) -> E820Entry {
        E820Entry { addr, size, kind }
    }

    #[test]
    fn e820_of_a_small_guest() {
        assert_eq!(
            e820_map(&ram_regions(512 << 20)),
            vec![
                e(0, 0x9fc00, E820Kind::Ram),
                e(0x9fc00, 0x100000 - 0x9fc00, E820Kind::Reserved),
                e(0x100000, (512 << 20) - 0x100000, E820Kind::Ram),
            ]
        );
    }

    #[test]
    fn e820_of_a_large_guest_has_the_high_region() {
        let map = e820_map(&ram_regions(6 << 30));
        assert_eq!(map.len(), 4);
        assert_eq!(map[2], e(0x100000, 0xc000_0000 - 0x100000, E820Kind::Ram));
        assert_eq!(map[3], e(1 << 32, (6 << 30) - 0xc000_0000, E820Kind::Ram));
    }

    #[test]
    fn e820_of_odd_regions() {
        // Exactly 1 MiB: no RAM above the legacy area.
        assert_eq!(
            e820_map(&[ram(0, 0x100000)]),
            vec![
                e(0, 0x9fc00, E820Kind::Ram),
                e(0x9fc00, 0x60400, E820Kind::Reserved)
            ]
        );
        // Split regions touching each other are merged; empty ones vanish.
        assert_eq!(
            e820_map(&[
                ram(0x200000, 0x100000),
                ram(0x100000, 0x100000),
                ram(0x500000, 0)
            ]),
            vec![e(0x100000, 0x200000, E820Kind::Ram)]
        );
        assert_eq!(e820_map(&[]), vec![]);
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let r = ram_regions(512 << 20);
        assert_eq!(
            place_initrd(&r, 0x1000, 0x100000, u64::MAX),
            Some((512 << 20) - 0x1000)
        );
        assert_eq!(
            place_initrd(&r, 0x1001, 0x100000, u64::MAX),
            Some((512 << 20) - 0x2000)
        );
        // The limit wins over the RAM end.
        assert_eq!(
            place_initrd(&r, 0x800, 0x100000, 0x1000_0000),
            Some(0x1000_0000 - 0x1000)
        );
        // Never below the kernel.
        assert_eq!(place_initrd(&r, 0x1000_0000, 0x1000_0001, u64::MAX), None);
        assert_eq!(
            place_initrd(&r, 0x1000_0000, 0x1000_0000, u64::MAX),
            Some(0x1000_0000)
        );
        // Larger than RAM.
        assert_eq!(place_initrd(&r, 1 << 30, 0, u64::MAX), None);
        // With RAM above 4 GiB but a 4 GiB limit it stays in the low region.
        let big = ram_regions(8 << 30);
        assert_eq!(
            place_initrd(&big, 0x1000, 0x100000, FOUR_GIB),
            Some(0xc000_0000 - 0x1000)
        );
    }

    #[test]
    fn cmdline_is_checked() {
        assert_eq!(cmdline_bytes("a b", 2047).unwrap(), b"a b\0");
        assert_eq!(cmdline_bytes("", 2047).unwrap(), b"\0");
        assert_eq!(cmdline_bytes(&"x".repeat(2047), 2047).unwrap().len(), 2048);
        let err = cmdline_bytes(&"x".repeat(2048), 2047).unwrap_err();
        assert!(matches!(
            err,
            LinuxError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        ));
        assert_eq!(
            err.to_string(),
            "command line is 2048 bytes, the kernel accepts at most 2047"
        );
        assert!(matches!(
            cmdline_bytes("a\0b", 2047),
            Err(LinuxError::CmdlineNul(1))
        ));
        // A header claiming a huge limit is capped by the space we reserve.
        assert!(cmdline_bytes(&"x".repeat(CMDLINE_SPACE as usize), u64::from(u32::MAX)).is_err());
    }

    /// Text in the exact format of arch/x86/kernel/e820.c, as a serial log
    /// with timestamps and CRLF line ends shows it.
    const SAMPLE_LOG: &str = "\
[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1\r
[    0.000000] Command line: console=ttyS0 tern-marker-42  root=/dev/vda\r
[    0.000000] BIOS-provided physical RAM map:\r
[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\r
[    0.000000] BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved\r
[    0.000000] BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable\r
[    0.000000] BIOS-e820: [mem 0x0000000100000000-0x000000013fffffff] persistent (type 12)\r
[    0.000000] printk: bootconsole [earlyser0] enabled\r
[    0.000000] e820: update [mem 0x00000000-0x00000fff] usable ==> reserved\r
[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x0000000000000fff] usable\r
[    0.000000] Kernel command line: console=ttyS0 tern-marker-42  root=/dev/vda\r
";

    #[test]
    fn parses_the_kernels_e820_lines() {
        assert_eq!(
            parse_e820_log(SAMPLE_LOG),
            vec![
                e(0, 0x9fc00, E820Kind::Ram),
                e(0x9fc00, 0x60400, E820Kind::Reserved),
                e(0x100000, 0x1ff00000, E820Kind::Ram),
                e(1 << 32, 1 << 30, E820Kind::Other(12)),
            ]
        );
        assert_eq!(
            parse_e820_log(&SAMPLE_LOG.replace('\r', ""))[..3],
            e820_map(&ram_regions(512 << 20))[..]
        );
        assert_eq!(parse_e820_log("no map here\n"), vec![]);
        assert_eq!(
            parse_e820_log(
                "BIOS-e820: [mem 0x10-0x1f] ACPI NVS\nBIOS-e820: [mem 0x20-0x2f] type 20\n"
            ),
            vec![
                e(0x10, 0x10, E820Kind::Other(4)),
                e(0x20, 0x10, E820Kind::Other(20))
            ]
        );
        // Malformed: end before start, bad hex, unknown type.
        assert_eq!(
            parse_e820_log("BIOS-e820: [mem 0x20-0x1f] usable\n"),
            vec![]
        );
        assert_eq!(
            parse_e820_log("BIOS-e820: [mem 0xzz-0x1f] usable\n"),
            vec![]
        );
        assert_eq!(parse_e820_log("BIOS-e820: [mem 0x0-0x1f] weird\n"), vec![]);
    }

    #[test]
    fn parses_the_kernels_command_line() {
        assert_eq!(
            parse_cmdline_log(SAMPLE_LOG),
            Some("console=ttyS0 tern-marker-42  root=/dev/vda")
        );
        assert_eq!(parse_cmdline_log("Kernel command line: x\n"), None);
        // A line still being printed does not count.
        assert_eq!(parse_cmdline_log("[ 0.0] Command line: abc"), None);
        assert_eq!(parse_cmdline_log("Command line: \n"), Some(""));
    }

    fn temp_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    /// A minimal x86-64 ELF: one PT_LOAD of `code` at `paddr`, entry there.
    fn tiny_elf(paddr: u64, entry: u64, code: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 64 + 56];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2; // 64-bit
        v[5] = 1; // little endian
        v[6] = 1;
        v[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        v[18..20].copy_from_slice(&62u16.to_le_bytes());
        v[20..24].copy_from_slice(&1u32.to_le_bytes());
        v[24..32].copy_from_slice(&entry.to_le_bytes());
        v[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        v[52..54].copy_from_slice(&64u16.to_le_bytes());
        v[54..56].copy_from_slice(&56u16.to_le_bytes());
        v[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut v[64..120];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes());
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(code.len() as u64 + 0x1000).to_le_bytes());
        v.extend_from_slice(code);
        v
    }

    #[test]
    fn loads_an_elf_kernel_with_a_synthesized_header() {
        let ram = GuestRam::new(64 << 20, Backing::Anonymous).unwrap();
        let code = [0xf4u8; 32]; // hlt
        let k = temp_with(&tiny_elf(0x100_0000, 0x100_0010, &code));
        let rd = temp_with(&[7u8; 5000]);
        let cfg = LinuxConfig {
            kernel: k.path().into(),
            cmdline: "hello world".into(),
            initrd: Some(rd.path().into()),
        };
        let got = load_linux(&ram.mem, &ram.regions, &cfg).unwrap();
        assert_eq!(got.format, KernelFormat::Elf);
        assert_eq!(got.entry, 0x100_0010);
        assert_eq!(got.kernel, ram_at(0x100_0000, 32 + 0x1000));
        let rd_at = got.initrd.unwrap();
        assert_eq!(rd_at, ram_at((64 << 20) - 0x2000, 5000));

        let mut back = [0u8; 32];
        ram.mem
            .read_slice(&mut back, GuestAddress(0x100_0000))
            .unwrap();
        assert_eq!(back, code);
        let p: boot_params = ram.mem.read_obj(GuestAddress(got.boot_params)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.ramdisk_image }, rd_at.start as u32);
        assert_eq!({ hdr.ramdisk_size }, 5000);
        let mut cl = [0u8; 12];
        ram.mem
            .read_slice(&mut cl, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cl, b"hello world\0");
        assert_eq!(p.e820_entries, 3);
        let table = p.e820_table;
        let map: Vec<E820Entry> = table[..3]
            .iter()
            .map(|t| e(t.addr, t.size, E820Kind::from_code(t.r#type)))
            .collect();
        assert_eq!(map, e820_map(&ram.regions));
    }

    fn ram_at(start: u64, len: u64) -> MemRegion {
        MemRegion { start, len }
    }

    #[test]
    fn rejects_bad_elf_kernels() {
        let ram = GuestRam::new(16 << 20, Backing::Anonymous).unwrap();
        let load = |bytes: &[u8]| {
            let k = temp_with(bytes);
            load_linux(&ram.mem, &ram.regions, &LinuxConfig::new(k.path())).unwrap_err()
        };
        // Below 1 MiB it would overwrite boot_params.
        assert!(matches!(
            load(&tiny_elf(0x7000, 0x7000, &[0; 8])),
            LinuxError::Unsupported { .. }
        ));
        // Past the end of RAM.
        let e = load(&tiny_elf(0x200_0000, 0x200_0000, &[0; 8]));
        assert!(matches!(e, LinuxError::KernelTooLarge { .. }), "{e}");
        // Entry outside the image.
        assert!(matches!(
            load(&tiny_elf(0x20_0000, 0x90_0000, &[0; 8])),
            LinuxError::Unsupported { .. }
        ));
        // 32-bit ELF.
        let mut e32 = tiny_elf(0x20_0000, 0x20_0000, &[0; 8]);
        e32[4] = 1;
        assert!(matches!(load(&e32), LinuxError::Unsupported { .. }));
        // Header only.
        assert!(matches!(
            load(&tiny_elf(0x20_0000, 0x20_0000, &[0; 8])[..40]),
            LinuxError::NotAKernel { .. }
        ));
        // Program headers cut off.
        assert!(matches!(
            load(&tiny_elf(0x20_0000, 0x20_0000, &[0; 8])[..100]),
            LinuxError::NotAKernel { .. }
        ));
    }

    /// A synthetic bzImage: setup sectors with a valid header, then `body`.
    fn tiny_bzimage(body: &[u8], init_size: u32) -> Vec<u8> {
        let setup_sects = 3u8;
        let mut v = vec![0u8; (setup_sects as usize + 1) * 512];
        v[0x1f1] = setup_sects;
        v[0x1f4..0x1f8].copy_from_slice(&(body.len() as u32 / 16).to_le_bytes());
        v[0x1fe..0x200].copy_from_slice(&BOOT_FLAG_MAGIC.to_le_bytes());
        v[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        v[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        v[0x211] = LOADED_HIGH;
        v[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes());
        v[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        v[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        v[0x234] = 1;
        v[0x236..0x238].copy_from_slice(&(XLF_KERNEL_64 | 2).to_le_bytes());
        v[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        v[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        v[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn loads_a_synthetic_bzimage() {
        let ram = GuestRam::new(64 << 20, Backing::Anonymous).unwrap();
        let body: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let k = temp_with(&tiny_bzimage(&body, 0x80_0000));
        let rd = temp_with(&[1u8; 100]);
        let cfg = LinuxConfig {
            initrd: Some(rd.path().into()),
            ..LinuxConfig::new(k.path())
        };
        let got = load_linux(&ram.mem, &ram.regions, &cfg).unwrap();
        assert_eq!(got.format, KernelFormat::BzImage);
        assert_eq!(got.entry, 0x100200);
        assert_eq!(got.kernel, ram_at(0x100000, 4096));
        // Decompression happens at pref_address (16 MiB) + init_size.
        assert_eq!(got.kernel_reserved, ram_at(0x100000, 0x180_0000 - 0x100000));
        let mut back = vec![0u8; 4096];
        ram.mem
            .read_slice(&mut back, GuestAddress(0x100000))
            .unwrap();
        assert_eq!(back, body);
        let p: boot_params = ram.mem.read_obj(GuestAddress(BOOT_PARAMS_ADDR)).unwrap();
        assert_eq!({ p.hdr.setup_sects }, 3);
        assert_eq!({ p.hdr.init_size }, 0x80_0000);
        assert_eq!({ p.hdr.code32_start }, 0x100000);
        assert_eq!({ p.hdr.loadflags }, LOADED_HIGH);

        // The same kernel does not fit a guest whose RAM ends before
        // pref_address + init_size.
        let small = GuestRam::new(20 << 20, Backing::Anonymous).unwrap();
        let e = load_linux(&small.mem, &small.regions, &LinuxConfig::new(k.path())).unwrap_err();
        assert!(
            matches!(
                e,
                LinuxError::KernelTooLarge {
                    need: 0x180_0000,
                    have: 0x140_0000,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_bzimages_and_inputs() {
        let ram = GuestRam::new(32 << 20, Backing::Anonymous).unwrap();
        let good = tiny_bzimage(&[0u8; 1000], 0x10_0000);
        let load = |bytes: &[u8], cmdline: &str| {
            let k = temp_with(bytes);
            let cfg = LinuxConfig {
                cmdline: cmdline.into(),
                ..LinuxConfig::new(k.path())
            };
            load_linux(&ram.mem, &ram.regions, &cfg)
        };
        assert!(load(&good, "ok").is_ok());
        assert!(matches!(
            load(&good[..good.len() - 100], ""),
            Err(LinuxError::NotAKernel { .. })
        ));
        assert!(matches!(
            load(&good, &"x".repeat(3000)),
            Err(LinuxError::CmdlineTooLong { .. })
        ));
        assert!(matches!(load(&good, "a\0"), Err(LinuxError::CmdlineNul(1))));
        let mut old = good.clone();
        old[0x206] = 0x0b; // protocol 2.11: no 64-bit entry
        assert!(matches!(
            load(&old, ""),
            Err(LinuxError::Unsupported { .. })
        ));
        let mut no64 = good.clone();
        no64[0x236] = 0;
        assert!(matches!(
            load(&no64, ""),
            Err(LinuxError::Unsupported { .. })
        ));
        assert!(matches!(load(b"", ""), Err(LinuxError::NotAKernel { .. })));
        assert!(matches!(
            load(b"#!/bin/sh\n", ""),
            Err(LinuxError::NotAKernel { .. })
        ));

        let k = temp_with(&good);
        let missing_rd = LinuxConfig {
            initrd: Some("/nonexistent/initrd".into()),
            ..LinuxConfig::new(k.path())
        };
        assert!(matches!(
            load_linux(&ram.mem, &ram.regions, &missing_rd),
            Err(LinuxError::InitrdNotFound(_))
        ));
        let huge = temp_with(&vec![0u8; 31 << 20]);
        let huge_rd = LinuxConfig {
            initrd: Some(huge.path().into()),
            ..LinuxConfig::new(k.path())
        };
        let e = load_linux(&ram.mem, &ram.regions, &huge_rd).unwrap_err();
        assert!(matches!(e, LinuxError::InitrdTooLarge { .. }), "{e}");
        let empty = temp_with(b"");
        let empty_rd = LinuxConfig {
            initrd: Some(empty.path().into()),
            ..LinuxConfig::new(k.path())
        };
        assert!(matches!(
            load_linux(&ram.mem, &ram.regions, &empty_rd),
            Err(LinuxError::InitrdEmpty(_))
        ));
    }

    /// Corrupting header bytes of valid images must give errors, not panics.
    #[test]
    fn corrupted_images_never_panic() {
        let ram = GuestRam::new(32 << 20, Backing::Anonymous).unwrap();
        let images = [
            tiny_bzimage(&[0x90u8; 2000], 0x10_0000),
            tiny_elf(0x100_0000, 0x100_0000, &[0x90; 64]),
        ];
        // A small xorshift generator keeps the test deterministic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for img in &images {
            for _ in 0..300 {
                let mut bad = img.clone();
                for _ in 0..4 {
                    let r = next();
                    // Mostly the headers, where the numbers live.
                    let at = (r as usize) % 0x280.min(bad.len());
                    bad[at] = (r >> 32) as u8;
                }
                if next() % 4 == 0 {
                    bad.truncate((next() as usize) % bad.len());
                }
                let k = temp_with(&bad);
                let _ = load_linux(&ram.mem, &ram.regions, &LinuxConfig::new(k.path()));
            }
        }
    }

    #[test]
    fn needs_low_memory() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0x100_0000), 0x100_0000)]).unwrap();
        let regions = [ram(0x100_0000, 0x100_0000)];
        assert!(matches!(
            load_linux(&mem, &regions, &LinuxConfig::new("/nonexistent")),
            Err(LinuxError::NoLowMemory)
        ));
    }
}
