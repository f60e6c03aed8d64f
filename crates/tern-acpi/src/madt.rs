//! The MADT: every vCPU's local APIC, the IOAPIC, and LINT1 as NMI.

use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::{Aml, AmlSink};
use zerocopy::byteorder::{LE, U16};
use zerocopy::{Immutable, IntoBytes};

use crate::{bytes_of, Machine, LAPIC_ADDRESS, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// Local APIC NMI structure (MADT type 4), which `acpi_tables` lacks.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
pub(crate) struct LocalApicNmi {
    r#type: u8,
    length: u8,
    /// ACPI processor UID; 0xff: every processor.
    processor_uid: u8,
    /// MPS INTI flags (0: conforms to the bus: edge, active high).
    flags: U16<LE>,
    /// The LINTn pin.
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// The MADT for `m` (vCPU `i`: processor UID `i`, APIC id `i`).
pub(crate) fn madt(m: &Machine) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDRESS),
    );
    for i in 0..m.vcpus {
        // validate() keeps vcpus <= 255.
        let id = i as u8;
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(
        m.ioapic.id,
        m.ioapic.address,
        m.ioapic.gsi_base,
    ));
    // Tern's vCPUs route LINT1 as NMI (x86::setup_lapic).
    madt.add_structure(LocalApicNmi {
        r#type: 4,
        length: 6,
        processor_uid: 0xff,
        flags: 0.into(),
        lint: 1,
    });
    bytes_of(&madt)
}
