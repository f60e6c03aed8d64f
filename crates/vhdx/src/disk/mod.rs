//! An open VHDX disk: reads, writes, trim, flush and close, with every
//! metadata change going through the log.

use crate::bat::{self, Geometry};
use crate::guid::Guid;
use crate::header::{self, Header, HEADER_OFFSETS, HEADER_SIZE, MIB};
use crate::log::{self, DESCRIPTORS_PER_SECTOR, SECTOR};
use crate::metadata::{Metadata, ParentLocator};
use crate::region::{self, RegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE};
use crate::storage::{Overlay, Patch, Storage};
use crate::Error;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What kind of VHDX a disk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskType {
    /// Every block allocated up front.
    Fixed,
    /// Blocks allocated on first write.
    Dynamic,
    /// Blocks not written here come from a parent disk.
    Differencing,
}

impl DiskType {
    /// Lower-case name (`fixed`, `dynamic`, `differencing`).
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// A run of the virtual disk that this file itself defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the virtual disk.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// True when the run reads as zeros by the BAT's say (not stored data).
    pub zero: bool,
}

/// Where the log's writer stands.
#[derive(Debug, Default)]
struct LogState {
    guid: Guid,
    seq: u64,
    head: u64,
    used: u64,
}

/// An open VHDX file.
pub struct Disk {
    pub(crate) file: Box<dyn Storage>,
    pub(crate) path: Option<PathBuf>,
    pub(crate) writable: bool,
    pub(crate) header: Header,
    header_slot: usize,
    pub(crate) regions: RegionTable,
    pub(crate) meta: Metadata,
    pub(crate) geom: Geometry,
    pub(crate) bat: Vec<u64>,
    pub(crate) dirty_bat: BTreeSet<u64>,
    bitmaps: HashMap<u64, Vec<u8>>,
    dirty_bitmap: BTreeSet<(u64, u64)>,
    pub(crate) parent: Option<Box<Disk>>,
    parent_path: Option<PathBuf>,
    log: LogState,
    session_file: bool,
    session_data: bool,
    pub(crate) alloc_end: u64,
    pub(crate) file_len: u64,
    pub(crate) problems: Vec<String>,
    replayed: usize,
    unsynced: bool,
    closed: bool,
}

/// How to find a differencing disk's parent when opening it.
pub enum ParentSource {
    /// Resolve the parent locator relative to this directory.
    Resolve(PathBuf),
    /// Use this already-open disk.
    Given(Box<Disk>),
    /// Open without a parent: reads that need one fail.
    None,
}

/// Summary of an open disk.
#[derive(Clone, Debug)]
pub struct Info {
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// Size the guest sees.
    pub virtual_size: u64,
    /// Payload block size.
    pub block_size: u32,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// The virtual disk id.
    pub disk_id: Guid,
    /// The current DataWriteGuid (what children link to).
    pub data_write_guid: Guid,
    /// The current FileWriteGuid.
    pub file_write_guid: Guid,
    /// Bytes in the file.
    pub file_size: u64,
    /// Payload blocks the disk has.
    pub total_blocks: u64,
    /// Payload blocks stored in this file.
    pub allocated_blocks: u64,
    /// Log entries replayed when opening.
    pub log_entries_replayed: usize,
    /// Log location and length.
    pub log: (u64, u32),
    /// The parent locator's entries (differencing disks).
    pub parent_locator: Option<ParentLocator>,
    /// The parent's path as resolved.
    pub parent_path: Option<PathBuf>,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

impl Disk {
    /// The disk's size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.meta.virtual_size
    }

    /// Logical sector size.
    pub fn logical_sector_size(&self) -> u32 {
        self.meta.logical_sector_size
    }

    /// Block size.
    pub fn block_size(&self) -> u32 {
        self.meta.block_size
    }

    /// Fixed, dynamic or differencing.
    pub fn disk_type(&self) -> DiskType {
        if self.meta.has_parent {
            DiskType::Differencing
        } else if self.meta.leave_blocks_allocated {
            DiskType::Fixed
        } else {
            DiskType::Dynamic
        }
    }

    /// The current header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The parsed metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The path this disk was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The parent's path, when the parent was resolved from the locator.
    pub fn parent_path(&self) -> Option<&Path> {
        self.parent_path.as_deref()
    }

