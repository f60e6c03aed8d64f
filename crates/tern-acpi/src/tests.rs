use super::*;

fn machine(vcpus: u32, windows: usize) -> Machine {
    Machine {
        vcpus,
        ioapic: IoApic {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0,
            pins: 24,
        },
        serial: Some(Serial {
            port: 0x3f8,
            gsi: 4,
        }),
        virtio_mmio: (0..windows)
            .map(|i| VirtioMmio {
                base: 0xd000_0000 + i as u64 * 0x1000,
                len: 0x1000,
                gsi: 16 + i as u32,
            })
            .collect(),
        pm: PmRegisters { base: 0x600 },
        ged: Ged { gsi: 9 },
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}
fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn every_table_sums_to_zero_and_has_its_length() {
    let t = build(&machine(4, 2), 0xe0000, 0x20000).unwrap();
    assert_eq!(t.tables().len(), 5);
    for tab in t.tables() {
        assert_eq!(tab.addr % 16, 0, "{:?}", tab.signature);
        if &tab.signature == b"RSD " {
            assert_eq!(&tab.bytes[..8], b"RSD PTR ");
            assert_eq!(tab.bytes.len(), 36);
            assert_eq!(sum(&tab.bytes[..20]), 0, "RSDP v1 checksum");
            assert_eq!(sum(&tab.bytes), 0, "RSDP extended checksum");
            assert_eq!(tab.bytes[15], 2, "RSDP revision");
            assert_eq!(u32_at(&tab.bytes, 20), 36);
        } else {
            assert_eq!(&tab.bytes[..4], &tab.signature);
            assert_eq!(u32_at(&tab.bytes, 4) as usize, tab.bytes.len());
            assert_eq!(sum(&tab.bytes), 0, "{:?}", tab.signature);
            assert_eq!(&tab.bytes[10..16], &OEM_ID);
        }
    }
    // Laid out in order, without overlap, inside the room.
    for w in t.tables().windows(2) {
        assert!(w[0].addr + w[0].bytes.len() as u64 <= w[1].addr);
    }
    assert_eq!(t.rsdp_addr(), 0xe0000);
    assert!(t.end() <= 0xe0000 + 0x20000);
}

#[test]
fn rsdp_xsdt_and_fadt_point_at_each_other() {
    let t = build(&machine(1, 0), 0xe0000, 0x20000).unwrap();
    let rsdp = &t.get(b"RSD ").unwrap().bytes;
    let xsdt = t.get(b"XSDT").unwrap();
    assert_eq!(u64_at(rsdp, 24), xsdt.addr);
    assert_eq!(xsdt.bytes.len(), 36 + 16);
    assert_eq!(u64_at(&xsdt.bytes, 36), t.get(b"FACP").unwrap().addr);
    assert_eq!(u64_at(&xsdt.bytes, 44), t.get(b"APIC").unwrap().addr);
    let fadt = &t.get(b"FACP").unwrap().bytes;
    assert_eq!(u64_at(fadt, 140), t.get(b"DSDT").unwrap().addr, "X_DSDT");
    assert_eq!(u32_at(fadt, 40), 0, "no 32-bit DSDT pointer");
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
    let t = build(&machine(2, 1), 0xe0000, 0x20000).unwrap();
    let f = &t.get(b"FACP").unwrap().bytes;
    assert_eq!(f.len(), 276);
    assert_eq!(f[8], 6, "FADT major version");
    let flags = u32_at(f, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_ne!(
        flags & (1 << 4),
        0,
        "PWR_BUTTON: a control-method power button"
    );
    let arch = u16_at(f, 109);
    assert_eq!(arch & fadt::boot_arch::I8042, 0, "no 8042");
    assert_eq!(arch & fadt::boot_arch::LEGACY_DEVICES, 0);
    assert_ne!(arch & fadt::boot_arch::VGA_NOT_PRESENT, 0);
    assert_ne!(arch & fadt::boot_arch::CMOS_RTC_NOT_PRESENT, 0);
    // GAS: space 1 (I/O), 8 bits, offset 0, byte access, address.
    let gas = |off: usize| (f[off], f[off + 1], f[off + 3], u64_at(f, off + 4));
    assert_eq!(gas(116), (1, 8, 1, 0x602), "RESET_REG");
    assert_eq!(f[128], pm::RESET_VALUE);
    assert_eq!(gas(244), (1, 8, 1, 0x600), "SLEEP_CONTROL_REG");
    assert_eq!(gas(256), (1, 8, 1, 0x601), "SLEEP_STATUS_REG");
}

#[test]
fn madt_lists_every_vcpu_and_the_ioapic() {
    for n in [1, 2, 4, 255] {
        let t = build(&machine(n, 0), 0xe0000, 0x20000).unwrap();
        let m = &t.get(b"APIC").unwrap().bytes;
        assert_eq!(u32_at(m, 36), LAPIC_ADDRESS);
        let mut off = 44;
        let (mut lapics, mut ioapics, mut nmis) = (Vec::new(), 0, 0);
        while off < m.len() {
            let (ty, len) = (m[off], m[off + 1] as usize);
            assert!(len >= 2 && off + len <= m.len(), "bad entry at {off}");
            match ty {
                0 => {
                    assert_eq!(len, 8);
                    assert_eq!(m[off + 2], m[off + 3], "UID = APIC id");
                    assert_eq!(u32_at(m, off + 4), 1, "enabled");
                    lapics.push(m[off + 3]);
                }
                1 => {
                    assert_eq!(len, 12);
                    assert_eq!(u32_at(m, off + 4), 0xfec0_0000);
                    assert_eq!(u32_at(m, off + 8), 0, "GSI base");
                    ioapics += 1;
                }
                4 => {
                    assert_eq!(len, 6);
                    assert_eq!((m[off + 2], m[off + 5]), (0xff, 1), "LINT1 of all");
                    nmis += 1;
                }
                other => panic!("unexpected MADT entry type {other}"),
            }
            off += len;
        }
        assert_eq!(lapics, (0..n).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!((ioapics, nmis), (1, 1));
    }
}

#[test]
fn dsdt_describes_the_devices() {
    let t = build(&machine(3, 5), 0xe0000, 0x20000).unwrap();
    let d = &t.get(b"DSDT").unwrap().bytes;
    assert_eq!(d[8], 2, "DSDT revision 2 (64-bit integers)");
    assert_eq!(count(d, b"LNRO0005"), 5);
    assert_eq!(count(d, b"ACPI0007"), 3);
    assert_eq!(count(d, b"ACPI0013"), 1);
    for name in [
        &b"VR00"[..],
        b"VR04",
        b"C002",
        b"COM1",
        b"GED0",
        b"_S5_",
        b"_EVT",
    ] {
        assert_eq!(count(d, name), 1, "{}", String::from_utf8_lossy(name));
    }
    // The device, and the _EVT's Notify of it.
    assert_eq!(count(d, b"PWRB"), 2);
    // Memory32Fixed (0x86, length 9, read-write) of window 4.
    let mut desc = vec![0x86, 9, 0, 1];
    desc.extend(0xd000_4000u32.to_le_bytes());
    desc.extend(0x1000u32.to_le_bytes());
    assert_eq!(count(d, &desc), 1);
    // Extended interrupt (0x89, length 6), consumer + edge, one GSI: 20.
    let mut irq = vec![0x89, 6, 0, 0b0011, 1];
    irq.extend(20u32.to_le_bytes());
    assert_eq!(count(d, &irq), 1);
    // COM1's I/O ports: decode16, 0x3f8..0x3f8, 8 ports.
    assert_eq!(count(d, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), 1);
    // The GED's region: OperationRegion(GDST, SystemIO, 0x603, 1).
    assert_eq!(
        count(
            d,
            &[0x5b, 0x80, b'G', b'D', b'S', b'T', 1, 0x0b, 0x03, 0x06]
        ),
        1
    );
}

#[test]
fn bad_machines_are_refused_with_what_is_wrong() {
    assert_eq!(
        build(&machine(0, 0), 0xe0000, 0x20000),
        Err(AcpiError::Vcpus(0))
    );
    assert_eq!(
        build(&machine(256, 0), 0xe0000, 0x20000),
        Err(AcpiError::Vcpus(256))
    );
    let mut m = machine(1, 1);
    m.virtio_mmio[0].gsi = 24;
    assert!(matches!(
        build(&m, 0xe0000, 0x20000),
        Err(AcpiError::GsiOutOfRange { gsi: 24, .. })
    ));
    let mut m = machine(1, 1);
    m.ged.gsi = 16;
    let e = build(&m, 0xe0000, 0x20000).unwrap_err();
    assert!(matches!(e, AcpiError::GsiShared { gsi: 16, .. }), "{e}");
    assert!(e.to_string().contains("virtio-mmio window 0"), "{e}");
    let mut m = machine(1, 1);
    m.virtio_mmio[0].base = 0xffff_f800;
    assert!(matches!(
        build(&m, 0xe0000, 0x20000),
        Err(AcpiError::WindowAbove4G { index: 0, .. })
    ));
    let mut m = machine(1, 0);
    m.pm.base = 0xfffe;
    assert_eq!(build(&m, 0xe0000, 0x20000), Err(AcpiError::PmPorts(0xfffe)));
    assert!(matches!(
        build(&machine(255, 8), 0xe0000, 0x100),
        Err(AcpiError::TooLarge { room: 0x100, .. })
    ));
    assert_eq!(
        build(&machine(1, 0), 0xe0008, 0x20000),
        Err(AcpiError::Unaligned(0xe0008))
    );
}

#[test]
fn sleep_values_decode() {
    let s5 = pm::S5_SLP_TYP << 2 | pm::SLP_EN;
    assert_eq!(s5, 0x34);
    assert_eq!(pm::sleep_type(s5), 5);
    assert_eq!(pm::sleep_type(0x20), 0);
}
