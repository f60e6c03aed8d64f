//! The DSDT: the devices the guest cannot discover by itself.

use acpi_tables::aml::{
    self, Device, EISAName, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule,
    Interrupt, Memory32Fixed, Method, Name, Notify, OpRegion, OpRegionSpace, Package, Path,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use crate::{bytes_of, pm, Machine, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// DSDT revision 2: integers are 64 bits.
const DSDT_REVISION: u8 = 2;

/// An edge-triggered, active-high, exclusive interrupt the device consumes.
fn edge_irq(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

/// A processor device per vCPU (`ACPI0007`, `_UID` = the MADT's UID).
fn processors(m: &Machine) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..m.vcpus {
        let uid = i as usize;
        Device::new(
            Path::new(&format!("C{i:03X}")),
            vec![
                &Name::new("_HID".into(), &"ACPI0007"),
                &Name::new("_UID".into(), &uid),
            ],
        )
        .to_aml_bytes(&mut out);
    }
    out
}

fn serial(m: &Machine) -> Vec<u8> {
    let Some(s) = m.serial else {
        return Vec::new();
    };
    let (io, irq) = (IO::new(s.port, s.port, 1, 8), edge_irq(s.gsi));
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    bytes_of(&Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ONE),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// Each window as `LNRO0005` (what Linux's virtio_mmio driver matches),
/// named `VR00`, `VR01`, ...
fn virtio(m: &Machine) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, w) in m.virtio_mmio.iter().enumerate() {
        // validate() keeps the window below 4 GiB.
        let mem = Memory32Fixed::new(true, w.base as u32, w.len as u32);
        let irq = edge_irq(w.gsi);
        let crs = ResourceTemplate::new(vec![&mem, &irq]);
        Device::new(
            Path::new(&format!("VR{i:02X}")),
            vec![
                &Name::new("_HID".into(), &"LNRO0005"),
                &Name::new("_UID".into(), &i),
                // DMA is cache-coherent.
                &Name::new("_CCA".into(), &aml::ONE),
                &Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut out);
    }
    out
}

/// The GED: its interrupt means "read the event register"; the power
/// button event becomes a Notify(PWRB, 0x80), which an ACPI-aware guest
/// takes as "shut down".
fn ged(m: &Machine) -> Vec<u8> {
    let port = usize::from(m.pm.base + pm::GED_EVENT);
    let irq = edge_irq(m.ged.gsi);
    let crs = ResourceTemplate::new(vec![&irq]);
    let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemIO, &port, &1usize);
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 8)],
    );
    let button = usize::from(pm::EVENT_POWER_BUTTON);
    let pwrb = Path::new("\\_SB_.PWRB");
    let gdat = Path::new("GDAT");
    let read = aml::Store::new(&aml::Local(0), &gdat);
    let masked = aml::And::new(&aml::Local(1), &aml::Local(0), &button);
    let notify = Notify::new(&pwrb, &0x80usize);
    let pressed = aml::Equal::new(&aml::Local(1), &button);
    let when = aml::If::new(&pressed, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&read, &masked, &when]);
    let mut out = bytes_of(&Device::new(
        "GED0".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    ));
    Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

/// The PM register block's ports, reserved as motherboard resources so
/// no driver claims them.
fn pm_ports(m: &Machine) -> Vec<u8> {
    let len = pm::LEN as u8;
    let io = IO::new(m.pm.base, m.pm.base, 1, len);
    let crs = ResourceTemplate::new(vec![&io]);
    bytes_of(&Device::new(
        "PMRS".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// Raw AML appended as a term list.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// The DSDT for `m`.
pub(crate) fn dsdt(m: &Machine) -> Vec<u8> {
    let mut sb = processors(m);
    sb.extend(serial(m));
    sb.extend(virtio(m));
    sb.extend(ged(m));
    sb.extend(pm_ports(m));
    let sb = Raw(sb);
    let mut body = bytes_of(&Scope::new("\\_SB_".into(), vec![&sb]));
    // S5: SLP_TYPa = 5 (what the sleep control register takes), SLP_TYPb unused.
    let s5 = usize::from(pm::S5_SLP_TYP);
    Name::new(
        "_S5_".into(),
        &Package::new(vec![&s5, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}
