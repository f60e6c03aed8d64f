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
    /// Opens the VHDX at `path`, read-only or read-write, with its parent
    /// chain (read-only). A dirty log is replayed: in place when writable,
    /// in memory otherwise.
    pub fn open(path: impl AsRef<Path>, writable: bool) -> Result<Disk, Error> {
        let path = path.as_ref();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::Open {
                path: path.to_path_buf(),
                source: e,
            })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut d = Disk::open_storage(Box::new(file), writable, ParentSource::Resolve(dir))?;
        d.path = Some(path.to_path_buf());
        Ok(d)
    }

    /// Opens a VHDX held in `storage`.
    pub fn open_storage(
        storage: Box<dyn Storage>,
        writable: bool,
        parent: ParentSource,
    ) -> Result<Disk, Error> {
        Disk::open_inner(storage, writable, parent, false)
    }

    /// Opens tolerating BAT damage (noted in `problems`): for `check`.
    pub(crate) fn open_inner(
        mut file: Box<dyn Storage>,
        writable: bool,
        parent: ParentSource,
        lenient: bool,
    ) -> Result<Disk, Error> {
        let mut file_len = file.len().map_err(io("reading file length"))?;
        if file_len < 320 * 1024 {
            return Err(Error::TooShort(file_len));
        }
        let mut sig = [0u8; 8];
        file.read_at(&mut sig, 0)
            .map_err(io("reading identifier"))?;
        header::check_identifier(&sig)?;
        let mut h = [vec![0u8; HEADER_SIZE], vec![0u8; HEADER_SIZE]];
        for (b, off) in h.iter_mut().zip(HEADER_OFFSETS) {
            file.read_at(b, off).map_err(io("reading headers"))?;
        }
        let (mut hdr, slot, mut problems) = header::choose(&h[0], &h[1])?;

        // Replay the log before reading anything else it may have changed.
        let mut replayed = 0;
        let mut max_seq = 0;
        if !hdr.log_guid.is_zero() {
            let (lo, ll) = (hdr.log_offset, hdr.log_length as u64);
            if lo.checked_add(ll).is_none_or(|e| e > file_len) {
                return Err(Error::OutsideFile {
                    what: "log",
                    offset: lo,
                    len: ll,
                    file_len,
                });
            }
            let mut buf = vec![0u8; ll as usize];
            file.read_at(&mut buf, lo).map_err(io("reading log"))?;
            if let Some(r) = log::scan(&buf, hdr.log_guid, file_len)? {
                replayed = r.entries;
                max_seq = r.max_sequence;
                let new_len = file_len.max(r.last_file_offset);
                if writable {
                    for p in &r.patches {
                        match p {
                            Patch::Data(o, d) => file.write_at(d, *o),
                            Patch::Zero(o, l) => write_zeros(&mut *file, *o, *l),
                        }
                        .map_err(io("replaying log"))?;
                    }
                    if new_len > file_len {
                        file.set_len(new_len).map_err(io("replaying log"))?;
                    }
                    file.flush().map_err(io("replaying log"))?;
                } else {
                    file = Box::new(Overlay {
                        base: file,
                        patches: r.patches,
                        len: new_len,
                    });
                }
                file_len = new_len;
            }
        }

        let mut rt = [vec![0u8; REGION_TABLE_SIZE], vec![0u8; REGION_TABLE_SIZE]];
        for (b, off) in rt.iter_mut().zip(REGION_TABLE_OFFSETS) {
            file.read_at(b, off).map_err(io("reading region tables"))?;
        }
        let (regions, notes) = region::choose(&rt[0], &rt[1])?;
        problems.extend(notes);

        let mr = regions.metadata;
        if mr.offset + crate::metadata::TABLE_SIZE as u64 > file_len {
            return Err(Error::OutsideFile {
                what: "metadata region",
                offset: mr.offset,
                len: mr.length as u64,
                file_len,
            });
        }
        let mut table = vec![0u8; crate::metadata::TABLE_SIZE];
        file.read_at(&mut table, mr.offset)
            .map_err(io("reading metadata table"))?;
        let meta = Metadata::parse(&table, mr.length, &mut |off, len| {
            let mut b = vec![0u8; len as usize];
            file.read_at(&mut b, mr.offset + off as u64).map(|_| b)
        })?;
        let geom = Geometry::new(
            meta.virtual_size,
            meta.block_size,
            meta.logical_sector_size,
            meta.has_parent,
        );
        let br = regions.bat;
        if (br.length as u64) < geom.entries * 8 {
            return Err(bat::BatError::TooSmall {
                have: br.length as u64 / 8,
                need: geom.entries,
            }
            .into());
        }
        if br.offset + geom.entries * 8 > file_len {
            return Err(Error::OutsideFile {
                what: "BAT",
                offset: br.offset,
                len: geom.entries * 8,
                file_len,
            });
        }
        let mut raw = vec![0u8; (geom.entries * 8) as usize];
        file.read_at(&mut raw, br.offset)
            .map_err(io("reading BAT"))?;
        let mut bat: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        drop(raw);

        let mut dirty_bat = BTreeSet::new();
        let mut alloc_end = file_len.next_multiple_of(MIB);
        for r in regions.all() {
            alloc_end = alloc_end.max(r.offset + r.length as u64);
        }
        alloc_end = alloc_end.max(hdr.log_offset + hdr.log_length as u64);
        for (i, e) in bat.iter_mut().enumerate() {
            let is_bitmap = geom.is_bitmap_index(i as u64);
            let st = bat::state(*e);
            let present = if is_bitmap {
                match st {
                    bat::BITMAP_NOT_PRESENT => false,
                    bat::BITMAP_PRESENT => true,
                    _ => {
                        bad_entry(
                            lenient,
                            &mut problems,
                            e,
                            i,
                            &mut dirty_bat,
                            bat::BatError::BadState {
                                index: i as u64,
                                state: st,
                            },
                        )?;
                        continue;
                    }
                }
            } else {
                match st {
                    bat::PAYLOAD_FULLY_PRESENT => true,
                    bat::PAYLOAD_PARTIALLY_PRESENT if meta.has_parent => true,
                    bat::PAYLOAD_NOT_PRESENT
                    | bat::PAYLOAD_UNDEFINED
                    | bat::PAYLOAD_ZERO
                    | bat::PAYLOAD_UNMAPPED => false,
                    _ => {
                        bad_entry(
                            lenient,
                            &mut problems,
                            e,
                            i,
                            &mut dirty_bat,
                            bat::BatError::BadState {
                                index: i as u64,
                                state: st,
                            },
                        )?;
                        continue;
                    }
                }
            };
            if present {
                let off = bat::offset(*e);
                let len = if is_bitmap {
                    bat::BITMAP_BLOCK
                } else {
                    // Only the part of the last block inside the disk must exist.
                    let block = i as u64 - i as u64 / (geom.chunk_ratio + 1);
                    geom.block_size
                        .min(meta.virtual_size - block * geom.block_size)
                };
                if off < MIB || off.saturating_add(len) > file_len {
                    bad_entry(
                        lenient,
                        &mut problems,
                        e,
                        i,
                        &mut dirty_bat,
                        bat::BatError::BadOffset {
                            index: i as u64,
                            offset: off,
                        },
                    )?;
                    continue;
                }
                alloc_end = alloc_end.max(
                    off + if is_bitmap {
                        bat::BITMAP_BLOCK
                    } else {
                        geom.block_size
                    },
                );
            }
        }

        let mut parent_path = None;
        let parent = if meta.has_parent {
            match parent {
                ParentSource::Given(p) => Some(p),
                ParentSource::None => None,
                ParentSource::Resolve(dir) => {
                    let (p, path) = resolve_parent(meta.parent_locator.as_ref(), &dir)?;
                    parent_path = Some(path);
                    Some(Box::new(p))
                }
            }
        } else {
            None
        };
        if let Some(p) = &parent {
            if p.meta.logical_sector_size != meta.logical_sector_size {
                return Err(Error::InvalidOption(format!(
                    "parent's logical sector size {} differs from the child's {}",
                    p.meta.logical_sector_size, meta.logical_sector_size
                )));
            }
        }
        if hdr.log_guid.is_zero() {
            max_seq = 0;
        }
        let mut d = Disk {
            file,
            path: None,
            writable,
            header: hdr.clone(),
            header_slot: slot,
            regions,
            meta,
            geom,
            bat,
            dirty_bat,
            bitmaps: HashMap::new(),
            dirty_bitmap: BTreeSet::new(),
            parent,
            parent_path,
            log: LogState {
                seq: max_seq + 1,
                ..Default::default()
            },
            session_file: false,
            session_data: false,
            alloc_end,
            file_len,
            problems,
            replayed,
            unsynced: false,
            closed: false,
        };
        if writable && replayed > 0 {
            // The replayed log is applied and durable: retire it.
            hdr.log_guid = Guid::ZERO;
            hdr.file_write_guid = Guid::random();
            d.session_file = true;
            d.write_header(hdr)?;
        }
        Ok(d)
    }

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

    /// Starts a session's first change: new FileWriteGuid (and DataWriteGuid
    /// when `data`), and a fresh log GUID, all durable before any other write.
    pub(crate) fn begin_write(&mut self, data: bool) -> Result<(), Error> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        if self.session_file && (self.session_data || !data) && !self.log.guid.is_zero() {
            return Ok(());
        }
        let mut h = self.header.clone();
        if !self.session_file {
            h.file_write_guid = Guid::random();
        }
        if data && !self.session_data {
            h.data_write_guid = Guid::random();
        }
        if self.log.guid.is_zero() {
            // A new log GUID makes every old entry in the log invalid.
            self.log = LogState {
                guid: Guid::random(),
                seq: 1,
                head: 0,
                used: 0,
            };
            h.log_guid = self.log.guid;
        }
        self.write_header(h)?;
        self.session_file = true;
        self.session_data |= data;
        Ok(())
    }

    /// Writes `h` to both header slots, the non-current one first, each durable
    /// before the next: a torn write leaves the other copy valid.
    pub(crate) fn write_header(&mut self, mut h: Header) -> Result<(), Error> {
        for _ in 0..2 {
            h.sequence = self.header.sequence + 1;
            let slot = 1 - self.header_slot;
            self.file
                .write_at(&h.to_bytes(), HEADER_OFFSETS[slot])
                .map_err(io("writing header"))?;
            self.file.flush().map_err(io("flushing header"))?;
            self.header = h.clone();
            self.header_slot = slot;
        }
        Ok(())
    }

    /// Writes 4 KiB `pages` (file offset, bytes) through the log: each log
    /// entry is durable before its pages are written in place. Data written
    /// before this call is made durable first. Pages in one log entry (at most
    /// [`DESCRIPTORS_PER_SECTOR`], and all of them when `atomic`) land together.
    pub(crate) fn log_commit(
        &mut self,
        pages: &[(u64, Vec<u8>)],
        atomic: bool,
    ) -> Result<(), Error> {
        if pages.is_empty() {
            return Ok(());
        }
        assert!(!atomic || pages.len() <= DESCRIPTORS_PER_SECTOR);
        self.begin_write(false)?;
        // Data first, and the in-place pages of earlier entries: after this,
        // no earlier entry needs replaying, so the log is empty.
        self.file.flush().map_err(io("flushing before log write"))?;
        self.log.used = 0;
        let cap = self.header.log_length as u64;
        let lo = self.header.log_offset;
        let mut pending: Vec<usize> = Vec::new();
        let mut i = 0;
        while i < pages.len() {
            let n = DESCRIPTORS_PER_SECTOR.min(pages.len() - i);
            let need = (n as u64 + 1) * SECTOR as u64;
            if self.log.used + need > cap {
                // The log is full: land what it holds, then reuse it.
                self.file.flush().map_err(io("flushing log"))?;
                for &p in &pending {
                    self.file
                        .write_at(&pages[p].1, pages[p].0)
                        .map_err(io("applying log entry"))?;
                }
                pending.clear();
                self.file.flush().map_err(io("flushing metadata"))?;
                self.log.used = 0;
            }
            let tail = (self.log.head + cap - self.log.used) % cap;
            let refs: Vec<(u64, &[u8])> = pages[i..i + n]
                .iter()
                .map(|(o, d)| (*o, d.as_slice()))
                .collect();
            let entry = log::build_entry(
                self.log.guid,
                self.log.seq,
                tail,
                self.file_len,
                self.file_len,
                &refs,
            );
            for (k, s) in entry.chunks(SECTOR).enumerate() {
                let at = (self.log.head + k as u64 * SECTOR as u64) % cap;
                self.file.write_at(s, lo + at).map_err(io("writing log"))?;
            }
            self.log.head = (self.log.head + need) % cap;
            self.log.used += need;
            self.log.seq += 1;
            pending.extend(i..i + n);
            i += n;
        }
        self.file.flush().map_err(io("flushing log"))?;
        // In place now; these become durable at the next flush, and until
        // then the log still holds them.
        for &p in &pending {
            self.file
                .write_at(&pages[p].1, pages[p].0)
                .map_err(io("applying log entry"))?;
        }
        Ok(())
    }

    /// The BAT page `page` as it should be on disk.
    pub(crate) fn bat_page(&self, page: u64) -> (u64, Vec<u8>) {
        let per = SECTOR as u64 / 8;
        let mut b = vec![0u8; SECTOR];
        let from = (page * per) as usize;
        let to = ((page + 1) * per).min(self.bat.len() as u64) as usize;
        for (k, e) in self.bat[from.min(to)..to].iter().enumerate() {
            b[k * 8..k * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        (self.regions.bat.offset + page * SECTOR as u64, b)
    }

    /// Makes every write so far durable, metadata through the log.
    pub fn flush(&mut self) -> Result<(), Error> {
        if !self.writable {
            return Ok(());
        }
        if self.dirty_bat.is_empty() && self.dirty_bitmap.is_empty() {
            if self.unsynced {
                self.file.flush().map_err(io("flushing"))?;
                self.unsynced = false;
            }
            return Ok(());
        }
        let mut pages = Vec::with_capacity(self.dirty_bat.len() + self.dirty_bitmap.len());
        // Bitmaps before the BAT: a block's bits may land before its entry,
        // never the reverse.
        for &(chunk, page) in &self.dirty_bitmap {
            let e = self.bat[self.geom.bitmap_index(chunk)];
            let bm = &self.bitmaps[&chunk];
            let at = (page * SECTOR as u64) as usize;
            pages.push((bat::offset(e) + at as u64, bm[at..at + SECTOR].to_vec()));
        }
        for &p in &self.dirty_bat {
            pages.push(self.bat_page(p));
        }
        self.log_commit(&pages, false)?;
        self.dirty_bat.clear();
        self.dirty_bitmap.clear();
        self.unsynced = false;
        Ok(())
    }

    /// Flushes and marks the log empty; the file is then clean for any tool.
    pub fn close(mut self) -> Result<(), Error> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if !self.writable || !self.session_file {
            return Ok(());
        }
        self.flush()?;
        self.file.flush().map_err(io("flushing"))?;
        let mut h = self.header.clone();
        h.log_guid = Guid::ZERO;
        self.write_header(h)
    }

    /// Reads the disk's region table copies (for check/repair).
    pub(crate) fn region_pages(&self, rt: &RegionTable) -> Vec<(u64, Vec<u8>)> {
        let bytes = rt.to_bytes();
        let mut pages = Vec::new();
        for off in REGION_TABLE_OFFSETS {
            for (k, s) in bytes.chunks(SECTOR).enumerate() {
                pages.push((off + (k * SECTOR) as u64, s.to_vec()));
            }
        }
        pages
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // Best effort: callers who care about errors call close().
        let _ = self.close_inner();
    }
}

