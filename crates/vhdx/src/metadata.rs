//! The metadata region: block size, disk size, sector sizes, disk id and
//! (for differencing disks) the parent locator.

use crate::guid::Guid;
use crate::header::{guid_at, u16_at, u32_at, u64_at, MIB};

/// Bytes of the metadata table at the start of the region.
pub const TABLE_SIZE: usize = 64 * 1024;
/// Largest virtual disk the format allows (64 TiB).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// File parameters item.
pub const FILE_PARAMETERS: Guid = Guid::from_fields(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
/// Virtual disk size item.
pub const VIRTUAL_DISK_SIZE: Guid = Guid::from_fields(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
/// Virtual disk id (SCSI page 83) item.
pub const PAGE83: Guid = Guid::from_fields(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
/// Logical sector size item.
pub const LOGICAL_SECTOR: Guid = Guid::from_fields(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
/// Physical sector size item.
pub const PHYSICAL_SECTOR: Guid = Guid::from_fields(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
/// Parent locator item.
pub const PARENT_LOCATOR: Guid = Guid::from_fields(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
/// Locator type of a VHDX parent.
pub const VHDX_LOCATOR_TYPE: Guid = Guid::from_fields(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

const SIG: &[u8; 8] = b"metadata";
const MAX_ENTRIES: u16 = 2047;
const FLAG_VIRTUAL_DISK: u32 = 2;
const FLAG_REQUIRED: u32 = 4;

/// Why the metadata region was rejected.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The table's signature is wrong.
    #[error("metadata table has no 'metadata' signature")]
    BadSignature,
    /// Too many entries.
    #[error("metadata table lists {0} entries (at most 2047)")]
    TooManyEntries(u16),
    /// An item lies outside the region or overlaps the table.
    #[error("metadata item {item} at {offset}+{length} lies outside the region's items")]
    ItemOutOfRange {
        /// The item.
        item: Guid,
        /// Its offset in the region.
        offset: u32,
        /// Its length.
        length: u32,
    },
    /// A required item this implementation does not know.
    #[error("unknown required metadata item {0}")]
    UnknownRequired(Guid),
    /// A required item is absent.
    #[error("metadata item {0} is missing")]
    Missing(&'static str),
    /// An item's value is out of range.
    #[error("metadata {item} is invalid: {why}")]
    Invalid {
        /// Which item.
        item: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// A parent locator: key/value pairs naming the parent of a differencing disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentLocator {
    /// Pairs in file order (keys such as `parent_linkage`, `relative_path`).
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn parse(b: &[u8]) -> Result<ParentLocator, MetadataError> {
        let bad = |why: String| MetadataError::Invalid {
            item: "parent locator",
            why,
        };
        if b.len() < 20 {
            return Err(bad(format!("{} bytes is too short", b.len())));
        }
        let kind = guid_at(b, 0);
        if kind != VHDX_LOCATOR_TYPE {
            return Err(bad(format!("locator type {kind} is not VHDX")));
        }
        let count = u16_at(b, 18) as usize;
        if 20 + count * 12 > b.len() {
            return Err(bad(format!("{count} entries do not fit")));
        }
        let text = |off: u32, len: u16| -> Result<String, MetadataError> {
            let (off, len) = (off as usize, len as usize);
            if off + len > b.len() || len % 2 != 0 {
                return Err(bad(format!("string at {off}+{len} out of range")));
            }
            let units: Vec<u16> = b[off..off + len]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).map_err(|_| bad(format!("string at {off} is not UTF-16")))
        };
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let e = &b[20 + i * 12..32 + i * 12];
            let key = text(u32_at(e, 0), u16_at(e, 8))?;
            let value = text(u32_at(e, 4), u16_at(e, 10))?;
            entries.push((key, value));
        }
        Ok(ParentLocator { entries })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let utf16 =
            |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect() };
        let mut b = vec![0u8; 20 + self.entries.len() * 12];
        b[..16].copy_from_slice(&VHDX_LOCATOR_TYPE.0);
        b[18..20].copy_from_slice(&(self.entries.len() as u16).to_le_bytes());
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let (k, v) = (utf16(k), utf16(v));
            let ko = b.len();
            b.extend_from_slice(&k);
            let vo = b.len();
            b.extend_from_slice(&v);
            let e = &mut b[20 + i * 12..32 + i * 12];
            e[0..4].copy_from_slice(&(ko as u32).to_le_bytes());
            e[4..8].copy_from_slice(&(vo as u32).to_le_bytes());
            e[8..10].copy_from_slice(&(k.len() as u16).to_le_bytes());
            e[10..12].copy_from_slice(&(v.len() as u16).to_le_bytes());
        }
        b
    }
}

/// The disk's parameters from the metadata region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Payload block size in bytes (a power of two, 1–256 MiB).
    pub block_size: u32,
    /// Blocks stay allocated (fixed disks).
    pub leave_blocks_allocated: bool,
    /// A differencing disk.
    pub has_parent: bool,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    /// The virtual disk's id.
    pub disk_id: Guid,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size (512 or 4096).
    pub physical_sector_size: u32,
    /// The parent locator of a differencing disk.
    pub parent_locator: Option<ParentLocator>,
    /// Offset of the virtual size item within the region, for resize.
    pub(crate) virtual_size_at: u32,
}

/// Reads one item: `read(offset_in_region, len)` fetches bytes.
type ItemReader<'a> = dyn FnMut(u32, u32) -> std::io::Result<Vec<u8>> + 'a;

impl Metadata {
    /// Parses the region: `table` is its first 64 KiB, `region_len` its
    /// length, and `read` fetches an item's bytes.
    pub fn parse(
        table: &[u8],
        region_len: u32,
        read: &mut ItemReader<'_>,
    ) -> Result<Metadata, crate::Error> {
        if table.len() < TABLE_SIZE || &table[..8] != SIG {
            return Err(MetadataError::BadSignature.into());
        }
        let count = u16_at(table, 10);
        if count > MAX_ENTRIES {
            return Err(MetadataError::TooManyEntries(count).into());
        }
        let mut items: Vec<(Guid, u32, u32)> = Vec::new();
        for i in 0..count as usize {
            let e = &table[32 + i * 32..64 + i * 32];
            let (id, offset, length, flags) =
                (guid_at(e, 0), u32_at(e, 16), u32_at(e, 20), u32_at(e, 24));
            let known = [
                FILE_PARAMETERS,
                VIRTUAL_DISK_SIZE,
                PAGE83,
                LOGICAL_SECTOR,
                PHYSICAL_SECTOR,
                PARENT_LOCATOR,
            ]
            .contains(&id);
            if !known {
                if flags & FLAG_REQUIRED != 0 {
                    return Err(MetadataError::UnknownRequired(id).into());
                }
                continue;
            }
            let end = offset as u64 + length as u64;
            if length > 0
                && ((offset as usize) < TABLE_SIZE
                    || end > region_len as u64
                    || length as u64 > MIB)
            {
                return Err(MetadataError::ItemOutOfRange {
                    item: id,
                    offset,
                    length,
                }
                .into());
            }
            items.push((id, offset, length));
        }
        let mut get = |id: Guid,
                       name: &'static str,
                       want: Option<u32>|
         -> Result<Option<(u32, Vec<u8>)>, crate::Error> {
            let Some(&(_, off, len)) = items.iter().find(|i| i.0 == id) else {
                return Ok(None);
            };
            if let Some(w) = want {
                if len != w {
                    return Err(MetadataError::Invalid {
                        item: name,
                        why: format!("length {len}, expected {w}"),
                    }
                    .into());
                }
            }
            let data = read(off, len).map_err(|e| crate::Error::io("reading metadata item", e))?;
            Ok(Some((off, data)))
        };
        let invalid = |item: &'static str, why: String| -> crate::Error {
            MetadataError::Invalid { item, why }.into()
        };
        let (_, fp) = get(FILE_PARAMETERS, "file parameters", Some(8))?
            .ok_or(MetadataError::Missing("file parameters"))?;
        let block_size = u32_at(&fp, 0);
        let flags = u32_at(&fp, 4);
        if !block_size.is_power_of_two() || !(MIB as u32..=256 * MIB as u32).contains(&block_size) {
            return Err(invalid(
                "block size",
                format!("{block_size} is not a power of two in 1–256 MiB"),
            ));
        }
        let (vs_at, vs) = get(VIRTUAL_DISK_SIZE, "virtual disk size", Some(8))?
            .ok_or(MetadataError::Missing("virtual disk size"))?;
        let virtual_size = u64_at(&vs, 0);
        let (_, id) = get(PAGE83, "virtual disk id", Some(16))?
            .ok_or(MetadataError::Missing("virtual disk id"))?;
        let (_, ls) = get(LOGICAL_SECTOR, "logical sector size", Some(4))?
            .ok_or(MetadataError::Missing("logical sector size"))?;
        let (_, ps) = get(PHYSICAL_SECTOR, "physical sector size", Some(4))?
            .ok_or(MetadataError::Missing("physical sector size"))?;
        let logical_sector_size = u32_at(&ls, 0);
        let physical_sector_size = u32_at(&ps, 0);
        for (name, v) in [
            ("logical sector size", logical_sector_size),
            ("physical sector size", physical_sector_size),
        ] {
            if v != 512 && v != 4096 {
                return Err(invalid(name, format!("{v} is neither 512 nor 4096")));
            }
        }
        if virtual_size == 0
            || virtual_size > MAX_VIRTUAL_SIZE
            || !virtual_size.is_multiple_of(logical_sector_size as u64)
        {
            return Err(invalid(
                "virtual disk size",
                format!("{virtual_size} is not a multiple of {logical_sector_size} in (0, 64 TiB]"),
            ));
        }
        let has_parent = flags & 2 != 0;
        let parent_locator = if has_parent {
            let (_, pl) = get(PARENT_LOCATOR, "parent locator", None)?
                .ok_or(MetadataError::Missing("parent locator"))?;
            Some(ParentLocator::parse(&pl)?)
        } else {
            None
        };
        Ok(Metadata {
            block_size,
            leave_blocks_allocated: flags & 1 != 0,
            has_parent,
            virtual_size,
            disk_id: guid_at(&id, 0),
            logical_sector_size,
            physical_sector_size,
            parent_locator,
            virtual_size_at: vs_at,
        })
    }

    /// The region's content (table and items); the rest of the region is zero.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut items: Vec<(Guid, Vec<u8>, u32)> = vec![
            (
                FILE_PARAMETERS,
                [
                    self.block_size.to_le_bytes(),
                    ((self.leave_blocks_allocated as u32) | ((self.has_parent as u32) << 1))
                        .to_le_bytes(),
                ]
                .concat(),
                FLAG_REQUIRED,
            ),
            (
                VIRTUAL_DISK_SIZE,
                self.virtual_size.to_le_bytes().to_vec(),
                FLAG_REQUIRED | FLAG_VIRTUAL_DISK,
            ),
            (
                PAGE83,
                self.disk_id.0.to_vec(),
                FLAG_REQUIRED | FLAG_VIRTUAL_DISK,
            ),
            (
                LOGICAL_SECTOR,
                self.logical_sector_size.to_le_bytes().to_vec(),
                FLAG_REQUIRED | FLAG_VIRTUAL_DISK,
            ),
            (
                PHYSICAL_SECTOR,
                self.physical_sector_size.to_le_bytes().to_vec(),
                FLAG_REQUIRED | FLAG_VIRTUAL_DISK,
            ),
        ];
        if let (true, Some(pl)) = (self.has_parent, &self.parent_locator) {
            items.push((PARENT_LOCATOR, pl.to_bytes(), FLAG_REQUIRED));
        }
        let mut b = vec![0u8; TABLE_SIZE];
        b[..8].copy_from_slice(SIG);
        b[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        for (i, (id, data, flags)) in items.iter().enumerate() {
            let off = b.len() as u32;
            b.extend_from_slice(data);
            // Keep items 8-byte aligned, as other writers do.
            b.resize(b.len().next_multiple_of(8), 0);
            let e = &mut b[32 + i * 32..64 + i * 32];
            e[..16].copy_from_slice(&id.0);
            e[16..20].copy_from_slice(&off.to_le_bytes());
            e[20..24].copy_from_slice(&(data.len() as u32).to_le_bytes());
            e[24..28].copy_from_slice(&flags.to_le_bytes());
        }
        b
    }

    /// Where the virtual size item is, after [`Metadata::to_bytes`] laid it out.
    pub(crate) fn layout_virtual_size_at() -> u32 {
        TABLE_SIZE as u32 + 8
    }
}
