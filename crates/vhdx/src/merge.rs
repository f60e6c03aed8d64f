//! Merging a differencing disk into its parent.

use crate::disk::{Disk, DiskType};
use crate::header::MIB;
use crate::Error;
use std::path::{Path, PathBuf};

/// What a merge did.
#[derive(Clone, Debug)]
pub struct MergeReport {
    /// The parent that now holds the child's data.
    pub parent: PathBuf,
    /// Bytes of data copied.
    pub bytes_copied: u64,
    /// Bytes the child zeroed (trimmed), applied to the parent.
    pub bytes_zeroed: u64,
}

/// Copies everything the differencing disk at `child` defines into its
/// parent, so the parent alone shows what the child showed. The child is
/// left as it is, but no longer matches its parent: delete it afterwards.
pub fn merge(child: &Path) -> Result<MergeReport, Error> {
    let mut c = Disk::open(child, false)?;
    if c.disk_type() != DiskType::Differencing {
        return Err(Error::NotDifferencing);
    }
    let ppath = c.parent_path().ok_or(Error::NoParent)?.to_path_buf();
    // Release the child's read-only handle on the parent before writing it.
    c.parent = None;
    let mut p = Disk::open(&ppath, true)?;
    if p.virtual_size() < c.virtual_size() {
        p.resize(c.virtual_size(), crate::Shrink::Refuse)?;
    }
    let (mut copied, mut zeroed) = (0, 0);
    let mut buf = vec![0u8; MIB as usize];
    for ext in c.extents()? {
        if ext.zero {
            p.write_zeros(ext.offset, ext.length)?;
            zeroed += ext.length;
            continue;
        }
        let mut pos = ext.offset;
        while pos < ext.offset + ext.length {
            let n = (ext.offset + ext.length - pos).min(MIB) as usize;
            c.read_at(&mut buf[..n], pos)?;
            p.write_at(&buf[..n], pos)?;
            pos += n as u64;
            copied += n as u64;
        }
    }
    p.flush()?;
    p.close()?;
    Ok(MergeReport {
        parent: ppath,
        bytes_copied: copied,
        bytes_zeroed: zeroed,
    })
}

impl Disk {
    /// Makes `[offset, offset+len)` read as zeros: whole blocks by trim where
    /// that guarantees zeros, the rest by writing zeros.
    pub fn write_zeros(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        let bs = self.block_size() as u64;
        let end = offset.saturating_add(len);
        let mut pos = offset;
        let z = vec![0u8; MIB as usize];
        while pos < end {
            let block_end = (pos / bs + 1) * bs;
            let n = end.min(block_end) - pos;
            if pos.is_multiple_of(bs)
                && (n == bs || end == self.virtual_size())
                && !self.meta.leave_blocks_allocated
            {
                self.trim(pos, n)?;
            } else {
                let mut p = pos;
                while p < pos + n {
                    let k = (pos + n - p).min(MIB) as usize;
                    self.write_at(&z[..k], p)?;
                    p += k as u64;
                }
            }
            pos += n;
        }
        Ok(())
    }
}