fn bad_entry(
    lenient: bool,
    problems: &mut Vec<String>,
    e: &mut u64,
    i: usize,
    dirty: &mut BTreeSet<u64>,
    err: bat::BatError,
) -> Result<(), Error> {
    if !lenient {
        return Err(err.into());
    }
    problems.push(format!("{err}; cleared"));
    *e = 0;
    dirty.insert(i as u64 * 8 / SECTOR as u64);
    Ok(())
}

pub(crate) fn write_zeros(f: &mut dyn Storage, mut off: u64, mut len: u64) -> std::io::Result<()> {
    let z = vec![0u8; MIB.min(len) as usize];
    while len > 0 {
        let n = len.min(z.len() as u64);
        f.write_at(&z[..n as usize], off)?;
        off += n;
        len -= n;
    }
    Ok(())
}

/// Candidate paths for a parent, from the locator, in the order to try.
pub fn parent_candidates(loc: &ParentLocator, dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let unix = |s: &str| s.replace('\\', "/");
    if let Some(r) = loc.get("relative_path") {
        let r = unix(r);
        let r = r.trim_start_matches("./");
        out.push(dir.join(r));
    }
    for key in ["absolute_win32_path", "volume_path"] {
        if let Some(a) = loc.get(key) {
            let a = unix(a);
            if a.starts_with('/') {
                out.push(PathBuf::from(&a));
            }
            // A Windows path: look for the same file name beside the child.
            if let Some(name) = a.rsplit('/').next().filter(|n| !n.is_empty()) {
                out.push(dir.join(name));
            }
        }
    }
    out.dedup();
    out
}

fn resolve_parent(loc: Option<&ParentLocator>, dir: &Path) -> Result<(Disk, PathBuf), Error> {
    let loc = loc.ok_or(Error::NoParent)?;
    let linkage: Vec<Guid> = ["parent_linkage", "parent_linkage2"]
        .iter()
        .filter_map(|k| loc.get(k).and_then(Guid::parse))
        .collect();
    if linkage.is_empty() {
        return Err(Error::InvalidOption(
            "parent locator has no valid parent_linkage".into(),
        ));
    }
    let mut tried = Vec::new();
    let mut mismatch = None;
    for path in parent_candidates(loc, dir) {
        if !path.is_file() {
            tried.push(path.display().to_string());
            continue;
        }
        let p = Disk::open(&path, false).map_err(|e| Error::Parent {
            path: path.clone(),
            source: Box::new(e),
        })?;
        if linkage.contains(&p.header.data_write_guid) {
            return Ok((p, path));
        }
        mismatch = Some(Error::ParentMismatch {
            path: path.clone(),
            found: p.header.data_write_guid,
            expected: linkage[0],
        });
    }
    Err(mismatch.unwrap_or(Error::ParentNotFound {
        tried: tried.join(", "),
    }))
}
