//! The driver's side of virtio-mmio devices, for the device tests: split
//! virtqueues laid out in test memory, and the transport registers.

use std::sync::{Arc, Mutex};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};

use super::mmio::{reg, MmioTransport};
use super::Mem;
use crate::bus::BusDevice;

/// Descriptor flag: the chain goes on.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: the device writes the buffer.
pub const F_WRITE: u16 = 2;

/// One split virtqueue as its driver sees it.
pub struct DriverQueue {
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// Ring size.
    pub size: u16,
    /// Next available index to publish.
    pub avail_idx: u16,
    /// Used entries read so far.
    pub used_seen: u16,
}

impl DriverQueue {
    /// A queue of `size` entries with its parts at these addresses.
    pub fn new(desc: u64, avail: u64, used: u64, size: u16) -> DriverQueue {
        DriverQueue {
            desc,
            avail,
            used,
            size,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Starts over (a device reset): both ring indexes zero in memory too.
    pub fn reset(&mut self, mem: &Mem) {
        self.avail_idx = 0;
        self.used_seen = 0;
        mem.write_obj(0u16, GuestAddress(self.avail + 2)).unwrap();
        mem.write_obj(0u16, GuestAddress(self.used + 2)).unwrap();
    }

    /// Writes `descs` (address, length, device-writable) as a chain in
    /// descriptor slots `base..` and makes it available.
    pub fn submit_at(&mut self, mem: &Mem, base: u16, descs: &[(u64, u32, bool)]) {
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            let d =
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, base + i as u16 + 1));
            mem.write_obj(d, GuestAddress(self.desc + (base as u64 + i as u64) * 16))
                .unwrap();
        }
        let slot = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
        mem.write_obj(base, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Puts a chain in the slots of its ring position (chains of up to
    /// four descriptors); returns its head.
    pub fn submit(&mut self, mem: &Mem, descs: &[(u64, u32, bool)]) -> u16 {
        let base = (self.avail_idx % (self.size / 4)) * 4;
        self.submit_at(mem, base, descs);
        base
    }

    /// Used entries since the last call: (head, len). Panics if the used
    /// index moved back or ran more than a ring ahead.
    pub fn take_used(&mut self, mem: &Mem) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        assert!(
            idx.wrapping_sub(self.used_seen) <= self.size,
            "used idx {idx} moved back from {}",
            self.used_seen
        );
        let mut out = vec![];
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * (self.used_seen % self.size) as u64;
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Catches up with the used index without reading the entries.
    pub fn skip_used(&mut self, mem: &Mem) -> u16 {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        self.used_seen = idx;
        idx
    }
}

/// Reads a 32-bit transport register.
pub fn r32(t: &Arc<Mutex<MmioTransport>>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.lock().unwrap().read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Writes a 32-bit transport register.
pub fn w32(t: &Arc<Mutex<MmioTransport>>, off: u64, v: u32) {
    t.lock().unwrap().write(off, &v.to_le_bytes());
}

/// Sets queue `index` up at `q`'s addresses and size, and readies it.
/// Returns the device's QUEUE_NUM_MAX.
pub fn setup_queue(t: &Arc<Mutex<MmioTransport>>, index: u32, q: &DriverQueue) -> u32 {
    w32(t, reg::QUEUE_SEL, index);
    let max = r32(t, reg::QUEUE_NUM_MAX);
    w32(t, reg::QUEUE_NUM, q.size as u32);
    for (lo, v) in [
        (reg::QUEUE_DESC_LOW, q.desc),
        (reg::QUEUE_DRIVER_LOW, q.avail),
        (reg::QUEUE_DEVICE_LOW, q.used),
    ] {
        w32(t, lo, v as u32);
        w32(t, lo + 4, (v >> 32) as u32);
    }
    w32(t, reg::QUEUE_READY, 1);
    assert_eq!(r32(t, reg::QUEUE_READY), 1);
    max
}
