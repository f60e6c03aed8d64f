//! Building and applying page chunks.

use std::os::fd::BorrowedFd;

use crate::compress::{CompressError, Compressor, Decompressor};
use crate::delta::{self, DeltaCache};
use crate::hostmem::HostRange;
pub use crate::hostmem::{is_zero, HostMem};
use crate::transport::{read_exact_fd, read_exact_vectored};
use crate::wire::{ChunkHeader, Codec, Kind, WireError, CHUNK_HEADER, MAX_FRAME, PAGE};

/// Errors applying a chunk.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The chunk is malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The data does not decode (nothing of the chunk was written).
    #[error("chunk at {base:#x} ({codec}) refused")]
    Data {
        /// The chunk's window.
        base: u64,
        /// Its codec.
        codec: &'static str,
        /// Why.
        #[source]
        source: CompressError,
    },
    /// The window lies outside guest RAM.
    #[error("chunk at {0:#x} lies outside guest memory")]
    OutOfRange(u64),
}

/// What one chunk carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkStats {
    /// Pages carried (zero or not).
    pub pages: u64,
    /// Of those, zero pages (no data).
    pub zero: u64,
    /// Guest bytes with data.
    pub raw: u64,
    /// Frame bytes on the wire.
    pub wire: u64,
    /// Of the data pages, those sent as deltas.
    pub delta: u64,
}

/// Codec 3's data: `u32` LE CRC32C of the data pages, then the channel's
/// zstd stream up to a flush. Codec 4's data: `u8` inner codec (0-3),
/// `u32` LE length of the records, `u32` LE CRC32C of the data pages (as
/// applied), then the records in the inner codec (3: the channel's stream,
/// without a checksum of its own). Records, one per data page in
/// ascending order: [`REC_PAGE`] and the page, or [`REC_DELTA`], `u16` LE
/// length and the page's runs against the destination's copy. The
/// checksums catch what decodes but differs (zstd blocks carry none, and
/// a delta applied to another copy than the source's decodes fine).
const DELTA_HEAD: usize = 9;
/// Size of codec 3's checksum.
const STREAM_HEAD: usize = 4;
/// A record carrying the whole page.
pub const REC_PAGE: u8 = 0;
/// A record carrying a page's runs (see [`crate::delta`]).
pub const REC_DELTA: u8 = 1;
/// A delta larger than this is sent as the page.
const DELTA_LIMIT: usize = PAGE * 3 / 4;

/// Where the data of the chunk built last is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Data {
    /// Straight in guest memory (`ChunkBuilder::runs`): raw chunks are
    /// written to the socket from there, never copied in user space.
    #[default]
    Guest,
    /// Copied out (`ChunkBuilder::raw`): compression did not shrink it.
    Copied,
    /// Compressed (`ChunkBuilder::packed`).
    Packed,
}

/// Frame head: u32 length and u8 kind.
const FRAME_HEAD: usize = 5;

/// Runs of contiguous guest memory, built page by page.
#[derive(Default)]
struct Runs<'a>(Vec<HostRange<'a>>);

impl<'a> Runs<'a> {
    fn push(&mut self, r: HostRange<'a>) {
        if !self.0.last_mut().is_some_and(|last| last.join(&r)) {
            self.0.push(r);
        }
    }
}

/// Reusable buffers of one sending thread.
#[derive(Default)]
pub struct ChunkBuilder<'a> {
    /// Frame head and chunk header of the chunk built last.
    head: Vec<u8>,
    /// Its data pages in guest memory (raw chunks).
    runs: Runs<'a>,
    data: Data,
    raw: Vec<u8>,
    packed: Vec<u8>,
    iov: Vec<libc::iovec>,
    compressor: Option<Compressor>,
    /// Delta records of the chunk built last.
    recs: Vec<u8>,
    /// The records compressed.
    inner: Vec<u8>,
    /// Copies of the pages sent last (delta agreed).
    cache: Option<DeltaCache>,
}

