//! Growing and shrinking a disk.

use crate::bat::{self, Geometry};
use crate::disk::Disk;
use crate::header::MIB;
use crate::log::SECTOR;
use crate::metadata::MAX_VIRTUAL_SIZE;
use crate::region::Region;
use crate::Error;

/// What shrinking may do with data beyond the new end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shrink {
    /// Refuse if any allocated block (or non-zero byte of a fixed disk)
    /// lies beyond the new end.
    Refuse,
    /// The caller says the blocks beyond the new end are free: drop them.
    Discard,
}

impl Disk {
    /// Changes the disk's size. Growing may relocate the BAT to the end of
    /// the file; the switch to the new size is one atomic log entry.
    pub fn resize(&mut self, new_size: u64, shrink: Shrink) -> Result<(), Error> {
        let ls = self.meta.logical_sector_size as u64;
        if new_size == 0 || new_size > MAX_VIRTUAL_SIZE || !new_size.is_multiple_of(ls) {
            return Err(Error::InvalidOption(format!(
                "size {new_size} is not a multiple of {ls} in (0, 64 TiB]"
            )));
        }
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        let old = self.meta.virtual_size;
        if new_size == old {
            return Ok(());
        }
        self.flush()?;
        self.begin_write(true)?;
        let g = Geometry::new(
            new_size,
            self.meta.block_size,
            ls as u32,
            self.meta.has_parent,
        );
        if new_size < old {
            self.shrink(new_size, g, shrink)
        } else {
            self.grow(new_size, g)
        }
    }

    fn shrink(&mut self, new_size: u64, g: Geometry, policy: Shrink) -> Result<(), Error> {
        let bs = self.geom.block_size;
        let old = self.meta.virtual_size;
        let fixed = self.meta.leave_blocks_allocated;
        if policy == Shrink::Refuse {
            // Whole blocks past the end, then the tail of the block cut in two.
            for b in new_size.div_ceil(bs)..self.geom.payload_blocks {
                let st = bat::state(self.bat[self.geom.payload_index(b)]);
                let allocated = matches!(
                    st,
                    bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
                );
                if allocated && (!fixed || !self.is_zero(b * bs, bs.min(old - b * bs))?) {
                    return Err(Error::ShrinkWouldDiscard {
                        new_size,
                        offset: b * bs,
                    });
                }
            }
            let cut_end = new_size.div_ceil(bs) * bs;
            if cut_end > new_size && !self.is_zero(new_size, cut_end.min(old) - new_size)? {
                return Err(Error::ShrinkWouldDiscard {
                    new_size,
                    offset: new_size,
                });
            }
        } else {
            // A later grow must read zeros there, not what was cut off.
            let cut_end = (new_size.div_ceil(bs) * bs).min(old);
            if cut_end > new_size {
                let z = vec![0u8; (cut_end - new_size) as usize];
                self.write_at(&z, new_size)?;
                self.flush()?;
            }
        }
        // Entries past the new end are dropped with the size change: they
        // are unreachable once the size is smaller.
        let mut pages = self.size_pages(new_size)?;
        let keep = g.entries as usize;
        let first_page = keep as u64 * 8 / SECTOR as u64;
        let last_page = (self.bat.len() as u64 * 8).div_ceil(SECTOR as u64);
        self.bat.truncate(keep);
        let mut rest = Vec::new();
        for p in first_page..last_page {
            let page = self.bat_page(p);
            if pages.len() < crate::log::DESCRIPTORS_PER_SECTOR {
                pages.push(page);
            } else {
                rest.push(page);
            }
        }
        self.log_commit(&pages, true)?;
        self.log_commit(&rest, false)?;
        self.meta.virtual_size = new_size;
        self.geom = g;
        self.dirty_bat.clear();
        self.flush()
    }

    fn grow(&mut self, new_size: u64, g: Geometry) -> Result<(), Error> {
        let old_entries = self.bat.len();
        self.bat.resize(g.entries as usize, 0);
        if self.meta.leave_blocks_allocated {
            for b in self.geom.payload_blocks..g.payload_blocks {
                let off = self.allocate(g.block_size)?;
                self.bat[g.payload_index(b)] = bat::entry(bat::PAYLOAD_FULLY_PRESENT, off);
            }
        }
        let needed = g.entries * 8;
        let mut pages = self.size_pages(new_size)?;
        if needed <= self.regions.bat.length as u64 {
            // In place: the new entries first (unreachable until the size
            // changes), then the size.
            let from = old_entries as u64 * 8 / SECTOR as u64;
            let to = needed.div_ceil(SECTOR as u64);
            let new_pages: Vec<_> = (from..to).map(|p| self.bat_page(p)).collect();
            self.log_commit(&new_pages, false)?;
            self.log_commit(&pages, true)?;
        } else {
            // Relocate: write the whole new BAT into fresh space, then switch
            // the region table and the size in one log entry.
            let len = g.region_bytes();
            let len32 = u32::try_from(len)
                .map_err(|_| Error::InvalidOption("BAT would exceed 4 GiB".into()))?;
            let off = self.allocate(len)?;
            let mut raw = vec![0u8; needed as usize];
            for (i, e) in self.bat.iter().enumerate() {
                raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
            }
            for (k, c) in raw.chunks(MIB as usize).enumerate() {
                self.file
                    .write_at(c, off + (k as u64) * MIB)
                    .map_err(|e| Error::io("writing relocated BAT", e))?;
            }
            let mut rt = self.regions.clone();
            rt.bat = Region {
                offset: off,
                length: len32,
            };
            pages.extend(self.region_pages(&rt));
            self.log_commit(&pages, true)?;
            self.regions = rt;
        }
        self.dirty_bat.clear();
        self.meta.virtual_size = new_size;
        self.geom = g;
        self.flush()
    }

    /// The metadata page(s) holding the virtual size, updated to `size`.
    fn size_pages(&mut self, size: u64) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        let at = self.regions.metadata.offset + self.meta.virtual_size_at as u64;
        let first = at / SECTOR as u64 * SECTOR as u64;
        let last = (at + 8).div_ceil(SECTOR as u64) * SECTOR as u64;
        let mut buf = vec![0u8; (last - first) as usize];
        self.file
            .read_at(&mut buf, first)
            .map_err(|e| Error::io("reading metadata", e))?;
        let o = (at - first) as usize;
        buf[o..o + 8].copy_from_slice(&size.to_le_bytes());
        Ok(buf
            .chunks(SECTOR)
            .enumerate()
            .map(|(k, c)| (first + (k * SECTOR) as u64, c.to_vec()))
            .collect())
    }

    fn is_zero(&mut self, offset: u64, len: u64) -> Result<bool, Error> {
        let mut buf = vec![0u8; MIB.min(len) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(buf.len() as u64) as usize;
            self.read_at(&mut buf[..n], pos)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            pos += n as u64;
        }
        Ok(true)
    }
}