    /// Problems noticed while opening (an invalid header or region table copy).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// A summary of the disk.
    pub fn info(&self) -> Info {
        let allocated_blocks = (0..self.geom.payload_blocks)
            .filter(|&b| {
                matches!(
                    bat::state(self.bat[self.geom.payload_index(b)]),
                    bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
                )
            })
            .count() as u64;
        Info {
            disk_type: self.disk_type(),
            virtual_size: self.meta.virtual_size,
            block_size: self.meta.block_size,
            logical_sector_size: self.meta.logical_sector_size,
            physical_sector_size: self.meta.physical_sector_size,
            disk_id: self.meta.disk_id,
            data_write_guid: self.header.data_write_guid,
            file_write_guid: self.header.file_write_guid,
            file_size: self.file_len,
            total_blocks: self.geom.payload_blocks,
            allocated_blocks,
            log_entries_replayed: self.replayed,
            log: (self.header.log_offset, self.header.log_length),
            parent_locator: self.meta.parent_locator.clone(),
            parent_path: self.parent_path.clone(),
        }
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), Error> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.meta.virtual_size => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                len: len as u64,
                size: self.meta.virtual_size,
            }),
        }
    }

    /// Reads `buf.len()` bytes at virtual `offset` (any byte range).
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.check_range(offset, buf.len())?;
        let bs = self.geom.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (block, in_block) = (pos / bs, pos % bs);
            let n = ((bs - in_block) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            let e = self.bat[self.geom.payload_index(block)];
            match bat::state(e) {
                bat::PAYLOAD_FULLY_PRESENT => self
                    .file
                    .read_at(chunk, bat::offset(e) + in_block)
                    .map_err(io("reading data"))?,
                bat::PAYLOAD_PARTIALLY_PRESENT => self.read_partial(block, e, in_block, chunk)?,
                bat::PAYLOAD_NOT_PRESENT | bat::PAYLOAD_UNDEFINED if self.meta.has_parent => {
                    self.read_parent(chunk, pos)?
                }
                _ => chunk.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    fn read_parent(&mut self, buf: &mut [u8], pos: u64) -> Result<(), Error> {
        let p = self.parent.as_mut().ok_or(Error::NoParent)?;
        let psize = p.virtual_size();
        let inside = psize.saturating_sub(pos).min(buf.len() as u64) as usize;
        if inside > 0 {
            p.read_at(&mut buf[..inside], pos)?;
        }
        buf[inside..].fill(0);
        Ok(())
    }

    /// Sector runs `[start, end)` (bytes within the block) with their bitmap bit.
    fn runs(
        &mut self,
        block: u64,
        in_block: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, bool)>, Error> {
        let ss = self.geom.sector_size;
        let chunk = block / self.geom.chunk_ratio;
        let base = (block % self.geom.chunk_ratio) * (self.geom.block_size / ss);
        let bm = self.bitmap(chunk)?;
        let end = in_block + len;
        let mut runs: Vec<(u64, u64, bool)> = Vec::new();
        let mut s = in_block / ss;
        while s * ss < end {
            let bit = base + s;
            let present = bm[(bit / 8) as usize] & (1 << (bit % 8)) != 0;
            let (lo, hi) = ((s * ss).max(in_block), ((s + 1) * ss).min(end));
            match runs.last_mut() {
                Some(r) if r.2 == present => r.1 = hi,
                _ => runs.push((lo, hi, present)),
            }
            s += 1;
        }
        Ok(runs)
    }

    fn read_partial(
        &mut self,
        block: u64,
        e: u64,
        in_block: u64,
        buf: &mut [u8],
    ) -> Result<(), Error> {
        let runs = self.runs(block, in_block, buf.len() as u64)?;
        for (lo, hi, present) in runs {
            let dst = &mut buf[(lo - in_block) as usize..(hi - in_block) as usize];
            if present {
                self.file
                    .read_at(dst, bat::offset(e) + lo)
                    .map_err(io("reading data"))?;
            } else {
                self.read_parent(dst, block * self.geom.block_size + lo)?;
            }
        }
        Ok(())
    }

    /// The sector bitmap of `chunk`, loaded on first use.
    fn bitmap(&mut self, chunk: u64) -> Result<&mut Vec<u8>, Error> {
        if !self.bitmaps.contains_key(&chunk) {
            let e = self.bat[self.geom.bitmap_index(chunk)];
            let mut b = vec![0u8; bat::BITMAP_BLOCK as usize];
            if bat::state(e) == bat::BITMAP_PRESENT {
                self.file
                    .read_at(&mut b, bat::offset(e))
                    .map_err(io("reading sector bitmap"))?;
            }
            self.bitmaps.insert(chunk, b);
        }
        Ok(self.bitmaps.get_mut(&chunk).expect("inserted above"))
    }

    /// Sets (or clears) the bitmap bits of sectors `[from, to)` of `block`,
    /// allocating the bitmap block if needed.
    fn set_bits(&mut self, block: u64, from: u64, to: u64, value: bool) -> Result<(), Error> {
        let chunk = block / self.geom.chunk_ratio;
        let bi = self.geom.bitmap_index(chunk);
        if bat::state(self.bat[bi]) != bat::BITMAP_PRESENT {
            self.bitmap(chunk)?;
            let off = self.allocate(bat::BITMAP_BLOCK)?;
            // Fresh space reads as zeros, so only pages with bits set need writing.
            self.set_entry(bi, bat::entry(bat::BITMAP_PRESENT, off));
        }
        let base = (block % self.geom.chunk_ratio) * (self.geom.block_size / self.geom.sector_size);
        let bm = self.bitmap(chunk)?;
        for bit in base + from..base + to {
            if value {
                bm[(bit / 8) as usize] |= 1 << (bit % 8);
            } else {
                bm[(bit / 8) as usize] &= !(1 << (bit % 8));
            }
        }
        let (p0, p1) = (
            (base + from) / 8 / SECTOR as u64,
            (base + to).div_ceil(8).div_ceil(SECTOR as u64),
        );
        for p in p0..p1.max(p0 + 1) {
            self.dirty_bitmap.insert((chunk, p));
        }
        Ok(())
    }

    pub(crate) fn set_entry(&mut self, index: usize, e: u64) {
        if self.bat[index] != e {
            self.bat[index] = e;
            self.dirty_bat.insert(index as u64 * 8 / SECTOR as u64);
        }
    }

    /// Reserves `bytes` (a multiple of 1 MiB) at the end of the file.
    pub(crate) fn allocate(&mut self, bytes: u64) -> Result<u64, Error> {
        let off = self.alloc_end;
        self.alloc_end += bytes;
        if self.alloc_end > self.file_len {
            self.file
                .set_len(self.alloc_end)
                .map_err(io("extending file"))?;
            self.file_len = self.alloc_end;
        }
        Ok(off)
    }

    /// Writes `buf` at virtual `offset` (any byte range).
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), Error> {
        self.check_range(offset, buf.len())?;
        self.begin_write(true)?;
        let bs = self.geom.block_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (block, in_block) = (pos / bs, pos % bs);
            let n = ((bs - in_block) as usize).min(buf.len() - done);
            self.write_in_block(block, in_block, &buf[done..done + n])?;
            done += n;
        }
        self.unsynced = true;
        Ok(())
    }

    fn write_in_block(&mut self, block: u64, in_block: u64, data: &[u8]) -> Result<(), Error> {
        let bs = self.geom.block_size;
        let idx = self.geom.payload_index(block);
        let e = self.bat[idx];
        let st = bat::state(e);
        let whole = in_block == 0 && data.len() as u64 == bs;
        let parent_backed = self.meta.has_parent
            && matches!(
                st,
                bat::PAYLOAD_NOT_PRESENT | bat::PAYLOAD_UNDEFINED | bat::PAYLOAD_PARTIALLY_PRESENT
            );
        if st == bat::PAYLOAD_FULLY_PRESENT || (st == bat::PAYLOAD_PARTIALLY_PRESENT && whole) {
            self.file
                .write_at(data, bat::offset(e) + in_block)
                .map_err(io("writing data"))?;
            if st != bat::PAYLOAD_FULLY_PRESENT {
                self.set_entry(idx, bat::entry(bat::PAYLOAD_FULLY_PRESENT, bat::offset(e)));
            }
            return Ok(());
        }
        if !parent_backed || whole {
            // A fresh block from the end of the file reads as zeros, which is
            // what an unallocated block of a non-differencing disk holds.
            let off = self.allocate(bs)?;
            self.file
                .write_at(data, off + in_block)
                .map_err(io("writing data"))?;
            self.set_entry(idx, bat::entry(bat::PAYLOAD_FULLY_PRESENT, off));
            return Ok(());
        }
        // A differencing block: keep sector granularity, filling partial
        // sectors from what the disk shows now.
        let ss = self.geom.sector_size;
        let lo = in_block / ss * ss;
        let hi = (in_block + data.len() as u64).div_ceil(ss) * ss;
        let mut owned;
        let aligned: &[u8] = if lo == in_block && hi == in_block + data.len() as u64 {
            data
        } else {
            owned = vec![0u8; (hi - lo) as usize];
            let vbase = block * bs;
            self.read_at(&mut owned[..ss as usize], vbase + lo)?;
            let tail = owned.len() - ss as usize;
            self.read_at(&mut owned[tail..], vbase + hi - ss)?;
            owned[(in_block - lo) as usize..(in_block - lo) as usize + data.len()]
                .copy_from_slice(data);
            &owned
        };
        let off = if st == bat::PAYLOAD_PARTIALLY_PRESENT {
            bat::offset(e)
        } else {
            let off = self.allocate(bs)?;
            // Stale bits (from a crash before this block's BAT entry landed) must not show.
            self.set_bits(block, 0, bs / ss, false)?;
            self.set_entry(idx, bat::entry(bat::PAYLOAD_PARTIALLY_PRESENT, off));
            off
        };
        self.file
            .write_at(aligned, off + lo)
            .map_err(io("writing data"))?;
        self.set_bits(block, lo / ss, hi / ss, true)?;
        Ok(())
    }

    /// Discards whole blocks inside `[offset, offset+len)`: they read as zeros
    /// afterwards (hiding the parent's data on a differencing disk). Partial
    /// blocks and fixed disks are left as they are, as discard allows.
    pub fn trim(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        self.check_range(offset, 0)?;
        let end = offset.saturating_add(len).min(self.meta.virtual_size);
        if self.meta.leave_blocks_allocated || end <= offset {
            return Ok(());
        }
        self.begin_write(true)?;
        let bs = self.geom.block_size;
        let first = offset.div_ceil(bs);
        // The last block may be cut short by the disk's end.
        let last = if end == self.meta.virtual_size {
            end.div_ceil(bs)
        } else {
            end / bs
        };
        let state = if self.meta.has_parent {
            bat::PAYLOAD_ZERO
        } else {
            bat::PAYLOAD_NOT_PRESENT
        };
        for b in first..last {
            self.set_entry(self.geom.payload_index(b), bat::entry(state, 0));
        }
        Ok(())
    }

    /// The runs this file defines (data stored here, or zero by the BAT),
    /// in order. Runs not listed are unallocated (parent or zeros).
    pub fn extents(&mut self) -> Result<Vec<Extent>, Error> {
        let bs = self.geom.block_size;
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |offset: u64, length: u64, zero: bool| match out.last_mut() {
            Some(l) if l.offset + l.length == offset && l.zero == zero => l.length += length,
            _ => out.push(Extent {
                offset,
                length,
                zero,
            }),
        };
        for b in 0..self.geom.payload_blocks {
            let base = b * bs;
            let len = bs.min(self.meta.virtual_size - base);
            let e = self.bat[self.geom.payload_index(b)];
            match bat::state(e) {
                bat::PAYLOAD_FULLY_PRESENT => push(base, len, false),
                bat::PAYLOAD_PARTIALLY_PRESENT => {
                    for (lo, hi, present) in self.runs(b, 0, len)? {
                        if present {
                            push(base + lo, hi - lo, false);
                        }
                    }
                }
                bat::PAYLOAD_ZERO | bat::PAYLOAD_UNMAPPED => push(base, len, true),
                _ => {}
            }
        }
        Ok(out)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // Best effort: callers who care about errors call close().
        let _ = self.close_inner();
    }
}

mod commit;
mod open;
pub(crate) use self::commit::write_zeros;
pub use self::open::parent_candidates;
