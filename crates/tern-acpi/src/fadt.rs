//! The FADT: a hardware-reduced machine whose sleep, reset and boot
//! architecture registers say what Tern has and lacks.

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use crate::{bytes_of, pm, Machine, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// `IAPC_BOOT_ARCH` bits (ACPI 6.5, table 5.11). The two Tern leaves
/// clear are named so the tests can check they stay clear.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod boot_arch {
    /// User-visible devices on an LPC/ISA bus (clear: everything is in the
    /// ACPI namespace).
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// An 8042 keyboard controller.
    pub const I8042: u16 = 1 << 1;
    /// VGA is not present (do not probe it).
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    /// No CMOS RTC at the legacy ports.
    pub const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
}

/// The hypervisor vendor identity field: "TernVMM".
const HYPERVISOR_ID: u64 = u64::from_le_bytes(*b"TernVMM\0");

fn io_byte(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

/// The FADT for `m`, pointing at the DSDT at `dsdt_addr`.
pub(crate) fn fadt(m: &Machine, dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .preferred_pm_profile(PmProfile::Unspecified)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // The power button is the DSDT's control-method device; there is
        // no sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.iapc_boot_arch = (boot_arch::VGA_NOT_PRESENT | boot_arch::CMOS_RTC_NOT_PRESENT).into();
    b.reset_reg = io_byte(m.pm.base + pm::RESET);
    b.reset_value = pm::RESET_VALUE;
    b.sleep_control_reg = io_byte(m.pm.base + pm::SLEEP_CONTROL);
    b.sleep_status_reg = io_byte(m.pm.base + pm::SLEEP_STATUS);
    b.hypervisor_vendor_identity = HYPERVISOR_ID.into();
    bytes_of(&b.finalize())
}
