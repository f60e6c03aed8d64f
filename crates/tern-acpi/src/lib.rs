//! The ACPI tables Tern gives a guest, built from a typed description of
//! the machine ([`Machine`]) with rust-vmm's `acpi_tables` crate.
//!
//! The machine is Tern's "Generation 2" PC: hardware-reduced ACPI (no
//! PM1 event/control blocks, no SCI, no ACPI PM timer, no legacy 8259 PIC,
//! PIT interrupt or RTC as far as the guest is told), local APICs, one
//! IOAPIC, COM1, virtio-mmio devices, and a small register block on I/O
//! ports ([`pm`]) for sleep (S5, power off), reset and a Generic Event
//! Device whose interrupt tells the guest its power button was pressed.
//!
//! [`build`] lays out, in one contiguous range of guest memory:
//!
//! | table | what |
//! |---|---|
//! | RSDP (revision 2) | first, 16-byte aligned, so a guest that scans 0xE0000-0xFFFFF finds it when the range is there |
//! | XSDT | points at the FADT and the MADT |
//! | FADT (6.5) | `HW_REDUCED_ACPI`, `SLEEP_CONTROL_REG`/`SLEEP_STATUS_REG` and `RESET_REG` in [`pm`], `IAPC_BOOT_ARCH`: no VGA, no 8042, no CMOS RTC; points at the DSDT |
//! | MADT | a local APIC per vCPU (APIC id = vCPU index), the IOAPIC, a LINT1 NMI for every processor |
//! | DSDT | a processor device per vCPU, COM1 (`PNP0501`), each virtio-mmio window (`LNRO0005`), the GED (`ACPI0013`) and power button (`PNP0C0C`), the PM ports' reservation (`PNP0C02`), `\_S5_` |
//!
//! No interrupt source overrides: KVM's default GSI routing wires ISA IRQ
//! `n` to IOAPIC pin `n` (and 8259 pin `n`), which is the identity mapping
//! ACPI assumes without one, and IRQ 0 (the PIT) is not used by a
//! hardware-reduced guest.

mod dsdt;
mod fadt;
mod madt;

use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"TERN  ";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"TERNVM  ";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
/// Where the local APICs are (the architectural default).
pub const LAPIC_ADDRESS: u32 = 0xfee0_0000;
/// Most vCPUs the tables describe (xAPIC ids and ACPI processor UIDs are
/// one byte in the MADT entries used).
pub const MAX_VCPUS: u32 = 255;

/// The power-management register block on I/O ports: its layout (offsets
/// from [`PmRegisters::base`]) and the values the guest writes. The VMM
/// implements these registers; the FADT and DSDT point the guest at them.
pub mod pm {
    /// Sleep control (`SLEEP_CONTROL_REG`, 8 bits): the guest writes
    /// `SLP_TYP << 2 | SLP_EN` to enter a sleep state.
    pub const SLEEP_CONTROL: u16 = 0;
    /// Sleep status (`SLEEP_STATUS_REG`, 8 bits): reads 0 (never woken);
    /// the guest writes `WAK_STS` to clear it before sleeping.
    pub const SLEEP_STATUS: u16 = 1;
    /// Reset (`RESET_REG`, 8 bits): writing [`RESET_VALUE`] resets the machine.
    pub const RESET: u16 = 2;
    /// GED event status (8 bits): reading returns the pending events
    /// ([`EVENT_POWER_BUTTON`]) and clears them. The GED's `_EVT` reads it.
    pub const GED_EVENT: u16 = 3;
    /// Ports in the block.
    pub const LEN: u16 = 4;

    /// The value written to [`RESET`] to reset.
    pub const RESET_VALUE: u8 = 1;
    /// `SLP_EN` in [`SLEEP_CONTROL`].
    pub const SLP_EN: u8 = 1 << 5;
    /// The `SLP_TYP` of S5 (soft off), as `\_S5_` declares it.
    pub const S5_SLP_TYP: u8 = 5;
    /// GED event bit: the power button was pressed.
    pub const EVENT_POWER_BUTTON: u8 = 1 << 0;

