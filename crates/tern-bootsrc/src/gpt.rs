//! GUID Partition Tables (UEFI 2.10 §5.3): the header at LBA 1 (or its
//! backup at the last LBA), checked by its CRC32s, and the partition
//! entries. Read by hand: the table is small, and every field is checked
//! before use (a malformed table is an error, never a panic), which the
//! `gpt` crate does not promise for arbitrary input.

use crate::medium::Medium;

/// Bytes per logical block of the images Tern boots from.
pub const LBA: u64 = 512;
/// The largest partition entry array read (the usual is 128 × 128 bytes).
const MAX_ENTRIES_BYTES: u64 = 1 << 20;

/// Partition type GUIDs (in the on-disk mixed-endian byte order).
pub mod types {
    /// EFI System Partition, C12A7328-F81F-11D2-BA4B-00A0C93EC93B.
    pub const ESP: [u8; 16] = guid(
        0xC12A7328,
        0xF81F,
        0x11D2,
        [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
    );
    /// Extended boot loader partition (XBOOTLDR),
    /// BC13C2FF-59E6-4262-A352-B275FD6F7172.
    pub const XBOOTLDR: [u8; 16] = guid(
        0xBC13C2FF,
        0x59E6,
        0x4262,
        [0xA3, 0x52, 0xB2, 0x75, 0xFD, 0x6F, 0x71, 0x72],
    );
    /// Linux file system data, 0FC63DAF-8483-4772-8E79-3D69D8477DE4.
    pub const LINUX_FS: [u8; 16] = guid(
        0x0FC63DAF,
        0x8483,
        0x4772,
        [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
    );
    /// Linux root (x86-64), 4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709.
    pub const LINUX_ROOT_X86_64: [u8; 16] = guid(
        0x4F68BCE3,
        0xE8CD,
        0x4DB1,
        [0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09],
    );

    const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        [
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ]
    }
}

/// Why a partition table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// Reading the medium failed.
    #[error("reading the partition table failed")]
    Io(#[source] std::io::Error),
    /// Neither header copy is valid.
    #[error("no valid GPT header (primary: {primary}; backup: {backup})")]
    NoHeader {
        /// What is wrong with the primary header.
        primary: String,
        /// What is wrong with the backup.
        backup: String,
    },
    /// The entry array's CRC32 does not match its header.
    #[error("the GPT partition entries fail their CRC32")]
    EntriesCrc,
}

/// One used partition entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Its index in the entry array, from 1 as tools number them.
    pub number: u32,
    /// The type GUID (on-disk byte order).
    pub type_guid: [u8; 16],
    /// Byte offset on the medium.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The partition's name.
    pub name: String,
}

