//! Dirty-block tracking for mirroring a disk while the guest writes it
//! (storage live migration, shared-nothing migration).
//!
//! A [`DirtyBitmap`] has one bit per `granularity` bytes of the disk.
//! A [`DirtyLog`] is the switch the I/O path marks through: inactive it
//! costs one uncontended lock per write; active it records every write,
//! discard and write-zeroes until the mirror [`DirtyLog::take`]s what was
//! marked.
//!
//! Marks must follow the write they record (mark after the data is in
//! the image): a mirror that takes the bitmap and then reads a range
//! either sees the new data or finds the range marked again next round.
//!
//! Resizes while tracking: a grown disk marks its new tail dirty (the
//! mirror's copy is smaller and must learn the new bytes, zeros or not);
//! a shrunk disk drops the bits past its new end.

use std::ops::Range;
use std::sync::Mutex;

/// Smallest granularity: one page, the unit the guest's file systems write.
pub const MIN_GRANULARITY: u64 = 4096;

/// One bit per `granularity` bytes of a disk of `capacity` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    capacity: u64,
    granularity: u64,
    bits: Vec<u64>,
}

impl DirtyBitmap {
    /// An empty bitmap. `granularity` is rounded up to a power of two of
    /// at least [`MIN_GRANULARITY`] ([`DirtyBitmap::granularity`] says
    /// what it became).
    pub fn new(capacity: u64, granularity: u64) -> DirtyBitmap {
        let granularity = granularity
            .max(MIN_GRANULARITY)
            .checked_next_power_of_two()
            .unwrap_or(1 << 63);
        let mut b = DirtyBitmap {
            capacity: 0,
            granularity,
            bits: Vec::new(),
        };
        b.set_capacity(capacity);
        b
    }

    fn blocks_for(&self, capacity: u64) -> u64 {
        capacity.div_ceil(self.granularity)
    }

    /// Sets the capacity without marking anything; bits past a smaller
    /// end are cleared.
    fn set_capacity(&mut self, capacity: u64) {
        let blocks = self.blocks_for(capacity);
        self.bits.resize(blocks.div_ceil(64) as usize, 0);
        if !blocks.is_multiple_of(64) {
            if let Some(last) = self.bits.last_mut() {
                *last &= (1u64 << (blocks % 64)) - 1;
            }
        }
        self.capacity = capacity;
    }

    /// Bytes per bit (a power of two, at least 4096).
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// The disk size the bitmap covers.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Marks every block that `[offset, offset+len)` touches; the part
    /// beyond the capacity is ignored.
    pub fn mark(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.capacity);
        if len == 0 || offset >= end {
            return;
        }
        let first = offset / self.granularity;
        let last = (end - 1) / self.granularity;
        for b in first..=last {
            self.bits[(b / 64) as usize] |= 1 << (b % 64);
        }
    }

    fn is_set(&self, block: u64) -> bool {
        self.bits[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// The marked bytes as merged, ascending ranges, the last one clipped
    /// to the capacity.
    pub fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let blocks = self.blocks_for(self.capacity);
        let mut b = 0u64;
        std::iter::from_fn(move || {
            // Skip whole empty words quickly, then bit by bit.
            while b < blocks {
                let w = self.bits[(b / 64) as usize];
                if b.is_multiple_of(64) && w == 0 {
                    b += 64;
                } else if self.is_set(b) {
                    break;
                } else {
                    b += 1;
                }
            }
            if b >= blocks {
                return None;
            }
            let start = b;
            while b < blocks && self.is_set(b) {
                b += 1;
            }
            Some(start * self.granularity..(b * self.granularity).min(self.capacity))
        })
    }

    /// Total bytes in [`DirtyBitmap::ranges`].
    pub fn dirty_bytes(&self) -> u64 {
        self.ranges().map(|r| r.end - r.start).sum()
    }

    /// True when nothing is marked.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    /// Adds `other`'s marks (any capacity or granularity: its ranges are
    /// marked here, clipped to this capacity).
    pub fn merge(&mut self, other: &DirtyBitmap) {
        if other.granularity == self.granularity && other.capacity == self.capacity {
            for (a, b) in self.bits.iter_mut().zip(&other.bits) {
                *a |= b;
            }
            return;
        }
        for r in other.ranges() {
            self.mark(r.start, r.end - r.start);
        }
    }

    /// Follows a resize of the disk: a grown disk marks its new tail, a
    /// shrunk one drops the bits past the new end.
    pub fn resize(&mut self, new_capacity: u64) {
        let old = self.capacity;
        self.set_capacity(new_capacity);
        if new_capacity > old {
            self.mark(old, new_capacity - old);
        }
    }
}

