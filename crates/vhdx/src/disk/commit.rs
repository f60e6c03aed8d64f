//! Making metadata changes durable: the session's first write, headers,
//! log commits of BAT and metadata pages, flush and close.

use super::*;

impl Disk {
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

    pub(super) fn close_inner(&mut self) -> Result<(), Error> {
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
