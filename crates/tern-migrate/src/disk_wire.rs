//! The wire part of shared-nothing migration (disk mirroring): what the
//! source offers in `Hello` (tag 7), what the destination answers in
//! `Welcome` (tag 4), and the `DiskChunk` frame (kind 12) that carries
//! disk data on the data channels. A peer that leaves the fields empty
//! (protocol 3) mirrors nothing.

use crate::wire::{Codec, WireError};

/// Bytes of disk one window covers; a disk chunk never crosses one.
pub const DISK_WINDOW: u64 = 1 << 20;
/// Disk data is addressed in 512-byte sectors.
pub const DISK_SECTOR: u64 = 512;
/// Size of an encoded [`DiskChunkHeader`].
pub const DISK_CHUNK_HEADER: usize = 4 + 8 + 4 + 1 + 1;
/// Most disks one migration mirrors (as many as a VM can have).
pub const MAX_DISKS: usize = 64;

/// One disk the source mirrors: where it is in the VM, how the
/// destination must create it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiskOffer {
    /// Index in the VM's disk order.
    #[prost(uint32, tag = "1")]
    pub index: u32,
    /// The image's file name at the source (no directory): the
    /// destination creates the same name in its directory.
    #[prost(string, tag = "2")]
    pub name: String,
    /// "raw" or "vhdx".
    #[prost(string, tag = "3")]
    pub format: String,
    /// Bytes the guest sees.
    #[prost(uint64, tag = "4")]
    pub capacity: u64,
    /// VHDX payload block size (0 for raw).
    #[prost(uint32, tag = "5")]
    pub vhdx_block_size: u32,
    /// Logical sector size (512 or 4096).
    #[prost(uint32, tag = "6")]
    pub logical_sector: u32,
    /// Physical sector size (512 or 4096).
    #[prost(uint32, tag = "7")]
    pub physical_sector: u32,
    /// "dynamic" or "fixed" for VHDX (a differencing chain arrives
    /// flattened into a dynamic disk); empty for raw.
    #[prost(string, tag = "8")]
    pub vhdx_type: String,
    /// Bytes the first pass copies (allocated at the source), for the
    /// destination's log and the progress report.
    #[prost(uint64, tag = "9")]
    pub allocated: u64,
}

/// The destination's answer to the offered disks (`Welcome` tag 4).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiskAcceptance {
    /// The destination created every offered disk and takes their data.
    #[prost(bool, tag = "1")]
    pub accepted: bool,
    /// Where each disk will be (offer order), once the VM runs there.
    #[prost(string, repeated, tag = "2")]
    pub paths: Vec<String>,
    /// Why not.
    #[prost(string, tag = "3")]
    pub error: String,
}

/// The header of a disk chunk (frame kind 12): a range of one disk
/// inside one [`DISK_WINDOW`], its data encoded as `codec`, or zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskChunkHeader {
    /// Index of the disk in the offer.
    pub disk: u32,
    /// Byte offset in the disk (sector aligned).
    pub offset: u64,
    /// Bytes of disk covered (sector multiple, at most a window).
    pub len: u32,
    /// Encoding of the data that follows.
    pub codec: Codec,
    /// The range is all zeros: no data follows.
    pub zero: bool,
}

