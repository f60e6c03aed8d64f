//! The ACPI platform of a Linux guest: the machine description its tables
//! are built from (`tern_acpi`), and the power-management register block
//! on I/O ports that the FADT and DSDT point at.
//!
//! | port | register | guest access |
//! |---|---|---|
//! | [`PM_BASE`] + 0 | sleep control | write `SLP_TYP << 2 \| SLP_EN`: S5 ends the VM with [`VmExit::PoweredOff`] |
//! | [`PM_BASE`] + 1 | sleep status | reads 0; writes ignored |
//! | [`PM_BASE`] + 2 | reset | write 1: the VM ends with [`VmExit::Reset`] |
//! | [`PM_BASE`] + 3 | GED events | read: pending events (bit 0 power button), cleared by the read |
//!
//! The Generic Event Device's interrupt is GSI [`GED_GSI`] (an ISA pin no
//! Tern device uses; 16-23 are the virtio devices'), pulsed through an
//! irqfd. A pending power-button event is not part of a saved state: a
//! press just before a save or migration may be lost.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tern_acpi::{pm, Ged, IoApic, Machine, PmRegisters, Serial, VirtioMmio};
use tern_devices::BusDevice;
use tern_probe_abi::{DeviceInfo, PORT_SERIAL};
use vmm_sys_util::eventfd::EventFd;

use crate::control::Control;
use crate::vm::VmExit;

/// First I/O port of the PM register block ([`tern_acpi::pm`] layout).
pub const PM_BASE: u16 = 0x600;
/// The GED's interrupt.
pub const GED_GSI: u32 = 9;
/// COM1's interrupt.
pub const SERIAL_GSI: u32 = 4;
/// KVM's in-kernel IOAPIC: where it is and how many pins it has.
pub const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
/// Pins of KVM's IOAPIC.
pub const IOAPIC_PINS: u32 = 24;

/// The machine `tern_acpi` describes: `vcpus` local APICs, KVM's IOAPIC,
/// COM1, the virtio-mmio windows of `devices`, the PM block and the GED.
pub fn machine(vcpus: u32, devices: &[DeviceInfo]) -> Machine {
    Machine {
        vcpus,
        ioapic: IoApic {
            id: 0,
            address: IOAPIC_ADDRESS,
            gsi_base: 0,
            pins: IOAPIC_PINS,
        },
        serial: Some(Serial {
            port: PORT_SERIAL,
            gsi: SERIAL_GSI,
        }),
        virtio_mmio: devices
            .iter()
            .map(|d| VirtioMmio {
                base: d.mmio_base,
                len: d.mmio_len,
                gsi: d.irq,
            })
            .collect(),
        pm: PmRegisters { base: PM_BASE },
        ged: Ged { gsi: GED_GSI },
    }
}

/// What the PM ports and [`PowerButton`] share.
struct PmState {
    control: Arc<Control>,
    /// Pending GED events ([`pm::EVENT_POWER_BUTTON`]).
    events: AtomicU8,
}

/// The PM register block, on the port bus at [`PM_BASE`].
pub(crate) struct PmPorts(Arc<PmState>);

impl BusDevice for PmPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == u64::from(pm::GED_EVENT) {
            if let Some(b) = data.first_mut() {
                *b = self.0.events.swap(0, Ordering::SeqCst);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match u16::try_from(offset) {
            Ok(pm::SLEEP_CONTROL)
                if value & pm::SLP_EN != 0 && pm::sleep_type(value) == pm::S5_SLP_TYP =>
            {
                self.0.control.finish(VmExit::PoweredOff);
            }
            Ok(pm::RESET) if value == pm::RESET_VALUE => self.0.control.finish(VmExit::Reset),
            // Other sleep states are not declared; the status register
            // has nothing to clear.
            _ => {}
        }
    }
}

/// Presses the guest's ACPI power button: sets the GED event and raises
/// its interrupt.
pub(crate) struct PowerButton {
    state: Arc<PmState>,
    irq: EventFd,
}

impl PowerButton {
    /// Raises the event; the guest's `_EVT` reads and clears it.
    pub(crate) fn press(&self) -> std::io::Result<()> {
        self.state
            .events
            .fetch_or(pm::EVENT_POWER_BUTTON, Ordering::SeqCst);
        self.irq.write(1)
    }
}

/// The PM ports (for the port bus) and the power button raising `irq`
/// (registered as the GED's irqfd by the caller).
pub(crate) fn pm_device(control: Arc<Control>, irq: EventFd) -> (PmPorts, PowerButton) {
    let state = Arc::new(PmState {
        control,
        events: AtomicU8::new(0),
    });
    (PmPorts(state.clone()), PowerButton { state, irq })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (Arc<Control>, PmPorts, PowerButton) {
        let control = Arc::new(Control::new(1, vec![false]));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (ports, button) = pm_device(control.clone(), irq);
        (control, ports, button)
    }

    /// How the VM ended, once its one (pretend) vCPU thread is done: the
    /// first exit any write asked for, `Stopped` when none did.
    fn ended(c: &Control) -> Option<VmExit> {
        c.thread_done();
        c.wait_exit_timeout(std::time::Duration::ZERO)
    }

    #[test]
    fn s5_powers_off() {
        let (c, mut p, _) = device();
        // Clearing WAK_STS, another sleep type, S5 without SLP_EN, a
        // wrong reset value: none ends the VM.
        p.write(u64::from(pm::SLEEP_STATUS), &[0x80]);
        p.write(u64::from(pm::SLEEP_CONTROL), &[3 << 2 | pm::SLP_EN]);
        p.write(u64::from(pm::SLEEP_CONTROL), &[pm::S5_SLP_TYP << 2]);
        p.write(u64::from(pm::RESET), &[2]);
        p.write(
            u64::from(pm::SLEEP_CONTROL),
            &[pm::S5_SLP_TYP << 2 | pm::SLP_EN],
        );
        assert_eq!(ended(&c), Some(VmExit::PoweredOff));
    }

    #[test]
    fn reset_register_resets() {
        let (c, mut p, _) = device();
        p.write(u64::from(pm::RESET), &[pm::RESET_VALUE]);
        assert_eq!(ended(&c), Some(VmExit::Reset));
    }

    #[test]
    fn power_button_raises_the_ged_and_its_event_reads_once() {
        let (c, mut p, b) = device();
        let mut v = [0xffu8];
        p.read(u64::from(pm::GED_EVENT), &mut v);
        assert_eq!(v, [0]);
        b.press().unwrap();
        assert_eq!(b.irq.read().unwrap(), 1, "GED interrupt raised");
        p.read(u64::from(pm::GED_EVENT), &mut v);
        assert_eq!(v, [pm::EVENT_POWER_BUTTON]);
        p.read(u64::from(pm::GED_EVENT), &mut v);
        assert_eq!(v, [0], "read clears");
        assert_eq!(
            ended(&c),
            Some(VmExit::Stopped),
            "the button alone ends nothing"
        );
    }

    #[test]
    fn machine_lists_the_devices_windows() {
        let devs = [DeviceInfo {
            kind: tern_probe_abi::DEVICE_VIRTIO_BLK,
            irq: 16,
            mmio_base: 0xd000_0000,
            mmio_len: 0x1000,
        }];
        let m = machine(2, &devs);
        assert_eq!(m.vcpus, 2);
        assert_eq!(
            m.virtio_mmio,
            vec![VirtioMmio {
                base: 0xd000_0000,
                len: 0x1000,
                gsi: 16
            }]
        );
        tern_acpi::build(&m, 0xe0000, 0x20000).unwrap();
    }
}
