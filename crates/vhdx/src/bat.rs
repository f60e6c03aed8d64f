//! The block allocation table: one 64-bit entry per payload block, with a
//! sector bitmap entry after every `chunk_ratio` payload entries.

use crate::header::MIB;

/// Payload block state: not allocated (read from the parent, or zeros).
pub const PAYLOAD_NOT_PRESENT: u8 = 0;
/// Payload block state: contents undefined.
pub const PAYLOAD_UNDEFINED: u8 = 1;
/// Payload block state: reads as zeros.
pub const PAYLOAD_ZERO: u8 = 2;
/// Payload block state: trimmed.
pub const PAYLOAD_UNMAPPED: u8 = 3;
/// Payload block state: all of it is in this file.
pub const PAYLOAD_FULLY_PRESENT: u8 = 6;
/// Payload block state: the sector bitmap says which sectors are here.
pub const PAYLOAD_PARTIALLY_PRESENT: u8 = 7;
/// Sector bitmap block state: absent.
pub const BITMAP_NOT_PRESENT: u8 = 0;
/// Sector bitmap block state: present.
pub const BITMAP_PRESENT: u8 = 6;
/// Bytes of one sector bitmap block.
pub const BITMAP_BLOCK: u64 = MIB;

/// Why the BAT was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BatError {
    /// The region is too small for the disk.
    #[error("BAT region holds {have} entries, the disk needs {need}")]
    TooSmall {
        /// Entries the region holds.
        have: u64,
        /// Entries needed.
        need: u64,
    },
    /// An entry has a state the format does not define for its kind.
    #[error("BAT entry {index} has invalid state {state}")]
    BadState {
        /// Entry index.
        index: u64,
        /// The state.
        state: u8,
    },
    /// An entry points outside the file or into the headers.
    #[error("BAT entry {index} points at {offset}, outside the file's data area")]
    BadOffset {
        /// Entry index.
        index: u64,
        /// The offset.
        offset: u64,
    },
}

/// The shape of a disk's BAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Payload block size.
    pub block_size: u64,
    /// Logical sector size.
    pub sector_size: u64,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    /// Payload blocks covering the virtual size.
    pub payload_blocks: u64,
    /// Sector bitmap blocks covering them.
    pub bitmap_blocks: u64,
    /// Entries the BAT must hold.
    pub entries: u64,
}

impl Geometry {
    /// The BAT geometry for a disk (parameters already validated).
    pub fn new(virtual_size: u64, block_size: u32, sector_size: u32, has_parent: bool) -> Geometry {
        let block_size = block_size as u64;
        let chunk_ratio = ((1u64 << 23) * sector_size as u64) / block_size;
        let payload_blocks = virtual_size.div_ceil(block_size);
        let bitmap_blocks = payload_blocks.div_ceil(chunk_ratio);
        let entries = if has_parent {
            bitmap_blocks * (chunk_ratio + 1)
        } else {
            payload_blocks + payload_blocks.saturating_sub(1) / chunk_ratio
        };
        Geometry {
            block_size,
            sector_size: sector_size as u64,
            chunk_ratio,
            payload_blocks,
            bitmap_blocks,
            entries,
        }
    }

    /// BAT index of payload block `block`.
    #[inline]
    pub fn payload_index(&self, block: u64) -> usize {
        (block + block / self.chunk_ratio) as usize
    }

    /// BAT index of sector bitmap block `chunk`.
    #[inline]
    pub fn bitmap_index(&self, chunk: u64) -> usize {
        (chunk * (self.chunk_ratio + 1) + self.chunk_ratio) as usize
    }

    /// Bytes of BAT region needed, rounded up to 1 MiB.
    pub fn region_bytes(&self) -> u64 {
        (self.entries * 8).next_multiple_of(MIB).max(MIB)
    }

    /// True when BAT index `i` is a sector bitmap entry.
    pub fn is_bitmap_index(&self, i: u64) -> bool {
        i % (self.chunk_ratio + 1) == self.chunk_ratio
    }
}

/// The state bits of an entry.
#[inline]
pub fn state(entry: u64) -> u8 {
    (entry & 7) as u8
}

/// The file offset of an entry's block.
#[inline]
pub fn offset(entry: u64) -> u64 {
    entry & !(MIB - 1)
}

/// An entry with `state` at file `offset` (1 MiB-aligned).
#[inline]
pub fn entry(state: u8, offset: u64) -> u64 {
    debug_assert_eq!(offset % MIB, 0);
    offset | state as u64
}
