//! Kernel loading: telling a bzImage from an ELF `vmlinux` by content,
//! checking its headers, and copying it to guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use tern_probe_abi::MemRegion;
use vm_memory::GuestAddress;

use super::{
    KernelFormat, LinuxError, BOOT_FLAG_MAGIC, BZIMAGE_ENTRY_64, ELF_CMDLINE_SIZE,
    ELF_INITRD_ADDR_MAX, HDRS_MAGIC, HIGH_MEMORY_START, PROTOCOL_64BIT, PROTOCOL_SYNTH,
    SETUP_HEADER_OFFSET,
};
use crate::memory::GuestMem;

/// Bytes of the file start read to recognise the format (covers the setup
/// header and an ELF header).
const HEAD_LEN: usize = 4096;

pub(super) fn read_head(file: &mut File, path: &Path) -> Result<Vec<u8>, LinuxError> {
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
pub(super) enum Image {
    BzImage { hdr: setup_header, setup_size: u64 },
    Elf,
}

impl Image {
    pub(super) fn format(&self) -> KernelFormat {
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
pub(super) fn probe_image(path: &Path, head: &[u8], file_len: u64) -> Result<Image, LinuxError> {
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

pub(super) struct Loaded {
    pub(super) entry: u64,
    pub(super) hdr: setup_header,
    pub(super) image: MemRegion,
    pub(super) reserved: MemRegion,
}

pub(super) fn too_large(path: &Path, need: u64, have: u64) -> LinuxError {
    LinuxError::KernelTooLarge {
        path: path.to_path_buf(),
        need,
        have,
    }
}

pub(super) fn load_bzimage(
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

pub(super) fn load_elf(
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
