//! The probe guest's test port: exit status and text reports.
//!
//! Ports (see `tern_probe_abi`): a 32-bit write to `PORT_EXIT` ends the VM
//! with that status; a 32-bit write to `PORT_REPORT` names the guest-physical
//! address of a length-prefixed text report. `PORT_PARK` is a vCPU
//! scheduling matter and handled by the VMM before the bus.

use tern_probe_abi::{PORT_EXIT, PORT_REPORT, REPORT_MAX};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::bus::BusDevice;

/// First port of the test port range.
pub const TEST_PORT_BASE: u16 = PORT_EXIT;
/// Number of ports in the range.
pub const TEST_PORT_LEN: u16 = 8;

/// Receives what the guest reports.
pub trait ProbeEvents: Send {
    /// The guest finished with `status`.
    fn exit(&self, status: u32);
    /// The guest sent a report line (or the VMM describes a bad one).
    fn report(&self, text: String);
}

/// The test port device.
pub struct TestPort<M, E> {
    mem: M,
    events: E,
}

impl<M: GuestMemory + Send, E: ProbeEvents> TestPort<M, E> {
    /// A test port reading reports from `mem` and passing events to `events`.
    pub fn new(mem: M, events: E) -> Self {
        TestPort { mem, events }
    }

    /// Reads a report; every number in it is guest-controlled and checked.
    fn read_report(&self, addr: u64) -> String {
        let len: u32 = match self.mem.read_obj(GuestAddress(addr)) {
            Ok(l) => l,
            Err(_) => return format!("bad-report addr={addr:#x} reason=unmapped"),
        };
        if len > REPORT_MAX {
            return format!("bad-report addr={addr:#x} len={len} reason=too-long");
        }
        let mut buf = vec![0u8; len as usize];
        let Some(text_addr) = addr.checked_add(4) else {
            return format!("bad-report addr={addr:#x} reason=overflow");
        };
        if self
            .mem
            .read_slice(&mut buf, GuestAddress(text_addr))
            .is_err()
        {
            return format!("bad-report addr={addr:#x} len={len} reason=unmapped");
        }
        String::from_utf8_lossy(&buf).trim_end().to_string()
    }
}

fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl<M: GuestMemory + Send, E: ProbeEvents> BusDevice for TestPort<M, E> {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let port = TEST_PORT_BASE as u64 + offset;
        let value = le_u32(data);
        if port == PORT_EXIT as u64 {
            self.events.exit(value);
        } else if port == PORT_REPORT as u64 {
            let text = self.read_report(value as u64);
            self.events.report(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vm_memory::GuestMemoryMmap;

    #[derive(Clone, Default)]
    struct Rec(Arc<Mutex<Vec<String>>>);
    impl ProbeEvents for Rec {
        fn exit(&self, status: u32) {
            self.0.lock().unwrap().push(format!("exit {status}"));
        }
        fn report(&self, text: String) {
            self.0.lock().unwrap().push(text);
        }
    }

    fn port() -> (TestPort<GuestMemoryMmap, Rec>, Rec) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let rec = Rec::default();
        (TestPort::new(mem, rec.clone()), rec)
    }

    #[test]
    fn exit_and_report() {
        let (mut tp, rec) = port();
        tp.mem.write_obj(5u32, GuestAddress(0x1000)).unwrap();
        tp.mem.write_slice(b"hello", GuestAddress(0x1004)).unwrap();
        tp.write(
            (PORT_REPORT - TEST_PORT_BASE) as u64,
            &0x1000u32.to_le_bytes(),
        );
        tp.write(0, &7u32.to_le_bytes());
        assert_eq!(*rec.0.lock().unwrap(), vec!["hello", "exit 7"]);
    }

    #[test]
    fn hostile_reports_are_described_not_trusted() {
        let (mut tp, rec) = port();
        let off = (PORT_REPORT - TEST_PORT_BASE) as u64;
        tp.mem.write_obj(u32::MAX, GuestAddress(0x2000)).unwrap();
        tp.write(off, &0x2000u32.to_le_bytes());
        tp.write(off, &0xffff_fff0u32.to_le_bytes());
        tp.mem.write_obj(100u32, GuestAddress(0xfff0)).unwrap();
        tp.write(off, &0xfff0u32.to_le_bytes());
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(got.len(), 3);
        assert!(got[0].contains("too-long"), "{got:?}");
        assert!(got[1].contains("unmapped"), "{got:?}");
        assert!(got[2].contains("unmapped"), "{got:?}");
    }
}
