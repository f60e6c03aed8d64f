//! The region table: where the BAT and the metadata region are.

use crate::crc::{crc32c, crc32c_skipping};
use crate::guid::Guid;
use crate::header::{guid_at, u32_at, u64_at, MIB};

/// Offsets of the two region table copies.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [192 * 1024, 256 * 1024];
/// Bytes a region table occupies (its checksum covers all of them).
pub const REGION_TABLE_SIZE: usize = 64 * 1024;

/// The BAT region's GUID.
pub const BAT_GUID: Guid = Guid::from_fields(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// The metadata region's GUID.
pub const METADATA_GUID: Guid = Guid::from_fields(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);

const SIG: &[u8; 4] = b"regi";
const MAX_ENTRIES: u32 = 2047;

/// Why a region table was rejected.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// Neither copy is valid.
    #[error("neither region table is valid (first: {first}; second: {second})")]
    NoValidTable {
        /// Why the first copy was rejected.
        first: String,
        /// Why the second copy was rejected.
        second: String,
    },
}

/// One region: where it is and how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Byte offset in the file (1 MiB-aligned).
    pub offset: u64,
    /// Length in bytes (a multiple of 1 MiB).
    pub length: u32,
}

/// A parsed region table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionTable {
    /// The BAT region.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
    /// Other regions (not required ones: those make the file unreadable).
    pub others: Vec<(Guid, Region, bool)>,
}

impl RegionTable {
    /// Parses and validates a 64 KiB region table.
    pub fn parse(b: &[u8]) -> Result<RegionTable, String> {
        if b.len() < REGION_TABLE_SIZE {
            return Err("short region table".into());
        }
        let b = &b[..REGION_TABLE_SIZE];
        if &b[..4] != SIG {
            return Err("bad signature".into());
        }
        let stored = u32_at(b, 4);
        let computed = crc32c_skipping(b, 4);
        if stored != computed {
            return Err(format!(
                "checksum {stored:#010x}, expected {computed:#010x}"
            ));
        }
        let count = u32_at(b, 8);
        if count > MAX_ENTRIES {
            return Err(format!("{count} entries (at most {MAX_ENTRIES})"));
        }
        let (mut bat, mut metadata, mut others) = (None, None, Vec::new());
        for i in 0..count as usize {
            let e = &b[16 + i * 32..48 + i * 32];
            let guid = guid_at(e, 0);
            let r = Region {
                offset: u64_at(e, 16),
                length: u32_at(e, 24),
            };
            let required = u32_at(e, 28) & 1 != 0;
            if !r.offset.is_multiple_of(MIB)
                || r.offset < MIB
                || !(r.length as u64).is_multiple_of(MIB)
                || r.length == 0
            {
                return Err(format!(
                    "region {guid} at {} length {} is not 1 MiB-aligned past the headers",
                    r.offset, r.length
                ));
            }
            let slot = if guid == BAT_GUID {
                &mut bat
            } else if guid == METADATA_GUID {
                &mut metadata
            } else {
                if required {
                    return Err(format!("unknown required region {guid}"));
                }
                others.push((guid, r, required));
                continue;
            };
            if slot.replace(r).is_some() {
                return Err(format!("region {guid} listed twice"));
            }
        }
        let bat = bat.ok_or("no BAT region")?;
        let metadata = metadata.ok_or("no metadata region")?;
        let t = RegionTable {
            bat,
            metadata,
            others,
        };
        let all: Vec<Region> = t.all();
        for (i, a) in all.iter().enumerate() {
            for c in &all[i + 1..] {
                if overlaps(a.offset, a.length as u64, c.offset, c.length as u64) {
                    return Err(format!("regions at {} and {} overlap", a.offset, c.offset));
                }
            }
        }
        Ok(t)
    }

    /// Every region in the table.
    pub fn all(&self) -> Vec<Region> {
        let mut v = vec![self.bat, self.metadata];
        v.extend(self.others.iter().map(|o| o.1));
        v
    }

    /// The 64 KiB on-disk form, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; REGION_TABLE_SIZE];
        b[..4].copy_from_slice(SIG);
        let mut entries = vec![
            (BAT_GUID, self.bat, true),
            (METADATA_GUID, self.metadata, true),
        ];
        entries.extend(self.others.iter().cloned());
        b[8..12].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        for (i, (g, r, req)) in entries.iter().enumerate() {
            let e = &mut b[16 + i * 32..48 + i * 32];
            e[..16].copy_from_slice(&g.0);
            e[16..24].copy_from_slice(&r.offset.to_le_bytes());
            e[24..28].copy_from_slice(&r.length.to_le_bytes());
            e[28..32].copy_from_slice(&(*req as u32).to_le_bytes());
        }
        let c = crc32c(&b);
        b[4..8].copy_from_slice(&c.to_le_bytes());
        b
    }
}

/// Picks a valid region table: the first copy if valid, else the second.
pub fn choose(first: &[u8], second: &[u8]) -> Result<(RegionTable, Vec<String>), RegionError> {
    let mut notes = Vec::new();
    match (RegionTable::parse(first), RegionTable::parse(second)) {
        (Ok(a), Ok(b)) => {
            if a != b {
                notes.push("the two region tables differ; using the first".into());
            }
            Ok((a, notes))
        }
        (Ok(a), Err(e)) => {
            notes.push(format!("second region table invalid: {e}"));
            Ok((a, notes))
        }
        (Err(e), Ok(b)) => {
            notes.push(format!("first region table invalid: {e}"));
            Ok((b, notes))
        }
        (Err(first), Err(second)) => Err(RegionError::NoValidTable { first, second }),
    }
}

/// True when `[a, a+al)` and `[b, b+bl)` share a byte.
pub fn overlaps(a: u64, al: u64, b: u64, bl: u64) -> bool {
    a < b.saturating_add(bl) && b < a.saturating_add(al)
}