/// What a channel's chunk builder keeps from one round to the next: its
/// compressor (with the zstd stream) and its delta cache, which follow
/// what the destination holds.
#[derive(Default)]
pub struct ChannelCodecs {
    compressor: Compressor,
    cache: Option<DeltaCache>,
}

impl ChannelCodecs {
    /// The codecs the handshake agreed: a zstd stream of
    /// `2^stream_window_log` bytes (0: none), delta encoding against a
    /// cache of `delta_cache` bytes (0: none).
    pub fn new(stream_window_log: u32, delta_cache: u64) -> std::io::Result<Self> {
        Ok(ChannelCodecs {
            compressor: Compressor::with_stream(stream_window_log)?,
            cache: (delta_cache > 0).then(|| DeltaCache::new(delta_cache)),
        })
    }
}

impl<'a> ChunkBuilder<'a> {
    /// A builder that carries on with a channel's `codecs`.
    pub fn resume(codecs: ChannelCodecs) -> Self {
        ChunkBuilder {
            compressor: Some(codecs.compressor),
            cache: codecs.cache,
            ..ChunkBuilder::default()
        }
    }

    /// The channel's codecs, for the next round's builder.
    pub fn suspend(self) -> ChannelCodecs {
        ChannelCodecs {
            compressor: self.compressor.unwrap_or_default(),
            cache: self.cache,
        }
    }

