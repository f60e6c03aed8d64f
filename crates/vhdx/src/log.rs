//! The VHDX log: a circular buffer of entries, each a set of 4 KiB page
//! images (and zeroed ranges) to apply to the file. Metadata changes are
//! written here first, so a crash mid-update leaves a log to replay.

use crate::crc::{crc32c, crc32c_skipping};
use crate::guid::Guid;
use crate::header::{guid_at, u32_at, u64_at};
use crate::storage::Patch;
use std::collections::HashMap;

/// The log's unit: entries and data sectors are 4 KiB.
pub const SECTOR: usize = 4096;
/// Descriptors that fit in an entry's first sector, beside its header.
pub const DESCRIPTORS_PER_SECTOR: usize = (SECTOR - 64) / 32;
/// Nothing in the log may write below this: the identifier and headers.
const PROTECTED_END: u64 = 192 * 1024;
/// Replay may extend a file to at most this (256 TiB), a bound on garbage.
const MAX_FILE_END: u64 = 1 << 48;

/// Why a log could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file is shorter than the log says it was when the log was written.
    #[error("file is {len} bytes but the log says it was flushed at {flushed}: truncated")]
    Truncated {
        /// File length now.
        len: u64,
        /// FlushedFileOffset of the active entry.
        flushed: u64,
    },
    /// A descriptor writes outside the area the log may change.
    #[error("log entry {seq} writes {len} bytes at {offset}, outside the file's metadata area")]
    BadTarget {
        /// Entry sequence number.
        seq: u64,
        /// Target offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// The entry's LastFileOffset is absurd.
    #[error("log entry {seq} sets the file length to {last}, beyond any VHDX")]
    BadLastOffset {
        /// Entry sequence number.
        seq: u64,
        /// LastFileOffset.
        last: u64,
    },
}

/// A valid entry found in the log.
#[derive(Clone, Debug)]
struct Entry {
    pos: u64,
    len: u64,
    tail: u64,
    seq: u64,
    flushed: u64,
    last: u64,
    patches: Vec<Patch>,
}

/// What replaying the log does to the file.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    /// Writes to apply, in order.
    pub patches: Vec<Patch>,
    /// The file must be extended to at least this length.
    pub last_file_offset: u64,
    /// Entries in the active sequence.
    pub entries: usize,
    /// Highest sequence number seen in the log.
    pub max_sequence: u64,
}

/// Reads `len` bytes of the circular log starting at `pos`.
fn read_wrapped(log: &[u8], pos: u64, len: u64) -> Vec<u8> {
    let n = log.len() as u64;
    let mut out = Vec::with_capacity(len as usize);
    let mut p = pos % n;
    let mut left = len;
    while left > 0 {
        let take = left.min(n - p);
        out.extend_from_slice(&log[p as usize..(p + take) as usize]);
        left -= take;
        p = (p + take) % n;
    }
    out
}

fn parse_entry(log: &[u8], pos: u64, guid: Guid) -> Option<Entry> {
    let n = log.len() as u64;
    let h = &log[pos as usize..pos as usize + SECTOR];
    if &h[..4] != b"loge" {
        return None;
    }
    let len = u32_at(h, 8) as u64;
    let tail = u32_at(h, 12) as u64;
    let seq = u64_at(h, 16);
    let count = u32_at(h, 24) as u64;
    if len == 0
        || !len.is_multiple_of(SECTOR as u64)
        || len > n
        || !tail.is_multiple_of(SECTOR as u64)
        || tail >= n
    {
        return None;
    }
    if guid_at(h, 32) != guid {
        return None;
    }
    let desc_sectors = (64 + 32 * count).div_ceil(SECTOR as u64);
    if desc_sectors * SECTOR as u64 > len {
        return None;
    }
    let e = read_wrapped(log, pos, len);
    if u32_at(&e, 4) != crc32c_skipping(&e, 4) {
        return None;
    }
    let mut patches = Vec::new();
    let mut data_sector = desc_sectors as usize;
    for i in 0..count as usize {
        let d = &e[64 + i * 32..96 + i * 32];
        let off = u64_at(d, 16);
        if u64_at(d, 24) != seq || !off.is_multiple_of(SECTOR as u64) {
            return None;
        }
        match &d[..4] {
            b"zero" => {
                let zl = u64_at(d, 8);
                if !zl.is_multiple_of(SECTOR as u64) {
                    return None;
                }
                patches.push(Patch::Zero(off, zl));
            }
            b"desc" => {
                let s = e.get(data_sector * SECTOR..(data_sector + 1) * SECTOR)?;
                data_sector += 1;
                if &s[..4] != b"data"
                    || u32_at(s, 4) != (seq >> 32) as u32
                    || u32_at(s, 4092) != seq as u32
                {
                    return None;
                }
                let mut page = Vec::with_capacity(SECTOR);
                page.extend_from_slice(&d[8..16]);
                page.extend_from_slice(&s[8..4092]);
                page.extend_from_slice(&d[4..8]);
                patches.push(Patch::Data(off, page));
            }
            _ => return None,
        }
    }
    if data_sector as u64 * SECTOR as u64 != len {
        return None;
    }
    Some(Entry {
        pos,
        len,
        tail,
        seq,
        flushed: u64_at(h, 48),
        last: u64_at(h, 56),
        patches,
    })
}