    /// The sleep type in a value written to [`SLEEP_CONTROL`].
    pub fn sleep_type(value: u8) -> u8 {
        (value >> 2) & 0x7
    }
}

/// The IOAPIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    /// Its APIC id.
    pub id: u8,
    /// Base of its registers.
    pub address: u32,
    /// The GSI of its pin 0.
    pub gsi_base: u32,
    /// Number of pins (KVM's has 24).
    pub pins: u32,
}

/// A 16550 UART on I/O ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serial {
    /// First port (8 ports).
    pub port: u16,
    /// Its interrupt (an ISA IRQ: edge, active high).
    pub gsi: u32,
}

/// One virtio-mmio register window (virtio 1.x, any device type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmio {
    /// Guest-physical base (below 4 GiB).
    pub base: u64,
    /// Length of the window.
    pub len: u64,
    /// Its interrupt: edge-triggered, active high (the VMM pulses it
    /// through an irqfd).
    pub gsi: u32,
}

/// Where the power-management register block ([`pm`]) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmRegisters {
    /// First I/O port of the block.
    pub base: u16,
}

/// The Generic Event Device (`ACPI0013`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ged {
    /// Its interrupt: edge-triggered, active high.
    pub gsi: u32,
}

/// The machine the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// vCPUs; vCPU `i` has local APIC id `i` and ACPI processor UID `i`.
    pub vcpus: u32,
    /// The IOAPIC.
    pub ioapic: IoApic,
    /// COM1, if present.
    pub serial: Option<Serial>,
    /// The virtio-mmio windows, in the order the guest should number them.
    pub virtio_mmio: Vec<VirtioMmio>,
    /// The sleep/reset/GED register block.
    pub pm: PmRegisters,
    /// The Generic Event Device.
    pub ged: Ged,
}

/// Why the tables cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// No vCPU, or more than the MADT entries can name.
    #[error("{0} vCPUs cannot be described: the ACPI tables take 1 to {MAX_VCPUS}")]
    Vcpus(u32),
    /// A device's interrupt is not an IOAPIC pin.
    #[error("{what} uses GSI {gsi}, but the IOAPIC has GSIs {base}..{end}")]
    GsiOutOfRange {
        /// The device.
        what: String,
        /// Its GSI.
        gsi: u32,
        /// The IOAPIC's first GSI.
        base: u32,
        /// One past its last.
        end: u32,
    },
    /// Two devices were given one GSI (the tables declare them exclusive).
    #[error("GSI {gsi} is given to both {first} and {second}")]
    GsiShared {
        /// The GSI.
        gsi: u32,
        /// One device.
        first: String,
        /// The other.
        second: String,
    },
    /// A virtio-mmio window that a 32-bit memory descriptor cannot hold.
    #[error("virtio-mmio window {index} ({base:#x}, {len:#x} bytes) must lie below 4 GiB")]
    WindowAbove4G {
        /// Its index.
        index: usize,
        /// Its base.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// The PM register block does not fit in the I/O port space.
    #[error("PM register block at port {0:#x} runs past port 0xffff")]
    PmPorts(u16),
    /// The tables are larger than the room given.
    #[error("the ACPI tables need {need} bytes, {room} are available")]
    TooLarge {
        /// Their size.
        need: u64,
        /// The room.
        room: u64,
    },
    /// The base address is not 16-byte aligned.
    #[error("ACPI tables base {0:#x} is not 16-byte aligned")]
    Unaligned(u64),
}

/// One table, where it goes and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Its signature (`RSD ` for the RSDP's first four bytes).
    pub signature: [u8; 4],
    /// Guest-physical address.
    pub addr: u64,
    /// Contents, checksums filled in.
    pub bytes: Vec<u8>,
}

/// The tables, laid out for guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    tables: Vec<Table>,
}

impl AcpiTables {
    /// Address of the RSDP (for `boot_params.acpi_rsdp_addr`).
    pub fn rsdp_addr(&self) -> u64 {
        self.tables[0].addr
    }