    /// Builds the chunk for the pages `bits` of the window at `base` (a
    /// whole `Chunk` frame, sent by [`ChunkBuilder::write_to`]).
    /// `skip_zero`: leave zero pages out entirely (first round: the
    /// destination starts zeroed). Returns `None` if nothing is left to
    /// send.
    pub fn build(
        &mut self,
        mem: &HostMem<'a>,
        base: u64,
        bits: [u64; 4],
        skip_zero: bool,
        codec: Codec,
    ) -> Option<ChunkStats> {
        let mut present = [0u64; 4];
        let mut zero = [0u64; 4];
        self.raw.clear();
        self.recs.clear();
        self.runs.0.clear();
        // Deltas after the first round (which sends every page once and
        // caches none, as QEMU's bulk stage): every page sent then is
        // cached as the copy taken here, the bytes the destination gets.
        let delta = !skip_zero && self.cache.is_some();
        // Raw chunks leave the data where it is; compression and deltas
        // need it in one piece.
        let copy = codec != Codec::None || delta;
        let mut stats = ChunkStats::default();
        for (w, &word) in bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let b = word.trailing_zeros() as usize;
                word &= word - 1;
                let gpa = base + ((w * 64 + b) * PAGE) as u64;
                let Some(p) = mem.range(gpa, PAGE as u64) else {
                    continue;
                };
                if p.is_zero_page() {
                    if skip_zero {
                        continue;
                    }
                    if let Some(c) = &mut self.cache {
                        c.remove(gpa);
                    }
                    zero[w] |= 1 << b;
                    stats.zero += 1;
                } else if copy {
                    let at = self.raw.len();
                    self.raw.resize(at + PAGE, 0);
                    p.copy_to(&mut self.raw[at..]);
                    stats.raw += PAGE as u64;
                    if let (true, Some(cache)) = (delta, &mut self.cache) {
                        let new = &self.raw[at..];
                        stats.delta += u64::from(delta_record(cache, gpa, new, &mut self.recs));
                        cache.put(gpa, new);
                    }
                } else {
                    self.runs.push(p);
                    stats.raw += PAGE as u64;
                }
                present[w] |= 1 << b;
                stats.pages += 1;
            }
        }
        if stats.pages == 0 {
            return None;
        }
        let c = self.compressor.get_or_insert_with(Compressor::new);
        let used = if stats.delta > 0 && self.recs.len() < self.raw.len() {
            // The records, in the chosen codec if that shrinks them.
            let inner = if c.compress(codec, &self.recs, &mut self.inner) {
                codec
            } else {
                Codec::None
            };
            let body = if inner == Codec::None {
                &self.recs
            } else {
                &self.inner
            };
            self.packed.clear();
            self.packed.push(inner as u8);
            self.packed
                .extend_from_slice(&(self.recs.len() as u32).to_le_bytes());
            self.packed
                .extend_from_slice(&crc32c::crc32c(&self.raw).to_le_bytes());
            self.packed.extend_from_slice(body);
            Codec::Delta
        } else if codec == Codec::StreamZstd
            && !self.raw.is_empty()
            && c.compress(codec, &self.raw, &mut self.inner)
        {
            self.packed.clear();
            self.packed
                .extend_from_slice(&crc32c::crc32c(&self.raw).to_le_bytes());
            self.packed.extend_from_slice(&self.inner);
            codec
        } else if copy && !self.raw.is_empty() && c.compress(codec, &self.raw, &mut self.packed) {
            codec
        } else {
            Codec::None
        };
        if used != Codec::Delta {
            stats.delta = 0;
        }
        (self.data, stats.wire) = match (used, copy) {
            (Codec::None, false) => (Data::Guest, stats.raw),
            (Codec::None, true) => (Data::Copied, stats.raw),
            _ => (Data::Packed, self.packed.len() as u64),
        };
        self.head.clear();
        let frame_len = 1 + CHUNK_HEADER as u64 + stats.wire;
        self.head
            .extend_from_slice(&(frame_len as u32).to_le_bytes());
        self.head.push(Kind::Chunk as u8);
        ChunkHeader {
            base,
            present,
            zero,
            codec: used,
            raw_len: stats.raw as u32,
        }
        .encode(&mut self.head);
        stats.wire += (FRAME_HEAD + CHUNK_HEADER) as u64;
        Some(stats)
    }

    /// Writes the chunk built last to `fd`: one writev of its header and
    /// data (raw pages straight from guest memory).
    pub fn write_to(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        self.iov.clear();
        self.iov.push(libc::iovec {
            iov_base: self.head.as_mut_ptr().cast(),
            iov_len: self.head.len(),
        });
        let buf = |v: &mut Vec<u8>| libc::iovec {
            iov_base: v.as_mut_ptr().cast(),
            iov_len: v.len(),
        };
        match self.data {
            Data::Guest => self.iov.extend(self.runs.0.iter().map(HostRange::iovec)),
            Data::Copied => self.iov.push(buf(&mut self.raw)),
            Data::Packed => self.iov.push(buf(&mut self.packed)),
        }
        // SAFETY: the header and buffers are ours; the guest runs were
        // checked to lie inside guest memory, whose mapping outlives the
        // migration (the guest may write them meanwhile: the dirty log
        // sends such pages again).
        unsafe { crate::transport::write_all_vectored(fd, &mut self.iov) }
    }

    /// The chunk built last as bytes (tests, and any plain writer).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.head);
        match self.data {
            Data::Guest => {
                for r in &self.runs.0 {
                    let at = out.len();
                    out.resize(at + r.len, 0);
                    r.copy_to(&mut out[at..]);
                }
            }
            Data::Copied => out.extend_from_slice(&self.raw),
            Data::Packed => out.extend_from_slice(&self.packed),
        }
    }
}

/// Appends the record of the page at `gpa` (its copy `new`) to `recs`:
/// its runs against the cached copy when there is one and they are
/// small, else the page. Returns whether it is a delta.
fn delta_record(cache: &DeltaCache, gpa: u64, new: &[u8], recs: &mut Vec<u8>) -> bool {
    let at = recs.len();
    if let Some(old) = cache.get(gpa) {
        recs.extend_from_slice(&[REC_DELTA, 0, 0]);
        if delta::encode(old, new, recs, DELTA_LIMIT) {
            let n = (recs.len() - at - 3) as u16;
            recs[at + 1..at + 3].copy_from_slice(&n.to_le_bytes());
            return true;
        }
        recs.truncate(at);
    }
    recs.push(REC_PAGE);
    recs.extend_from_slice(new);
    false
}