/// Finds the active sequence in `log` (the whole log region) for `guid` and
/// returns what replaying it does, or `None` when there is nothing to replay.
/// `file_len` is the file's current length.
pub fn scan(log: &[u8], guid: Guid, file_len: u64) -> Result<Option<Replay>, LogError> {
    if guid.is_zero() || log.len() < SECTOR {
        return Ok(None);
    }
    let mut found: HashMap<u64, Entry> = HashMap::new();
    for pos in (0..log.len() as u64 / SECTOR as u64).map(|i| i * SECTOR as u64) {
        if let Some(e) = parse_entry(log, pos, guid) {
            found.insert(pos, e);
        }
    }
    let max_sequence = found.values().map(|e| e.seq).max().unwrap_or(0);
    let mut heads: Vec<&Entry> = found.values().collect();
    heads.sort_by_key(|e| std::cmp::Reverse(e.seq));
    let n = log.len() as u64;
    for head in heads {
        // Walk from the head's tail to the head: each next entry must follow
        // the previous one directly, with the next sequence number.
        let mut chain = Vec::new();
        let mut cur = match found.get(&head.tail) {
            Some(e) if e.seq <= head.seq => e,
            _ => continue,
        };
        let ok = loop {
            chain.push(cur);
            if cur.pos == head.pos {
                break cur.seq == head.seq;
            }
            if chain.len() > found.len() {
                break false;
            }
            match found.get(&((cur.pos + cur.len) % n)) {
                Some(next) if next.seq == cur.seq + 1 => cur = next,
                _ => break false,
            }
        };
        if !ok {
            continue;
        }
        if head.last > MAX_FILE_END {
            return Err(LogError::BadLastOffset {
                seq: head.seq,
                last: head.last,
            });
        }
        if file_len < head.flushed {
            return Err(LogError::Truncated {
                len: file_len,
                flushed: head.flushed,
            });
        }
        let end_limit = file_len.max(head.last);
        let mut patches = Vec::new();
        for e in &chain {
            for p in &e.patches {
                let (off, len) = match p {
                    Patch::Data(o, d) => (*o, d.len() as u64),
                    Patch::Zero(o, l) => (*o, *l),
                };
                if off < PROTECTED_END || off.checked_add(len).is_none_or(|end| end > end_limit) {
                    return Err(LogError::BadTarget {
                        seq: e.seq,
                        offset: off,
                        len,
                    });
                }
                patches.push(p.clone());
            }
        }
        return Ok(Some(Replay {
            patches,
            last_file_offset: head.last,
            entries: chain.len(),
            max_sequence,
        }));
    }
    Ok(None)
}

/// Builds one log entry holding `pages` (4 KiB-aligned offsets, 4 KiB each).
pub fn build_entry(
    guid: Guid,
    seq: u64,
    tail: u64,
    flushed: u64,
    last: u64,
    pages: &[(u64, &[u8])],
) -> Vec<u8> {
    assert!(pages.len() <= DESCRIPTORS_PER_SECTOR);
    let mut e = vec![0u8; SECTOR * (1 + pages.len())];
    e[..4].copy_from_slice(b"loge");
    let total = e.len() as u32;
    e[8..12].copy_from_slice(&total.to_le_bytes());
    e[12..16].copy_from_slice(&(tail as u32).to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&(pages.len() as u32).to_le_bytes());
    e[32..48].copy_from_slice(&guid.0);
    e[48..56].copy_from_slice(&flushed.to_le_bytes());
    e[56..64].copy_from_slice(&last.to_le_bytes());
    for (i, (off, page)) in pages.iter().enumerate() {
        debug_assert_eq!(page.len(), SECTOR);
        let d = &mut e[64 + i * 32..96 + i * 32];
        d[..4].copy_from_slice(b"desc");
        d[4..8].copy_from_slice(&page[4092..4096]);
        d[8..16].copy_from_slice(&page[..8]);
        d[16..24].copy_from_slice(&off.to_le_bytes());
        d[24..32].copy_from_slice(&seq.to_le_bytes());
        let s = &mut e[SECTOR * (1 + i)..SECTOR * (2 + i)];
        s[..4].copy_from_slice(b"data");
        s[4..8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
        s[8..4092].copy_from_slice(&page[8..4092]);
        s[4092..4096].copy_from_slice(&(seq as u32).to_le_bytes());
    }
    let c = crc32c(&e);
    e[4..8].copy_from_slice(&c.to_le_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_and_wraps() {
        let guid = Guid::random();
        let page: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let e = build_entry(guid, 5, 3 * 4096, 1 << 22, 1 << 22, &[(1 << 21, &page)]);
        // Place the entry so it wraps around the end of a 4-sector log.
        let mut log = vec![0u8; 4 * 4096];
        for (i, s) in e.chunks(4096).enumerate() {
            let p = (3 + i) % 4;
            log[p * 4096..(p + 1) * 4096].copy_from_slice(s);
        }
        let r = scan(&log, guid, 1 << 22).unwrap().unwrap();
        assert_eq!(r.entries, 1);
        match &r.patches[0] {
            Patch::Data(o, d) => {
                assert_eq!(*o, 1 << 21);
                assert_eq!(d, &page);
            }
            p => panic!("unexpected {p:?}"),
        }
        // Another GUID sees nothing; a flipped byte invalidates the entry.
        assert!(scan(&log, Guid::random(), 1 << 22).unwrap().is_none());
        log[100] ^= 1;
        assert!(scan(&log, guid, 1 << 22).unwrap().is_none());
    }
}