impl DiskChunkHeader {
    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.disk.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.push(self.codec as u8);
        out.push(u8::from(self.zero));
    }

    /// Decodes a header from the start of `b` and checks its shape (the
    /// disk's own capacity is checked by the receiver, which knows it).
    pub fn decode(b: &[u8]) -> Result<DiskChunkHeader, WireError> {
        if b.len() < DISK_CHUNK_HEADER {
            return Err(WireError::BadFrame(format!(
                "disk chunk of {} bytes",
                b.len()
            )));
        }
        let h = DiskChunkHeader {
            disk: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            offset: u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
            codec: Codec::from_u8(b[16])
                .ok_or_else(|| WireError::BadFrame(format!("disk chunk codec {}", b[16])))?,
            zero: match b[17] {
                0 => false,
                1 => true,
                f => return Err(WireError::BadFrame(format!("disk chunk flags {f:#x}"))),
            },
        };
        let len = u64::from(h.len);
        let last = h.offset.checked_add(len.saturating_sub(1));
        if len == 0
            || len > DISK_WINDOW
            || !h.offset.is_multiple_of(DISK_SECTOR)
            || !len.is_multiple_of(DISK_SECTOR)
            || last.is_none_or(|l| l / DISK_WINDOW != h.offset / DISK_WINDOW)
        {
            return Err(WireError::BadFrame(format!(
                "disk chunk of disk {} at {:#x}+{:#x} is not sector aligned inside one window",
                h.disk, h.offset, h.len
            )));
        }
        Ok(h)
    }
}

/// The channel (of `n`) that carries window `offset / DISK_WINDOW` of
/// disk `disk`: fixed, so a range resent in a later round travels the
/// same connection as its older copy and arrives after it.
pub fn disk_channel(disk: u32, offset: u64, n: u64) -> u64 {
    (offset / DISK_WINDOW + u64::from(disk)) % n.max(1)
}

/// Splits `range` into pieces that each lie inside one window.
pub fn split_windows(range: std::ops::Range<u64>) -> impl Iterator<Item = std::ops::Range<u64>> {
    let mut at = range.start;
    std::iter::from_fn(move || {
        if at >= range.end {
            return None;
        }
        let end = ((at / DISK_WINDOW + 1) * DISK_WINDOW).min(range.end);
        let r = at..end;
        at = end;
        Some(r)
    })
}

/// Whether a file name from the peer is a plain name (no directory, not
/// `.` or `..`, nothing odd): the destination creates it in its own
/// directory only.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_chunk_headers_round_trip_and_are_checked() {
        let h = DiskChunkHeader {
            disk: 1,
            offset: 3 * DISK_WINDOW + 4096,
            len: 8192,
            codec: Codec::Lz4,
            zero: false,
        };
        let mut b = Vec::new();
        h.encode(&mut b);
        assert_eq!(b.len(), DISK_CHUNK_HEADER);
        assert_eq!(DiskChunkHeader::decode(&b).unwrap(), h);
        let bad = |f: &dyn Fn(&mut DiskChunkHeader)| {
            let mut x = h.clone();
            f(&mut x);
            let mut b = Vec::new();
            x.encode(&mut b);
            DiskChunkHeader::decode(&b).unwrap_err().to_string()
        };
        assert!(bad(&|x| x.offset += 1).contains("sector aligned"));
        assert!(bad(&|x| x.len = 0).contains("sector aligned"));
        assert!(bad(&|x| x.len = DISK_WINDOW as u32).contains("one window"));
        assert!(bad(&|x| x.offset = u64::MAX - 511).contains("window"));
        let mut b = Vec::new();
        h.encode(&mut b);
        b[17] = 7;
        assert!(DiskChunkHeader::decode(&b).is_err());
        b[17] = 0;
        b[16] = 200;
        assert!(DiskChunkHeader::decode(&b).is_err());
        assert!(DiskChunkHeader::decode(&b[..10]).is_err());
    }

    #[test]
    fn ranges_split_at_windows() {
        let w = DISK_WINDOW;
        let v: Vec<_> = split_windows(w / 2..2 * w + 512).collect();
        assert_eq!(v, vec![w / 2..w, w..2 * w, 2 * w..2 * w + 512]);
        assert_eq!(split_windows(5..5).count(), 0);
        assert_eq!(disk_channel(0, 3 * w, 2), 1);
        assert_eq!(disk_channel(1, 3 * w + 7, 2), 0);
    }

    #[test]
    fn only_plain_names_are_taken() {
        assert!(plain_file_name("disk.vhdx"));
        for bad in ["", ".", "..", "a/b", "../x", "x\0", "a\nb"] {
            assert!(!plain_file_name(bad), "{bad:?}");
        }
    }
}