/// What came on a data channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFrame {
    /// A chunk, applied: its page count.
    Chunk(u64),
    /// `ChannelDone`.
    Done,
    /// `Sync`: everything before it is applied; echo it.
    Sync,
    /// A disk chunk of this many bytes after its kind, not read yet
    /// (see [`crate::disk_receive::DiskTargets::apply`]).
    Disk(usize),
}

/// Reusable buffers of one receiving thread. Pages are written through
/// the mapping of guest memory, raw ones read straight from the socket.
/// (Splicing into the memfd instead saves nothing here and serializes
/// the channels: every write to a shmem file takes its inode lock.)
#[derive(Default)]
pub struct ChunkApplier<'a> {
    /// Compressed data as it came.
    buf: Vec<u8>,
    /// Decompressed data whose pages are not contiguous in memory.
    raw: Vec<u8>,
    /// Data pages of the current chunk, in guest memory.
    runs: Runs<'a>,
    /// Zero pages of the current chunk.
    zeros: Vec<HostRange<'a>>,
    iov: Vec<libc::iovec>,
    decompressor: Option<Decompressor>,
    /// Decoded delta records.
    recs: Vec<u8>,
    /// Delta chunks are accepted (the handshake agreed them).
    delta: bool,
    /// Pages applied as deltas so far.
    delta_pages: u64,
}

impl<'a> ChunkApplier<'a> {
    /// An applier for one channel for the whole migration, with the
    /// codecs the handshake agreed: a zstd stream of `2^stream_window_log`
    /// bytes (0: none), delta records.
    pub fn with_codecs(stream_window_log: u32, delta: bool) -> std::io::Result<Self> {
        Ok(ChunkApplier {
            decompressor: Some(Decompressor::with_stream(stream_window_log)?),
            delta,
            ..ChunkApplier::default()
        })
    }

    /// Pages applied as deltas so far.
    pub fn delta_pages(&self) -> u64 {
        self.delta_pages
    }

    /// Reads the next frame of a data channel from `fd`; a chunk's pages
    /// go into `mem` (raw data straight from the socket). Everything the
    /// peer says is checked before memory is written: a malformed frame
    /// is an error, never a write outside guest memory.
    pub fn next(&mut self, mem: &HostMem<'a>, fd: BorrowedFd<'_>) -> Result<DataFrame, ChunkError> {
        let mut head = [0u8; FRAME_HEAD];
        read_exact_fd(fd, &mut head).map_err(WireError::Io)?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_FRAME {
            return Err(WireError::BadFrame(format!("length {len}")).into());
        }
        let len = len as usize - 1;
        match Kind::from_u8(head[4]) {
            Some(Kind::Chunk) => self.chunk(mem, fd, len).map(DataFrame::Chunk),
            Some(Kind::DiskChunk) => Ok(DataFrame::Disk(len)),
            Some(k @ (Kind::ChannelDone | Kind::Sync)) => {
                self.buf.resize(len, 0);
                read_exact_fd(fd, &mut self.buf).map_err(WireError::Io)?;
                Ok(if k == Kind::Sync {
                    DataFrame::Sync
                } else {
                    DataFrame::Done
                })
            }
            Some(got) => Err(WireError::Unexpected {
                expected: "chunk",
                got,
            }
            .into()),
            None => Err(WireError::BadFrame(format!("kind {}", head[4])).into()),
        }
    }