    /// Every table, the RSDP first, in address order.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// The table with `signature` (`b"RSD "` for the RSDP).
    pub fn get(&self, signature: &[u8; 4]) -> Option<&Table> {
        self.tables.iter().find(|t| &t.signature == signature)
    }

    /// One past the last byte used.
    pub fn end(&self) -> u64 {
        self.tables
            .last()
            .map(|t| t.addr + t.bytes.len() as u64)
            .unwrap_or_default()
    }
}

fn bytes_of(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn align16(x: u64) -> u64 {
    x.div_ceil(16) * 16
}

/// Checks `m`: vCPU count, every GSI an IOAPIC pin and used once, windows
/// below 4 GiB, the PM block inside the port space.
fn validate(m: &Machine) -> Result<(), AcpiError> {
    if m.vcpus == 0 || m.vcpus > MAX_VCPUS {
        return Err(AcpiError::Vcpus(m.vcpus));
    }
    let mut gsis: Vec<(u32, String)> = Vec::new();
    if let Some(s) = m.serial {
        gsis.push((s.gsi, "the serial port".into()));
    }
    for (i, w) in m.virtio_mmio.iter().enumerate() {
        if w.len == 0 || w.base.checked_add(w.len).is_none_or(|e| e > 1 << 32) {
            return Err(AcpiError::WindowAbove4G {
                index: i,
                base: w.base,
                len: w.len,
            });
        }
        gsis.push((w.gsi, format!("virtio-mmio window {i}")));
    }
    gsis.push((m.ged.gsi, "the generic event device".into()));
    let (base, end) = (
        m.ioapic.gsi_base,
        m.ioapic.gsi_base.saturating_add(m.ioapic.pins),
    );
    for (i, (gsi, what)) in gsis.iter().enumerate() {
        if !(base..end).contains(gsi) {
            return Err(AcpiError::GsiOutOfRange {
                what: what.clone(),
                gsi: *gsi,
                base,
                end,
            });
        }
        if let Some((_, first)) = gsis[..i].iter().find(|(g, _)| g == gsi) {
            return Err(AcpiError::GsiShared {
                gsi: *gsi,
                first: first.clone(),
                second: what.clone(),
            });
        }
    }
    if m.pm.base.checked_add(pm::LEN - 1).is_none() {
        return Err(AcpiError::PmPorts(m.pm.base));
    }
    Ok(())
}

/// Builds the tables for `machine`, laid out from `base` (16-byte
/// aligned) within `room` bytes.
pub fn build(machine: &Machine, base: u64, room: u64) -> Result<AcpiTables, AcpiError> {
    validate(machine)?;
    if base & 0xf != 0 {
        return Err(AcpiError::Unaligned(base));
    }
    let dsdt = dsdt::dsdt(machine);
    let madt = madt::madt(machine);
    let xsdt_len = 36 + 8 * 2;
    let rsdp_addr = base;
    let xsdt_addr = align16(rsdp_addr + Rsdp::len() as u64);
    let fadt_addr = align16(xsdt_addr + xsdt_len);
    let madt_addr = align16(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let dsdt_addr = align16(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end - base > room {
        return Err(AcpiError::TooLarge {
            need: end - base,
            room,
        });
    }
    let fadt = fadt::fadt(machine, dsdt_addr);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes_of(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables {
        tables: vec![
            Table {
                signature: *b"RSD ",
                addr: rsdp_addr,
                bytes: rsdp,
            },
            Table {
                signature: *b"XSDT",
                addr: xsdt_addr,
                bytes: xsdt,
            },
            Table {
                signature: *b"FACP",
                addr: fadt_addr,
                bytes: fadt,
            },
            Table {
                signature: *b"APIC",
                addr: madt_addr,
                bytes: madt,
            },
            Table {
                signature: *b"DSDT",
                addr: dsdt_addr,
                bytes: dsdt,
            },
        ],
    })
}

#[cfg(test)]
mod tests;