/// A disk's dirty log: the I/O path marks it, a mirror takes the marks.
/// Shared between threads (`&self` throughout).
#[derive(Debug, Default)]
pub struct DirtyLog {
    bitmap: Mutex<Option<DirtyBitmap>>,
}

impl DirtyLog {
    /// An inactive log.
    pub fn new() -> DirtyLog {
        DirtyLog::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<DirtyBitmap>> {
        self.bitmap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking a disk of `capacity` bytes in blocks of
    /// `granularity` (see [`DirtyBitmap::new`]). Returns false, and changes
    /// nothing, when the log is already active: one mirror at a time.
    pub fn start(&self, capacity: u64, granularity: u64) -> bool {
        let mut g = self.lock();
        if g.is_some() {
            return false;
        }
        *g = Some(DirtyBitmap::new(capacity, granularity));
        true
    }

    /// Stops tracking and drops the marks.
    pub fn stop(&self) {
        *self.lock() = None;
    }

    /// True between [`DirtyLog::start`] and [`DirtyLog::stop`].
    pub fn is_active(&self) -> bool {
        self.lock().is_some()
    }

    /// Records a write, discard or write-zeroes of `[offset, offset+len)`;
    /// nothing when inactive. Call it after the change is in the image.
    pub fn mark(&self, offset: u64, len: u64) {
        if let Some(b) = self.lock().as_mut() {
            b.mark(offset, len);
        }
    }

    /// Follows a resize of the disk ([`DirtyBitmap::resize`]).
    pub fn resize(&self, new_capacity: u64) {
        if let Some(b) = self.lock().as_mut() {
            b.resize(new_capacity);
        }
    }

    /// What was marked since the start or the last take; tracking goes on
    /// with an empty bitmap. `None` when inactive.
    pub fn take(&self) -> Option<DirtyBitmap> {
        let mut g = self.lock();
        let b = g.as_mut()?;
        let fresh = DirtyBitmap::new(b.capacity, b.granularity);
        Some(std::mem::replace(b, fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granularity_is_a_power_of_two_of_at_least_a_page() {
        assert_eq!(DirtyBitmap::new(1 << 20, 0).granularity(), 4096);
        assert_eq!(DirtyBitmap::new(1 << 20, 5000).granularity(), 8192);
        assert_eq!(DirtyBitmap::new(1 << 20, 65536).granularity(), 65536);
        assert_eq!(DirtyBitmap::new(1, u64::MAX).granularity(), 1 << 63);
    }

    #[test]
    fn marks_merge_into_ranges_clipped_to_capacity() {
        // 10 blocks of 4 KiB and a half block.
        let cap = 10 * 4096 + 2048;
        let mut b = DirtyBitmap::new(cap, 4096);
        assert!(b.is_empty());
        assert_eq!(b.ranges().count(), 0);
        b.mark(100, 1); // block 0
        b.mark(4096, 4096); // block 1, exactly
        b.mark(3 * 4096 + 4095, 2); // blocks 3 and 4
        b.mark(10 * 4096 + 10, 1 << 30); // the half block, clipped
        b.mark(cap, 4096); // beyond the end: ignored
        b.mark(u64::MAX - 1, 10); // no overflow
        b.mark(0, 0); // nothing
        let r: Vec<_> = b.ranges().collect();
        assert_eq!(r, vec![0..8192, 12288..20480, 40960..cap]);
        assert_eq!(b.dirty_bytes(), 8192 + 8192 + 2048);
        assert!(!b.is_empty());
    }

    #[test]
    fn ranges_cross_word_boundaries() {
        let mut b = DirtyBitmap::new(300 * 4096, 4096);
        b.mark(60 * 4096, 10 * 4096); // blocks 60..70 span words 0 and 1
        b.mark(128 * 4096, 4096); // first bit of word 2
        b.mark(299 * 4096, 4096); // the last block
        let r: Vec<_> = b.ranges().collect();
        assert_eq!(
            r,
            vec![
                60 * 4096..70 * 4096,
                128 * 4096..129 * 4096,
                299 * 4096..300 * 4096
            ]
        );
    }

    #[test]
    fn merge_same_and_different_shapes() {
        let mut a = DirtyBitmap::new(1 << 20, 4096);
        let mut b = DirtyBitmap::new(1 << 20, 4096);
        a.mark(0, 1);
        b.mark(8192, 1);
        a.merge(&b);
        assert_eq!(a.ranges().collect::<Vec<_>>(), vec![0..4096, 8192..12288]);
        let mut c = DirtyBitmap::new(2 << 20, 65536);
        c.mark((1 << 20) - 1, 2); // straddles a's end
        a.merge(&c);
        assert_eq!(
            a.ranges().collect::<Vec<_>>(),
            vec![0..4096, 8192..12288, (1 << 20) - 65536..1 << 20]
        );
    }

    #[test]
    fn resize_marks_a_grown_tail_and_drops_a_cut_one() {
        let mut b = DirtyBitmap::new(8192, 4096);
        b.resize(8192 + 4096 * 70);
        assert_eq!(b.ranges().collect::<Vec<_>>(), vec![8192..8192 + 4096 * 70]);
        b.resize(4096 * 3 + 512);
        assert_eq!(b.ranges().collect::<Vec<_>>(), vec![8192..4096 * 3 + 512]);
        // Bits cut off stay off when the disk grows back.
        b.resize(4096);
        assert!(b.is_empty());
        b.resize(8192);
        assert_eq!(b.ranges().collect::<Vec<_>>(), vec![4096..8192]);
    }

    #[test]
    fn log_records_only_while_active_and_take_restarts_it() {
        let log = DirtyLog::new();
        log.mark(0, 4096);
        assert!(!log.is_active());
        assert!(log.take().is_none());
        assert!(log.start(1 << 20, 4096));
        assert!(!log.start(2 << 20, 4096), "a second start is refused");
        log.mark(4096, 1);
        let t = log.take().unwrap();
        assert_eq!(t.ranges().collect::<Vec<_>>(), vec![4096..8192]);
        assert_eq!(t.capacity(), 1 << 20);
        assert!(log.take().unwrap().is_empty(), "take leaves an empty one");
        log.mark(0, 1);
        log.resize((1 << 20) + 4096);
        let t = log.take().unwrap();
        assert_eq!(
            t.ranges().collect::<Vec<_>>(),
            vec![0..4096, 1 << 20..(1 << 20) + 4096]
        );
        log.stop();
        assert!(!log.is_active());
        log.mark(0, 1);
        assert!(log.take().is_none());
    }

    #[test]
    fn log_is_shared_between_threads() {
        let log = std::sync::Arc::new(DirtyLog::new());
        log.start(64 << 20, 1 << 20);
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let l = log.clone();
                std::thread::spawn(move || {
                    for i in 0..16 {
                        l.mark((t * 16 + i) << 20, 1);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(log.take().unwrap().dirty_bytes(), 64 << 20);
    }
}