    /// Reads a chunk of `len` bytes (after the frame head) into `mem`;
    /// returns pages written.
    fn chunk(
        &mut self,
        mem: &HostMem<'a>,
        fd: BorrowedFd<'_>,
        len: usize,
    ) -> Result<u64, ChunkError> {
        if len < CHUNK_HEADER {
            return Err(WireError::BadFrame(format!("chunk of {len} bytes")).into());
        }
        let mut hb = [0u8; CHUNK_HEADER];
        read_exact_fd(fd, &mut hb).map_err(WireError::Io)?;
        let h = ChunkHeader::decode(&hb)?;
        let data_len = len - CHUNK_HEADER;
        // Where every page goes, checked before anything is read.
        self.runs.0.clear();
        self.zeros.clear();
        let mut pages = 0;
        for w in 0..4 {
            let mut word = h.present[w];
            while word != 0 {
                let b = word.trailing_zeros() as usize;
                word &= word - 1;
                let gpa = h.base + ((w * 64 + b) * PAGE) as u64;
                let p = mem
                    .range(gpa, PAGE as u64)
                    .ok_or(ChunkError::OutOfRange(gpa))?;
                if h.zero[w] & (1 << b) != 0 {
                    self.zeros.push(p);
                } else {
                    self.runs.push(p);
                }
                pages += 1;
            }
        }
        if h.codec == Codec::None {
            if data_len != h.raw_len as usize {
                return Err(WireError::BadFrame(format!(
                    "raw chunk of {data_len} bytes, header says {}",
                    h.raw_len
                ))
                .into());
            }
            self.iov.clear();
            self.iov.extend(self.runs.0.iter().map(HostRange::iovec));
            // SAFETY: every run lies inside guest memory (checked above);
            // until the switchover nothing but this thread touches the
            // window (each window travels on one channel, the VM does not
            // exist yet).
            unsafe { read_exact_vectored(fd, &mut self.iov) }.map_err(WireError::Io)?;
        } else {
            self.buf.resize(data_len, 0);
            read_exact_fd(fd, &mut self.buf).map_err(WireError::Io)?;
            // Decoded into scratch first: a chunk that does not decode
            // leaves guest memory as it was.
            self.raw.resize(h.raw_len as usize, 0);
            self.decode(&h).map_err(|source| ChunkError::Data {
                base: h.base,
                codec: h.codec.name(),
                source,
            })?;
            // `raw` holds raw_len = the runs' total bytes (checked by the
            // header's decode).
            let mut rest = &self.raw[..];
            for r in &self.runs.0 {
                let (this, next) = rest.split_at(r.len.min(rest.len()));
                r.copy_from(this);
                rest = next;
            }
        }
        for p in &self.zeros {
            p.zero();
        }
        Ok(pages)
    }
}

