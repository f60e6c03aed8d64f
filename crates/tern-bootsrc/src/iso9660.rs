//! A read-only ISO 9660 (ECMA-119) reader: the primary volume descriptor,
//! directory records, Rock Ridge `NM` names and Joliet names. Written here
//! because the maintained crate (`cdfs`) pulls in FUSE bindings that need
//! the host's libfuse to build; a boot source only needs lookups by path.
//! Every record is bounds-checked; a damaged image is an error.

use std::sync::Arc;

use crate::medium::Medium;

/// Logical block size of CD/DVD file systems.
const BLOCK: u64 = 2048;
/// The largest directory read (a directory is a few blocks).
const MAX_DIR: u64 = 4 << 20;
/// How many descriptors are looked at after block 16.
const MAX_DESCRIPTORS: u64 = 32;

/// Why the image cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// Reading the medium failed.
    #[error("reading failed")]
    Io(#[source] std::io::Error),
    /// No primary volume descriptor.
    #[error("no ISO 9660 primary volume descriptor")]
    NotIso,
    /// A directory record lies outside the image or is malformed.
    #[error("damaged directory record in {0}")]
    Damaged(String),
}

/// A file or directory: its extent and flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Name (Joliet or Rock Ridge when present, else the ISO name without
    /// its `;1` version).
    pub name: String,
    /// Byte offset of its data.
    pub start: u64,
    /// Its length.
    pub len: u64,
    /// A directory.
    pub dir: bool,
}

/// An opened image.
pub struct Iso {
    m: Arc<dyn Medium>,
    root: Node,
    joliet: bool,
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Iso {
    /// Reads the volume descriptors: Joliet's root when there is one, else
    /// the primary's.
    pub fn open(m: Arc<dyn Medium>) -> Result<Iso, IsoError> {
        let mut primary = None;
        let mut joliet = None;
        for i in 0..MAX_DESCRIPTORS {
            let mut d = [0u8; BLOCK as usize];
            if m.read_at(&mut d, (16 + i) * BLOCK).is_err() {
                break;
            }
            if &d[1..6] != b"CD001" {
                break;
            }
            match d[0] {
                1 => primary = Some(d),
                2 if d[88] == 0x25 && d[89] == 0x2f && matches!(d[90], 0x40 | 0x43 | 0x45) => {
                    joliet = Some(d)
                }
                255 => break,
                _ => {}
            }
        }
        let (d, is_joliet) = match (joliet, primary) {
            (Some(j), _) => (j, true),
            (None, Some(p)) => (p, false),
            (None, None) => return Err(IsoError::NotIso),
        };
        let root = record(&d[156..190], false, "/").ok_or_else(|| IsoError::Damaged("/".into()))?;
        let iso = Iso {
            m,
            root: Node {
                name: String::new(),
                ..root
            },
            joliet: is_joliet,
        };
        iso.check(&iso.root, "/")?;
        Ok(iso)
    }

    fn check(&self, n: &Node, path: &str) -> Result<(), IsoError> {
        match n.start.checked_add(n.len) {
            Some(end) if end <= self.m.len() => Ok(()),
            _ => Err(IsoError::Damaged(path.into())),
        }
    }

    /// The entries of directory `dir`.
    pub fn list(&self, dir: &Node, path: &str) -> Result<Vec<Node>, IsoError> {
        if !dir.dir || dir.len > MAX_DIR {
            return Err(IsoError::Damaged(path.into()));
        }
        self.check(dir, path)?;
        let mut data = vec![0u8; dir.len as usize];
        self.m.read_at(&mut data, dir.start).map_err(IsoError::Io)?;
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < data.len() {
            let len = data[at] as usize;
            if len == 0 {
                // Records do not cross blocks: go on at the next one.
                at = (at / BLOCK as usize + 1) * BLOCK as usize;
                continue;
            }
            let rec = data
                .get(at..at + len)
                .ok_or_else(|| IsoError::Damaged(path.into()))?;
            let n = record(rec, self.joliet, path).ok_or_else(|| IsoError::Damaged(path.into()))?;
            if !n.name.is_empty() {
                out.push(n);
            }
            at += len;
        }
        Ok(out)
    }

    /// The node at absolute `path` (names compare case-insensitively, as
    /// plain ISO names are upper case).
    pub fn lookup(&self, path: &str) -> Result<Option<Node>, IsoError> {
        let mut cur = self.root.clone();
        let mut seen = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !cur.dir {
                return Ok(None);
            }
            let list = self.list(&cur, if seen.is_empty() { "/" } else { &seen })?;
            seen.push('/');
            seen.push_str(part);
            match list.into_iter().find(|n| n.name.eq_ignore_ascii_case(part)) {
                Some(n) => cur = n,
                None => return Ok(None),
            }
        }
        self.check(&cur, path)?;
        Ok(Some(cur))
    }

    /// Reads `n`'s data.
    pub fn read(&self, n: &Node) -> Result<Vec<u8>, IsoError> {
        let mut data = vec![0u8; n.len as usize];
        self.m.read_at(&mut data, n.start).map_err(IsoError::Io)?;
        Ok(data)
    }

    /// The root directory.
    pub fn root(&self) -> &Node {
        &self.root
    }
}

/// Parses one directory record; `None` when it is malformed. `.` and
/// `..` get empty names.
fn record(r: &[u8], joliet: bool, _path: &str) -> Option<Node> {
    if r.len() < 34 {
        return None;
    }
    let start = u64::from(u32le(r, 2)).checked_mul(BLOCK)?;
    let len = u64::from(u32le(r, 10));
    let dir = r[25] & 2 != 0;
    let name_len = r[32] as usize;
    let raw = r.get(33..33 + name_len)?;
    let mut name = if name_len == 1 && (raw[0] == 0 || raw[0] == 1) {
        String::new()
    } else if joliet {
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(raw).into_owned()
    };
    if !joliet && !name.is_empty() {
        // Rock Ridge: an NM entry in the system use area wins.
        let mut su = 33 + name_len + (1 - name_len % 2);
        let mut rr = String::new();
        while su + 4 <= r.len() {
            let (sig, l) = (&r[su..su + 2], r[su + 2] as usize);
            if l < 4 || su + l > r.len() {
                break;
            }
            if sig == b"NM" && l >= 5 {
                rr.push_str(&String::from_utf8_lossy(&r[su + 5..su + l]));
            }
            su += l;
        }
        if !rr.is_empty() {
            name = rr;
        }
    }
    if let Some(i) = name.rfind(';') {
        name.truncate(i);
    }
    if !dir {
        name = name.trim_end_matches('.').to_string();
    }
    Some(Node {
        name,
        start,
        len,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_iso_and_records_are_checked() {
        let m: Arc<dyn Medium> = Arc::new(vec![0u8; 40 * 2048]);
        assert!(matches!(Iso::open(m), Err(IsoError::NotIso)));
        assert!(record(&[0u8; 10], false, "/").is_none());
        let mut r = [0u8; 40];
        r[0] = 40;
        r[32] = 20; // name longer than the record
        assert!(record(&r, false, "/").is_none());
    }
}
