//! The file type identifier and the two headers at the start of every VHDX.

use crate::crc::{crc32c, crc32c_skipping};
use crate::guid::Guid;

/// Offset of the file type identifier.
pub const IDENTIFIER_OFFSET: u64 = 0;
/// Offsets of the two header copies.
pub const HEADER_OFFSETS: [u64; 2] = [64 * 1024, 128 * 1024];
/// Bytes a header occupies (its checksum covers all of them).
pub const HEADER_SIZE: usize = 4096;
/// One mebibyte: VHDX's alignment for regions, the log and blocks.
pub const MIB: u64 = 1 << 20;

const IDENTIFIER_SIG: &[u8; 8] = b"vhdxfile";
const HEADER_SIG: &[u8; 4] = b"head";

/// Why a header or the file identifier was rejected.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The first 8 bytes are not `vhdxfile`.
    #[error("not a VHDX file (no 'vhdxfile' signature)")]
    NotVhdx,
    /// Neither header copy is valid.
    #[error("neither header is valid (first: {first}; second: {second})")]
    NoValidHeader {
        /// Why the first copy was rejected.
        first: String,
        /// Why the second copy was rejected.
        second: String,
    },
}

/// The file type identifier's content (a creator string).
pub fn identifier(creator: &str) -> Vec<u8> {
    let mut b = vec![0u8; 64 * 1024];
    b[..8].copy_from_slice(IDENTIFIER_SIG);
    for (i, u) in creator.encode_utf16().take(255).enumerate() {
        b[8 + i * 2..10 + i * 2].copy_from_slice(&u.to_le_bytes());
    }
    b
}

/// Checks the file type identifier's signature.
pub fn check_identifier(first8: &[u8]) -> Result<(), HeaderError> {
    if first8.get(..8) == Some(&IDENTIFIER_SIG[..]) {
        Ok(())
    } else {
        Err(HeaderError::NotVhdx)
    }
}

/// One VHDX header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Higher is newer; the newer valid copy is current.
    pub sequence: u64,
    /// Changed before the first write to the file in each session.
    pub file_write_guid: Guid,
    /// Changed before the first change to the disk's contents in each session.
    pub data_write_guid: Guid,
    /// Names the active log; zero when the log is empty.
    pub log_guid: Guid,
    /// Log version (0).
    pub log_version: u16,
    /// Format version (1).
    pub version: u16,
    /// Bytes in the log.
    pub log_length: u32,
    /// Where the log starts.
    pub log_offset: u64,
}

impl Header {
    /// Parses and validates a 4 KiB header.
    pub fn parse(b: &[u8]) -> Result<Header, String> {
        if b.len() < HEADER_SIZE {
            return Err("short header".into());
        }
        let b = &b[..HEADER_SIZE];
        if &b[..4] != HEADER_SIG {
            return Err("bad signature".into());
        }
        let stored = u32::from_le_bytes(b[4..8].try_into().unwrap());
        let computed = crc32c_skipping(b, 4);
        if stored != computed {
            return Err(format!(
                "checksum {stored:#010x}, expected {computed:#010x}"
            ));
        }
        let h = Header {
            sequence: u64_at(b, 8),
            file_write_guid: guid_at(b, 16),
            data_write_guid: guid_at(b, 32),
            log_guid: guid_at(b, 48),
            log_version: u16::from_le_bytes([b[64], b[65]]),
            version: u16::from_le_bytes([b[66], b[67]]),
            log_length: u32::from_le_bytes(b[68..72].try_into().unwrap()),
            log_offset: u64_at(b, 72),
        };
        if h.version != 1 {
            return Err(format!("version {} (only 1 is defined)", h.version));
        }
        if h.log_version != 0 {
            return Err(format!("log version {} (only 0 is defined)", h.log_version));
        }
        if h.log_length == 0 || !(h.log_length as u64).is_multiple_of(MIB) {
            return Err(format!(
                "log length {} is not a non-zero multiple of 1 MiB",
                h.log_length
            ));
        }
        if !h.log_offset.is_multiple_of(MIB) || h.log_offset < MIB {
            return Err(format!(
                "log offset {} is not 1 MiB-aligned past the headers",
                h.log_offset
            ));
        }
        Ok(h)
    }

    /// The 4 KiB on-disk form, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[..4].copy_from_slice(HEADER_SIG);
        b[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        b[16..32].copy_from_slice(&self.file_write_guid.0);
        b[32..48].copy_from_slice(&self.data_write_guid.0);
        b[48..64].copy_from_slice(&self.log_guid.0);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        let c = crc32c(&b);
        b[4..8].copy_from_slice(&c.to_le_bytes());
        b
    }
}

/// Picks the current header from the two copies: the valid one with the
/// higher sequence number. Returns it and its slot (0 or 1).
pub fn choose(first: &[u8], second: &[u8]) -> Result<(Header, usize, Vec<String>), HeaderError> {
    let a = Header::parse(first);
    let b = Header::parse(second);
    let mut notes = Vec::new();
    match (a, b) {
        (Ok(a), Ok(b)) => {
            if b.sequence > a.sequence {
                Ok((b, 1, notes))
            } else {
                Ok((a, 0, notes))
            }
        }
        (Ok(a), Err(e)) => {
            notes.push(format!("second header invalid: {e}"));
            Ok((a, 0, notes))
        }
        (Err(e), Ok(b)) => {
            notes.push(format!("first header invalid: {e}"));
            Ok((b, 1, notes))
        }
        (Err(first), Err(second)) => Err(HeaderError::NoValidHeader { first, second }),
    }
}

pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

pub(crate) fn guid_at(b: &[u8], o: usize) -> Guid {
    Guid(b[o..o + 16].try_into().unwrap())
}