impl ChunkApplier<'_> {
    /// Decodes the data of chunk `h` (in `buf`) into `raw`, the chunk's
    /// data pages in order.
    fn decode(&mut self, h: &ChunkHeader) -> Result<(), CompressError> {
        let dec = self.decompressor.get_or_insert_with(Decompressor::new);
        let check = |pages: &[u8], want: u32| {
            let got = crc32c::crc32c(pages);
            if got == want {
                Ok(())
            } else {
                Err(CompressError::Checksum {
                    codec: h.codec.name(),
                    got,
                    want,
                })
            }
        };
        if h.codec == Codec::StreamZstd {
            let (crc, body) =
                self.buf
                    .split_at_checked(STREAM_HEAD)
                    .ok_or(CompressError::Size {
                        codec: "zstd-stream",
                        got: 0,
                        want: self.raw.len(),
                    })?;
            dec.decompress(h.codec, body, &mut self.raw)?;
            return check(
                &self.raw,
                u32::from_le_bytes(crc.try_into().expect("4 bytes")),
            );
        }
        if h.codec != Codec::Delta {
            return dec.decompress(h.codec, &self.buf, &mut self.raw);
        }
        if !self.delta {
            return Err(CompressError::NotAgreed { codec: "delta" });
        }
        let bad = |m: &str| CompressError::Records(m.into());
        let (head, body) = self
            .buf
            .split_at_checked(DELTA_HEAD)
            .ok_or_else(|| bad("no header"))?;
        let inner = Codec::from_u8(head[0])
            .filter(|c| *c != Codec::Delta)
            .ok_or_else(|| bad("unknown inner codec"))?;
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes"));
        // Each data page's record is at most a whole page and its tag.
        if len > self.raw.len() / PAGE * (PAGE + 1) {
            return Err(bad("longer than the pages"));
        }
        let recs: &[u8] = if inner == Codec::None {
            if body.len() != len {
                return Err(bad("length differs from the data"));
            }
            body
        } else {
            self.recs.resize(len, 0);
            dec.decompress(inner, body, &mut self.recs)?;
            &self.recs
        };
        // The pages as this side holds them: a delta applies to its copy.
        let mut at = 0;
        for r in &self.runs.0 {
            r.copy_to(&mut self.raw[at..at + r.len]);
            at += r.len;
        }
        let (mut rp, mut deltas) = (0, 0);
        for page in self.raw.chunks_exact_mut(PAGE) {
            match recs.get(rp) {
                Some(&REC_PAGE) => {
                    let data = recs
                        .get(rp + 1..rp + 1 + PAGE)
                        .ok_or_else(|| bad("page cut short"))?;
                    page.copy_from_slice(data);
                    rp += 1 + PAGE;
                }
                Some(&REC_DELTA) => {
                    let n = recs
                        .get(rp + 1..rp + 3)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                        .ok_or_else(|| bad("delta length cut short"))?;
                    let runs = recs
                        .get(rp + 3..rp + 3 + n)
                        .ok_or_else(|| bad("delta cut short"))?;
                    delta::apply(runs, page)?;
                    rp += 3 + n;
                    deltas += 1;
                }
                Some(t) => return Err(bad(&format!("record kind {t}"))),
                None => return Err(bad("fewer records than pages")),
            }
        }
        if rp != recs.len() {
            return Err(bad("more records than pages"));
        }
        check(&self.raw, crc)?;
        self.delta_pages += deltas;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{WINDOW_BYTES, WINDOW_PAGES};

    fn mem_of(buf: &mut [u8], gpa: u64) -> HostMem<'_> {
        HostMem::from_slice(gpa, buf)
    }

    /// All of `mem`'s first region, copied out.
    fn contents(mem: &HostMem) -> Vec<u8> {
        let (gpa, len) = mem.regions()[0];
        let mut v = vec![0u8; len as usize];
        assert!(mem.read(gpa, &mut v));
        v
    }

    /// Fills all of `mem`'s first region with `byte`.
    fn fill(mem: &HostMem, byte: u8) {
        let (gpa, len) = mem.regions()[0];
        mem.range(gpa, len)
            .unwrap()
            .copy_from(&vec![byte; len as usize]);
    }

    /// Feeds `frame` to an applier through a socket, as a channel does.
    fn apply<'a>(
        a: &mut ChunkApplier<'a>,
        mem: &HostMem<'a>,
        frame: &[u8],
    ) -> Result<DataFrame, ChunkError> {
        use std::io::Write;
        use std::os::fd::AsFd;
        let (mut w, r) = std::os::unix::net::UnixStream::pair().unwrap();
        let frame = frame.to_vec();
        let t = std::thread::spawn(move || {
            let _ = w.write_all(&frame);
        });
        let res = a.next(mem, r.as_fd());
        drop(r);
        t.join().unwrap();
        res
    }

    #[test]
    fn chunks_carry_pages_and_zero_pages_without_data() {
        let size = 2 * WINDOW_BYTES as usize;
        let mut src = vec![0u8; size];
        for (i, b) in src[PAGE..3 * PAGE].iter_mut().enumerate() {
            *b = (i % 7) as u8 + 1;
        }
        src[WINDOW_BYTES as usize + 5] = 9;
        let expect = src.clone();
        let smem = mem_of(&mut src, 0x10_0000);
        let mut dst = vec![0xeeu8; size];
        let dmem = mem_of(&mut dst, 0x10_0000);
        let mut b = ChunkBuilder::default();
        let mut a = ChunkApplier::default();
        let mut frame = Vec::new();
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
            for (base, bits) in smem.all_windows() {
                let s = b.build(&smem, base, bits, false, codec).unwrap();
                b.encode(&mut frame);
                assert_eq!(s.wire, frame.len() as u64);
                assert_eq!(s.pages, 256);
                assert_eq!(s.raw, (256 - s.zero) * PAGE as u64);
                if codec != Codec::None {
                    assert!(s.wire < s.raw, "{codec:?} {s:?}");
                }
                assert_eq!(apply(&mut a, &dmem, &frame).unwrap(), DataFrame::Chunk(256));
            }
            assert!(contents(&dmem) == expect, "{codec:?}");
            fill(&dmem, 0xee);
        }
        // Scattered pages (several runs), raw and compressed.
        for codec in [Codec::None, Codec::Zstd] {
            let bits = [0b1011_0110, 0, 1 << 63, 1];
            b.build(&smem, 0x10_0000, bits, false, codec).unwrap();
            b.encode(&mut frame);
            assert_eq!(apply(&mut a, &dmem, &frame).unwrap(), DataFrame::Chunk(7));
            for (i, page) in contents(&dmem).chunks(PAGE).enumerate().take(256) {
                let sent = bits[i / 64] & (1 << (i % 64)) != 0;
                assert_eq!(
                    sent,
                    page == &expect[i * PAGE..(i + 1) * PAGE],
                    "{codec:?} page {i}"
                );
            }
            fill(&dmem, 0xee);
        }
        // A frame written by a socket writer reads back the same.
        b.build(&smem, 0x10_0000, [u64::MAX; 4], false, Codec::None)
            .unwrap();
        let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        std::thread::scope(|sc| {
            let r = sc.spawn(|| {
                ChunkApplier::default()
                    .next(&dmem, std::os::fd::AsFd::as_fd(&y))
                    .unwrap()
            });
            b.write_to(std::os::fd::AsFd::as_fd(&x)).unwrap();
            assert_eq!(r.join().unwrap(), DataFrame::Chunk(256));
        });
        assert!(contents(&dmem)[..WINDOW_BYTES as usize] == expect[..WINDOW_BYTES as usize]);
        // The first round leaves zero pages out.
        let s = b
            .build(&smem, 0x10_0000, [u64::MAX; 4], true, Codec::None)
            .unwrap();
        assert_eq!((s.pages, s.zero, s.raw), (2, 0, 2 * PAGE as u64));
        let zeros = vec![0u8; size];
        let mut z = zeros.clone();
        let zmem = mem_of(&mut z, 0);
        assert!(b
            .build(&zmem, 0, [u64::MAX; 4], true, Codec::Zstd)
            .is_none());
    }

    #[test]
    fn chunks_outside_memory_are_refused() {
        let mut src = vec![1u8; WINDOW_BYTES as usize];
        let smem = mem_of(&mut src, 0);
        let mut frame = Vec::new();
        let mut b = ChunkBuilder::default();
        b.build(&smem, 0, [1, 0, 0, 0], false, Codec::None).unwrap();
        b.encode(&mut frame);
        let mut dst = vec![0u8; WINDOW_BYTES as usize];
        let dmem = mem_of(&mut dst, WINDOW_BYTES);
        let mut a = ChunkApplier::default();
        assert!(matches!(
            apply(&mut a, &dmem, &frame),
            Err(ChunkError::OutOfRange(0))
        ));
        // A window at the very top of the address space: no wrap-around.
        let mut top = frame.clone();
        top[5..13].copy_from_slice(&(0u64.wrapping_sub(WINDOW_BYTES)).to_le_bytes());
        top[13..77].fill(0);
        top[37..45].copy_from_slice(&(1u64 << 63).to_le_bytes());
        top[77] = 0;
        top[78..82].copy_from_slice(&(PAGE as u32).to_le_bytes());
        drop(a);
        dst.fill(0xaa);
        let mut a = ChunkApplier::default();
        let dmem0 = mem_of(&mut dst, 0);
        assert!(matches!(
            apply(&mut a, &dmem0, &top),
            Err(ChunkError::OutOfRange(_))
        ));
        drop(a);
        assert!(dst.iter().all(|&x| x == 0xaa), "nothing written");
    }

    #[test]
    fn chunks_go_into_memfd_backed_guest_memory() {
        use tern_vmm::memory::{Backing, GuestRam};
        let size = 4 * WINDOW_BYTES as usize;
        let mut src = vec![0u8; size];
        for (i, b) in src.iter_mut().enumerate() {
            if !(i / PAGE).is_multiple_of(5) {
                *b = (i % 253) as u8 ^ (i / PAGE) as u8 | 1;
            }
        }
        let expect = src.clone();
        let smem = mem_of(&mut src, 0);
        let ram = GuestRam::new(size as u64, Backing::Memfd).unwrap();
        let dmem = HostMem::of(&ram.mem);
        let mut a = ChunkApplier::default();
        let mut b = ChunkBuilder::default();
        let mut frame = Vec::new();
        let codecs = [Codec::None, Codec::Lz4, Codec::None, Codec::Zstd];
        for ((base, bits), codec) in smem.all_windows().into_iter().zip(codecs) {
            // Scattered pages in the first window, whole windows after.
            let bits = if base == 0 {
                [0xf0f0_0000_ffff_0001, 3, 0, 1 << 63]
            } else {
                bits
            };
            b.build(&smem, base, bits, false, codec).unwrap();
            b.encode(&mut frame);
            apply(&mut a, &dmem, &frame).unwrap();
        }
        let mut back = vec![0u8; size];
        dmem.read(0, &mut back);
        for (i, (x, y)) in back.chunks(PAGE).zip(expect.chunks(PAGE)).enumerate() {
            let sent = i >= WINDOW_PAGES
                || [0xf0f0_0000_ffff_0001u64, 3, 0, 1 << 63][i / 64] & (1 << (i % 64)) != 0;
            if sent {
                assert!(x == y, "page {i}");
            } else {
                assert!(x.iter().all(|&b| b == 0), "page {i}");
            }
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        let mut src = vec![3u8; WINDOW_BYTES as usize];
        let smem = mem_of(&mut src, 0);
        let mut b = ChunkBuilder::default();
        let mut frame = Vec::new();
        b.build(&smem, 0, [0b111, 0, 0, 0], false, Codec::None)
            .unwrap();
        b.encode(&mut frame);
        let mut dst = vec![0u8; WINDOW_BYTES as usize];
        let dmem = mem_of(&mut dst, 0);
        let mut a = ChunkApplier::default();
        // Cut short: the stream ends inside the data.
        assert!(apply(&mut a, &dmem, &frame[..frame.len() - 1]).is_err());
        // Frame length and raw length disagree.
        let mut f = frame.clone();
        let l = u32::from_le_bytes(f[..4].try_into().unwrap()) - PAGE as u32;
        f[..4].copy_from_slice(&l.to_le_bytes());
        assert!(apply(&mut a, &dmem, &f[..f.len() - PAGE]).is_err());
        // Too long, too short, unknown kind, unknown codec, another frame kind.
        for head in [
            [0xff, 0xff, 0xff, 0x7f, 4],
            [0, 0, 0, 0, 4],
            [10, 0, 0, 0, 4],
            [1, 0, 0, 0, 99],
            [1, 0, 0, 0, 6],
        ] {
            assert!(apply(&mut a, &dmem, &head).is_err(), "{head:?}");
        }
        let mut f = frame.clone();
        f[77] = 9;
        assert!(apply(&mut a, &dmem, &f).is_err());
        // Garbage compressed data.
        let mut f = frame.clone();
        f[77] = Codec::Lz4 as u8;
        assert!(apply(&mut a, &dmem, &f).is_err());
        assert_eq!(
            apply(&mut a, &dmem, &[1, 0, 0, 0, 5]).unwrap(),
            DataFrame::Done
        );
        assert_eq!(
            apply(&mut a, &dmem, &[1, 0, 0, 0, 11]).unwrap(),
            DataFrame::Sync
        );
        assert_eq!(apply(&mut a, &dmem, &frame).unwrap(), DataFrame::Chunk(3));
    }
}
