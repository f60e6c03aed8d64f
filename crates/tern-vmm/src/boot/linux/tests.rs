//! Tests of the Linux loader: images built in memory, loaded into guest
//! RAM and checked field by field.

use super::*;
use crate::memory::{ram_regions, Backing, GuestRam};
use linux_loader::loader::bootparam::{boot_params, LOADED_HIGH, XLF_KERNEL_64};
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
        parse_e820_log("BIOS-e820: [mem 0x10-0x1f] ACPI NVS\nBIOS-e820: [mem 0x20-0x2f] type 20\n"),
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
        acpi: None,
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

#[test]
fn acpi_tables_go_to_the_reserved_bios_area_and_boot_params_points_at_them() {
    let ram = GuestRam::new(64 << 20, Backing::Anonymous).unwrap();
    let k = temp_with(&tiny_bzimage(&[0u8; 1000], 0x10_0000));
    let machine = crate::acpi::machine(2, &[]);
    let tables = tern_acpi::build(&machine, ACPI_TABLES_ADDR, ACPI_TABLES_SPACE).unwrap();
    let cfg = LinuxConfig {
        acpi: Some(tables.clone()),
        ..LinuxConfig::new(k.path())
    };
    load_linux(&ram.mem, &ram.regions, &cfg).unwrap();
    let p: boot_params = ram.mem.read_obj(GuestAddress(BOOT_PARAMS_ADDR)).unwrap();
    assert_eq!({ p.acpi_rsdp_addr }, ACPI_TABLES_ADDR);
    for t in tables.tables() {
        let mut back = vec![0u8; t.bytes.len()];
        ram.mem.read_slice(&mut back, GuestAddress(t.addr)).unwrap();
        assert_eq!(back, t.bytes);
    }
    // The whole range is reserved in the e820 map, never usable RAM.
    let map = e820_map(&ram.regions);
    assert!(map.iter().any(|e| e.kind == E820Kind::Reserved
        && e.addr <= ACPI_TABLES_ADDR
        && e.addr + e.size >= tables.end()));

    // Tables built for another place are refused; none: no RSDP pointer.
    let elsewhere = tern_acpi::build(&machine, 0x1000, 0x1000).unwrap();
    let bad = LinuxConfig {
        acpi: Some(elsewhere),
        ..LinuxConfig::new(k.path())
    };
    assert!(matches!(
        load_linux(&ram.mem, &ram.regions, &bad),
        Err(LinuxError::AcpiPlacement { start: 0x1000, .. })
    ));
    load_linux(&ram.mem, &ram.regions, &LinuxConfig::new(k.path())).unwrap();
    let p: boot_params = ram.mem.read_obj(GuestAddress(BOOT_PARAMS_ADDR)).unwrap();
    assert_eq!({ p.acpi_rsdp_addr }, 0);
}
