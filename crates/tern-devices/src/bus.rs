//! A bus maps address ranges (port I/O or MMIO) to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`]. `offset` is relative to the base of
/// the range the device was inserted at.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
    /// A zero-length range.
    #[error("bus range at {0:#x} has zero length")]
    Empty(u64),
}

/// A shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    dev: SharedDevice,
}

/// Address ranges to devices; lookups are O(log n).
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base+len)` to `dev`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        let clash_before = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(&b, e)| b + e.len > base);
        if clash_before {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, dev });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        (addr - base < entry.len).then_some((base, entry))
    }

    /// Dispatches a read; returns false if no device is mapped at `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, e)) => {
                lock(&e.dev).read(addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((base, e)) => {
                lock(&e.dev).write(addr - base, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: with panic=abort a
/// poisoned lock cannot happen in production, and in tests the device state
/// is still the best we have.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec(Vec<(u64, u8)>);
    impl BusDevice for Rec {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn dispatches_by_range_with_relative_offsets() {
        let a = Arc::new(Mutex::new(Rec(vec![])));
        let mut bus = Bus::new();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        assert!(bus.write(0x3fd, &[7]));
        assert!(!bus.write(0x400, &[7]));
        assert!(!bus.write(0x3f7, &[7]));
        let mut b = [0u8; 1];
        assert!(bus.read(0x3f9, &mut b));
        assert_eq!(b[0], 1);
        assert_eq!(a.lock().unwrap().0, vec![(5, 7)]);
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Rec(vec![]))) as SharedDevice;
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert!(bus.insert(d(), 0x10f, 1).is_err());
        assert!(bus.insert(d(), 0xf8, 0x10).is_err());
        assert!(bus.insert(d(), 0x90, 0x100).is_err());
        assert!(bus.insert(d(), 0x200, 0).is_err());
        bus.insert(d(), 0x110, 1).unwrap();
        bus.insert(d(), 0xf0, 0x10).unwrap();
    }
}
