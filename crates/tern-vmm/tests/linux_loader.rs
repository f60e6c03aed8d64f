//! The Linux loader against a real distribution kernel (Debian's
//! `linux-image-amd64`, found as `/boot/vmlinuz-*`, or the file named by
//! `TERN_TEST_KERNEL`): what lands in guest memory is checked against the
//! image file itself, read independently of the loader.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use linux_loader::loader::bootparam::boot_params;
use tern_vmm::boot::linux::{
    e820_map, load_linux, E820Entry, E820Kind, KernelFormat, LinuxConfig, LinuxError,
    BOOT_PARAMS_ADDR, CMDLINE_ADDR, HIGH_MEMORY_START,
};
use tern_vmm::memory::{Backing, GuestRam};
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn temp_with(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn read_guest(ram: &GuestRam, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ram.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn table_of(p: &boot_params) -> Vec<E820Entry> {
    let table = p.e820_table;
    table[..p.e820_entries as usize]
        .iter()
        .map(|t| E820Entry {
            addr: t.addr,
            size: t.size,
            kind: E820Kind::from_code(t.r#type),
        })
        .collect()
}

#[test]
fn debian_bzimage_boot_params() {
    let Some(kernel) = tern_test_support::debian_kernel("debian_bzimage_boot_params") else {
        return;
    };
    let image = std::fs::read(&kernel).unwrap();
    let ram = GuestRam::new(512 * MIB, Backing::Anonymous).unwrap();
    let initrd: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let rd = temp_with(&initrd);
    let cmdline = format!(
        "console=ttyS0 tern-loader-test-{} quiet",
        std::process::id()
    );
    let cfg = LinuxConfig {
        kernel: kernel.clone(),
        cmdline: cmdline.clone(),
        initrd: Some(rd.path().into()),
        acpi: None,
    };
    let got = load_linux(&ram.mem, &ram.regions, &cfg).unwrap();

    // The image's own header, read straight from the file.
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = ((setup_sects + 1) * 512) as usize;
    let version = le16(&image, 0x206);
    let initrd_addr_max = u64::from(le32(&image, 0x22c));
    let cmdline_size = le32(&image, 0x238);
    let init_size = le32(&image, 0x260);
    let pref_address = le64(&image, 0x258);
    let pm_len = image.len() - setup_size;

    assert_eq!(got.format, KernelFormat::BzImage);
    assert_eq!(got.boot_params, BOOT_PARAMS_ADDR);
    assert_eq!(got.kernel.start, HIGH_MEMORY_START);
    assert_eq!(got.kernel.len, pm_len as u64);
    assert_eq!(got.entry, HIGH_MEMORY_START + 0x200);
    assert!(got.entry < got.kernel.start + got.kernel.len);
    // The protected-mode code is in guest memory, byte for byte.
    assert_eq!(
        read_guest(&ram, HIGH_MEMORY_START, pm_len),
        image[setup_size..],
        "protected-mode kernel differs in guest memory"
    );

    let p: boot_params = ram.mem.read_obj(GuestAddress(BOOT_PARAMS_ADDR)).unwrap();
    let hdr = p.hdr;
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!({ hdr.header }, 0x5372_6448, "HdrS");
    assert_eq!({ hdr.version }, version);
    assert!(version >= 0x020c);
    assert_eq!({ hdr.setup_sects } as u64, setup_sects);
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!({ hdr.loadflags } & 1, 1, "LOADED_HIGH");
    assert_eq!({ hdr.code32_start }, HIGH_MEMORY_START as u32);
    assert_eq!({ hdr.init_size }, init_size);
    assert_eq!({ hdr.kernel_alignment }, le32(&image, 0x230));
    assert_eq!({ hdr.cmdline_size }, cmdline_size);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
    assert_eq!({ p.ext_cmd_line_ptr }, 0);

    // The command line, NUL-terminated.
    let mut want = cmdline.clone().into_bytes();
    want.push(0);
    assert_eq!(read_guest(&ram, CMDLINE_ADDR, want.len()), want);

    // The e820 map: exactly what e820_map promises, and that is the RAM.
    let map = table_of(&p);
    assert_eq!(map, e820_map(&ram.regions));
    assert_eq!(
        map,
        vec![
            E820Entry {
                addr: 0,
                size: 0x9fc00,
                kind: E820Kind::Ram
            },
            E820Entry {
                addr: 0x9fc00,
                size: 0x60400,
                kind: E820Kind::Reserved
            },
            E820Entry {
                addr: MIB,
                size: 511 * MIB,
                kind: E820Kind::Ram
            },
        ]
    );

    // The initrd: page aligned, high, within the kernel's limit, clear of
    // the memory the kernel decompresses into, and intact.
    let rd_at = got.initrd.unwrap();
    assert_eq!({ hdr.ramdisk_image }, rd_at.start as u32);
    assert_eq!({ hdr.ramdisk_size }, initrd.len() as u32);
    assert_eq!(rd_at.start % 4096, 0);
    assert!(rd_at.start + rd_at.len <= 512 * MIB);
    assert!(rd_at.start + rd_at.len <= initrd_addr_max + 1);
    assert!(
        512 * MIB - (rd_at.start + rd_at.len) < 4096,
        "not as high as possible"
    );
    assert!(rd_at.start >= pref_address + u64::from(init_size));
    assert_eq!(read_guest(&ram, rd_at.start, initrd.len()), initrd);
    eprintln!(
        "loaded {}: protocol {:#x}, entry {:#x}, decompression needs up to {:#x}, initrd at {:#x}",
        kernel.display(),
        version,
        got.entry,
        got.kernel_reserved.start + got.kernel_reserved.len,
        rd_at.start
    );
}

#[test]
fn debian_kernel_too_large_for_a_small_guest() {
    let Some(kernel) =
        tern_test_support::debian_kernel("debian_kernel_too_large_for_a_small_guest")
    else {
        return;
    };
    // Debian's kernel decompresses at 16 MiB and needs tens of MiB above.
    let ram = GuestRam::new(24 * MIB, Backing::Anonymous).unwrap();
    let err = load_linux(&ram.mem, &ram.regions, &LinuxConfig::new(&kernel)).unwrap_err();
    assert!(matches!(err, LinuxError::KernelTooLarge { .. }), "{err}");
    assert!(err.to_string().contains(&kernel.display().to_string()));
}

/// The `vmlinux` ELF inside the bzImage, decompressed with the host tool
/// for its compression (skips when that tool is missing).
fn extract_vmlinux(test: &str, image: &[u8]) -> Option<Vec<u8>> {
    let setup_size = (match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    } + 1)
        * 512;
    let off = setup_size + le32(image, 0x248) as usize;
    let payload = &image[off..off + le32(image, 0x24c) as usize];
    let (tool, args): (&str, &[&str]) = if payload.starts_with(b"\xfd7zXZ\0") {
        ("xz", &["-dc", "--single-stream"])
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ("zstd", &["-dc"])
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        ("gzip", &["-dc"])
    } else {
        tern_test_support::skip(test, "kernel payload compression not handled here");
        return None;
    };
    let tool = tern_test_support::tool(test, tool)?;
    let f = temp_with(payload);
    let out = Command::new(tool)
        .args(args)
        .stdin(std::fs::File::open(f.path()).unwrap())
        .output()
        .unwrap();
    // gzip and zstd complain about the size word the kernel build appends;
    // what matters is the ELF in stdout.
    assert!(out.stdout.starts_with(b"\x7fELF"), "no ELF in the payload");
    Some(out.stdout)
}

#[test]
fn debian_vmlinux_elf() {
    let test = "debian_vmlinux_elf";
    let Some(kernel) = tern_test_support::debian_kernel(test) else {
        return;
    };
    let image = std::fs::read(&kernel).unwrap();
    let Some(elf) = extract_vmlinux(test, &image) else {
        return;
    };
    let vmlinux = temp_with(&elf);
    let ram = GuestRam::new(512 * MIB, Backing::Anonymous).unwrap();
    let cfg = LinuxConfig {
        cmdline: "console=ttyS0 elf-test".into(),
        ..LinuxConfig::new(vmlinux.path())
    };
    let got = load_linux(&ram.mem, &ram.regions, &cfg).unwrap();
    assert_eq!(got.format, KernelFormat::Elf);
    // The entry is e_entry, startup_64's physical address, inside the image.
    assert_eq!(got.entry, le64(&elf, 24));
    assert!(got.kernel.start <= got.entry && got.entry < got.kernel.start + got.kernel.len);
    // Each PT_LOAD is at its physical address.
    let (phoff, phnum) = (le64(&elf, 32) as usize, le16(&elf, 56) as usize);
    for i in 0..phnum {
        let ph = &elf[phoff + i * 56..phoff + (i + 1) * 56];
        let (off, paddr, filesz) = (le64(ph, 8) as usize, le64(ph, 24), le64(ph, 32) as usize);
        if le32(ph, 0) != 1 || filesz == 0 {
            continue;
        }
        let n = filesz.min(4096);
        assert_eq!(read_guest(&ram, paddr, n), elf[off..off + n], "segment {i}");
    }
    let p: boot_params = ram.mem.read_obj(GuestAddress(BOOT_PARAMS_ADDR)).unwrap();
    let hdr = p.hdr;
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
    assert_eq!(
        read_guest(&ram, CMDLINE_ADDR, 23),
        b"console=ttyS0 elf-test\0"
    );
    assert_eq!(table_of(&p), e820_map(&ram.regions));
}

fn load_err(kernel: &Path) -> LinuxError {
    let ram = GuestRam::new(64 * MIB, Backing::Anonymous).unwrap();
    load_linux(&ram.mem, &ram.regions, &LinuxConfig::new(kernel)).unwrap_err()
}

#[test]
fn missing_kernel_is_a_clear_error() {
    let err = load_err(Path::new("/nonexistent/vmlinuz-tern"));
    assert!(matches!(err, LinuxError::KernelNotFound(_)));
    assert_eq!(
        err.to_string(),
        "kernel image /nonexistent/vmlinuz-tern not found"
    );
}

#[test]
fn garbage_is_not_a_kernel() {
    // Deterministic noise.
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..65536)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    let f = temp_with(&noise);
    let err = load_err(f.path());
    assert!(matches!(err, LinuxError::NotAKernel { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("is not a bzImage or an ELF vmlinux"),
        "{err}"
    );

    let empty = temp_with(b"");
    let err = load_err(empty.path());
    assert!(err.to_string().ends_with("the file is empty"), "{err}");
}

#[test]
fn truncated_debian_bzimage_is_rejected() {
    let Some(kernel) = tern_test_support::debian_kernel("truncated_debian_bzimage_is_rejected")
    else {
        return;
    };
    let image = std::fs::read(&kernel).unwrap();
    for len in [4096, image.len() / 2, image.len() - 4096] {
        let f = temp_with(&image[..len]);
        let err = load_err(f.path());
        assert!(matches!(err, LinuxError::NotAKernel { .. }), "{len}: {err}");
        assert!(err.to_string().contains("truncated bzImage"), "{err}");
    }
}