struct Header {
    entries_lba: u64,
    count: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses and checks the header sector read at `lba`.
fn header(sector: &[u8; LBA as usize], lba: u64, total_lbas: u64) -> Result<Header, String> {
    if &sector[..8] != b"EFI PART" {
        return Err("no \"EFI PART\" signature".into());
    }
    let size = u32_at(sector, 12);
    if !(92..=LBA as u32).contains(&size) {
        return Err(format!("header size {size} out of range"));
    }
    let mut copy = sector[..size as usize].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != u32_at(sector, 16) {
        return Err("header CRC32 mismatch".into());
    }
    if u64_at(sector, 24) != lba {
        return Err(format!(
            "header says it is at LBA {}, read at {lba}",
            u64_at(sector, 24)
        ));
    }
    let entries_lba = u64_at(sector, 72);
    let count = u32_at(sector, 80);
    let entry_size = u32_at(sector, 84);
    if entry_size < 128 || !entry_size.is_power_of_two() {
        return Err(format!("partition entry size {entry_size} is invalid"));
    }
    let bytes = u64::from(count) * u64::from(entry_size);
    if bytes > MAX_ENTRIES_BYTES {
        return Err(format!(
            "{count} partition entries of {entry_size} bytes are too many"
        ));
    }
    let end = entries_lba
        .checked_add(bytes.div_ceil(LBA))
        .filter(|&e| entries_lba >= 2 && e <= total_lbas);
    if end.is_none() {
        return Err(format!(
            "partition entries at LBA {entries_lba} lie outside the disk"
        ));
    }
    Ok(Header {
        entries_lba,
        count,
        entry_size,
        entries_crc: u32_at(sector, 88),
    })
}

/// Reads the partition table: the primary header, or the backup when the
/// primary is damaged. Unused entries (type all zero) are left out.
pub fn partitions(m: &dyn Medium) -> Result<Vec<Partition>, GptError> {
    let total = m.len() / LBA;
    let read_sector = |lba: u64| -> Result<[u8; LBA as usize], GptError> {
        let mut s = [0u8; LBA as usize];
        m.read_at(&mut s, lba * LBA).map_err(GptError::Io)?;
        Ok(s)
    };
    if total < 3 {
        return Err(GptError::NoHeader {
            primary: "the disk is too small".into(),
            backup: "the disk is too small".into(),
        });
    }
    let h = match header(&read_sector(1)?, 1, total) {
        Ok(h) => h,
        Err(primary) => header(&read_sector(total - 1)?, total - 1, total)
            .map_err(|backup| GptError::NoHeader { primary, backup })?,
    };
    let mut entries = vec![0u8; h.count as usize * h.entry_size as usize];
    m.read_at(&mut entries, h.entries_lba * LBA)
        .map_err(GptError::Io)?;
    if crc32fast::hash(&entries) != h.entries_crc {
        return Err(GptError::EntriesCrc);
    }
    let mut out = Vec::new();
    for (i, e) in entries.chunks_exact(h.entry_size as usize).enumerate() {
        let type_guid: [u8; 16] = e[..16].try_into().expect("16 bytes");
        if type_guid == [0; 16] {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        if last < first || last >= total {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(Partition {
            number: i as u32 + 1,
            type_guid,
            start: first * LBA,
            len: (last - first + 1) * LBA,
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk of `lbas` sectors with one partition of `ty` at 34..=last.
    pub(crate) fn disk_with(lbas: u64, ty: [u8; 16], first: u64, last: u64) -> Vec<u8> {
        let mut d = vec![0u8; (lbas * LBA) as usize];
        let mut entries = vec![0u8; 128 * 128];
        entries[..16].copy_from_slice(&ty);
        entries[32..40].copy_from_slice(&first.to_le_bytes());
        entries[40..48].copy_from_slice(&last.to_le_bytes());
        for (i, u) in "boot".encode_utf16().enumerate() {
            entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        let ecrc = crc32fast::hash(&entries);
        d[2 * LBA as usize..2 * LBA as usize + entries.len()].copy_from_slice(&entries);
        let mut h = [0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&(lbas - 1).to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&ecrc.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d[LBA as usize..LBA as usize + 92].copy_from_slice(&h);
        d
    }

    #[test]
    fn a_table_is_read_and_damage_is_refused() {
        let d = disk_with(200, types::ESP, 34, 99);
        let p = partitions(&d).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].number, 1);
        assert_eq!(p[0].type_guid, types::ESP);
        assert_eq!((p[0].start, p[0].len), (34 * LBA, 66 * LBA));
        assert_eq!(p[0].name, "boot");

        let mut bad = d.clone();
        bad[2 * LBA as usize + 40] ^= 1;
        assert!(matches!(partitions(&bad), Err(GptError::EntriesCrc)));
        let mut bad = d.clone();
        bad[LBA as usize + 3] ^= 1;
        let e = partitions(&bad).unwrap_err().to_string();
        assert!(e.contains("no valid GPT header"), "{e}");
        assert!(partitions(&vec![0u8; 512]).is_err());
    }

    #[test]
    fn hostile_headers_never_panic() {
        let d = disk_with(200, types::ESP, 34, 99);
        for at in 512..512 + 92 {
            for v in [0u8, 0xff, 0x80] {
                let mut b = d.clone();
                b[at] = v;
                let _ = partitions(&b);
            }
        }
    }
}
