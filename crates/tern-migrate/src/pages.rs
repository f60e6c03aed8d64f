//! Guest memory as raw host ranges, zero-page detection, and building and
//! applying page chunks.

use crate::compress::{CompressError, Compressor, Decompressor};
use crate::wire::{ChunkHeader, Codec, WireError, CHUNK_HEADER, PAGE, WINDOW_BYTES, WINDOW_PAGES};

/// One RAM region: guest-physical start, length, host address.
#[derive(Clone, Copy, Debug)]
struct Range {
    gpa: u64,
    len: u64,
    host: *mut u8,
}

/// Guest memory seen as raw host ranges. The guest may write it while the
/// sender reads (precopy): pages are only ever copied out with raw copies,
/// never borrowed as Rust slices, and the dirty log resends any page that
/// changed.
#[derive(Clone, Debug)]
pub struct HostMem {
    ranges: Vec<Range>,
}

// SAFETY: the pointers are plain addresses of mappings that outlive every
// use (the owner keeps the mapping alive for the whole migration); access
// is by raw copies, which tolerate concurrent guest writes.
unsafe impl Send for HostMem {}
// SAFETY: as above; no interior state.
unsafe impl Sync for HostMem {}

/// Errors applying a chunk.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The chunk is malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The data does not decode.
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// The window lies outside guest RAM.
    #[error("chunk at {0:#x} lies outside guest memory")]
    OutOfRange(u64),
}

impl HostMem {
    /// The RAM of `mem`.
    pub fn of(mem: &tern_vmm::memory::GuestMem) -> HostMem {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        HostMem {
            ranges: mem
                .iter()
                .map(|r| Range {
                    gpa: r.start_addr().0,
                    len: r.len(),
                    host: r.as_ptr(),
                })
                .collect(),
        }
    }

    /// Total bytes.
    pub fn size(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// (guest-physical start, length) of each region.
    pub fn regions(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|r| (r.gpa, r.len)).collect()
    }

    /// Host address of `len` bytes at `gpa`, if they lie inside one region.
    fn host(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        self.ranges
            .iter()
            .find(|r| gpa >= r.gpa && gpa + len <= r.gpa + r.len)
            // SAFETY: the offset is within the region's mapping (checked).
            .map(|r| unsafe { r.host.add((gpa - r.gpa) as usize) })
    }

    /// Copies `out.len()` bytes at `gpa` out of guest memory.
    fn read(&self, gpa: u64, out: &mut [u8]) -> bool {
        match self.host(gpa, out.len() as u64) {
            Some(p) => {
                // SAFETY: `p` is valid for `out.len()` bytes (inside a live
                // mapping); `out` is a separate buffer.
                unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
                true
            }
            None => false,
        }
    }

    /// Copies `data` into guest memory at `gpa`.
    fn write(&self, gpa: u64, data: &[u8]) -> bool {
        match self.host(gpa, data.len() as u64) {
            Some(p) => {
                // SAFETY: `p` is valid for `data.len()` bytes of a live,
                // writable mapping; `data` is a separate buffer.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
                true
            }
            None => false,
        }
    }

    /// Zeroes one page at `gpa`.
    fn zero(&self, gpa: u64) -> bool {
        match self.host(gpa, PAGE as u64) {
            Some(p) => {
                // SAFETY: `p` is valid for one page of a live, writable mapping.
                unsafe { std::ptr::write_bytes(p, 0, PAGE) };
                true
            }
            None => false,
        }
    }

    /// Every window of guest memory with all its pages (the first round).
    pub fn all_windows(&self) -> Vec<(u64, [u64; 4])> {
        let mut out = Vec::new();
        for r in &self.ranges {
            let mut gpa = r.gpa;
            while gpa < r.gpa + r.len {
                let pages = ((r.gpa + r.len - gpa) / PAGE as u64).min(WINDOW_PAGES as u64);
                out.push((gpa, window_bits(pages as usize)));
                gpa += WINDOW_BYTES;
            }
        }
        out
    }

    /// Small pieces of guest memory for compression calibration: up to
    /// `count` windows spread evenly, copied out.
    pub fn samples(&self, count: usize) -> Vec<Vec<u8>> {
        let windows = self.all_windows();
        let step = (windows.len() / count.max(1)).max(1);
        windows
            .iter()
            .step_by(step)
            .take(count)
            .filter_map(|(base, _)| {
                let mut v = vec![0u8; 64 << 10];
                self.read(*base, &mut v).then_some(v)
            })
            .collect()
    }
}

/// Bits for the first `pages` pages of a window.
fn window_bits(pages: usize) -> [u64; 4] {
    let mut b = [0u64; 4];
    for (i, w) in b.iter_mut().enumerate() {
        let lo = i * 64;
        if pages >= lo + 64 {
            *w = u64::MAX;
        } else if pages > lo {
            *w = (1u64 << (pages - lo)) - 1;
        }
    }
    b
}

/// Whether a page is all zeros.
pub fn is_zero(page: &[u8]) -> bool {
    // Wide ORs vectorize; an early exit per 256 bytes keeps non-zero pages
    // (which usually differ early) cheap.
    page.chunks(256).all(|c| {
        c.chunks_exact(16).fold(0u128, |a, w| {
            a | u128::from_ne_bytes(w.try_into().expect("16"))
        }) == 0
            && c.chunks_exact(16).remainder().iter().all(|&b| b == 0)
    })
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
}

/// Reusable buffers of one sending thread.
#[derive(Default)]
pub struct ChunkBuilder {
    raw: Vec<u8>,
    packed: Vec<u8>,
    compressor: Option<Compressor>,
}

impl ChunkBuilder {
    /// Builds the chunk for the pages `bits` of the window at `base` into
    /// `frame` (the payload of a `Chunk` frame). `skip_zero`: leave zero
    /// pages out entirely (first round: the destination starts zeroed).
    /// Returns `None` if nothing is left to send.
    pub fn build(
        &mut self,
        mem: &HostMem,
        base: u64,
        bits: [u64; 4],
        skip_zero: bool,
        codec: Codec,
        frame: &mut Vec<u8>,
    ) -> Option<ChunkStats> {
        let mut present = [0u64; 4];
        let mut zero = [0u64; 4];
        self.raw.clear();
        let mut stats = ChunkStats::default();
        for (w, &word) in bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let b = word.trailing_zeros() as usize;
                word &= word - 1;
                let gpa = base + ((w * 64 + b) * PAGE) as u64;
                let at = self.raw.len();
                self.raw.resize(at + PAGE, 0);
                if !mem.read(gpa, &mut self.raw[at..]) {
                    self.raw.truncate(at);
                    continue;
                }
                if is_zero(&self.raw[at..]) {
                    self.raw.truncate(at);
                    if skip_zero {
                        continue;
                    }
                    zero[w] |= 1 << b;
                    stats.zero += 1;
                }
                present[w] |= 1 << b;
                stats.pages += 1;
            }
        }
        if stats.pages == 0 {
            return None;
        }
        stats.raw = self.raw.len() as u64;
        let c = self.compressor.get_or_insert_with(Compressor::new);
        let used = if !self.raw.is_empty() && c.compress(codec, &self.raw, &mut self.packed) {
            codec
        } else {
            Codec::None
        };
        frame.clear();
        ChunkHeader {
            base,
            present,
            zero,
            codec: used,
            raw_len: self.raw.len() as u32,
        }
        .encode(frame);
        frame.extend_from_slice(if used == Codec::None {
            &self.raw
        } else {
            &self.packed
        });
        stats.wire = frame.len() as u64 + 5;
        Some(stats)
    }
}

/// Reusable buffers of one receiving thread.
#[derive(Default)]
pub struct ChunkApplier {
    raw: Vec<u8>,
    decompressor: Option<Decompressor>,
}

impl ChunkApplier {
    /// Writes the pages of chunk `payload` into `mem`; returns pages written.
    pub fn apply(&mut self, mem: &HostMem, payload: &[u8]) -> Result<u64, ChunkError> {
        let h = ChunkHeader::decode(payload)?;
        let data = &payload[CHUNK_HEADER..];
        let raw: &[u8] = if h.codec == Codec::None {
            if data.len() != h.raw_len as usize {
                return Err(WireError::BadFrame(format!(
                    "raw chunk of {} bytes, header says {}",
                    data.len(),
                    h.raw_len
                ))
                .into());
            }
            data
        } else {
            self.raw.resize(h.raw_len as usize, 0);
            self.decompressor
                .get_or_insert_with(Decompressor::new)
                .decompress(h.codec, data, &mut self.raw)?;
            &self.raw
        };
        let mut at = 0;
        let mut pages = 0;
        for w in 0..4 {
            let mut word = h.present[w];
            while word != 0 {
                let b = word.trailing_zeros() as usize;
                word &= word - 1;
                let gpa = h.base + ((w * 64 + b) * PAGE) as u64;
                let ok = if h.zero[w] & (1 << b) != 0 {
                    mem.zero(gpa)
                } else {
                    at += PAGE;
                    mem.write(gpa, &raw[at - PAGE..at])
                };
                if !ok {
                    return Err(ChunkError::OutOfRange(gpa));
                }
                pages += 1;
            }
        }
        Ok(pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem_of(buf: &mut [u8], gpa: u64) -> HostMem {
        HostMem {
            ranges: vec![Range {
                gpa,
                len: buf.len() as u64,
                host: buf.as_mut_ptr(),
            }],
        }
    }

    #[test]
    fn zero_pages_are_detected_anywhere_in_the_page() {
        let mut p = vec![0u8; PAGE];
        assert!(is_zero(&p));
        for at in [0, 15, 16, 255, 256, 4000, PAGE - 1] {
            p[at] = 1;
            assert!(!is_zero(&p), "byte {at}");
            p[at] = 0;
        }
    }

    #[test]
    fn window_bits_cover_partial_windows() {
        assert_eq!(window_bits(256), [u64::MAX; 4]);
        assert_eq!(window_bits(65), [u64::MAX, 1, 0, 0]);
        assert_eq!(window_bits(0), [0; 4]);
    }

    #[test]
    fn chunks_carry_pages_and_zero_pages_without_data() {
        let size = 2 * WINDOW_BYTES as usize;
        let mut src = vec![0u8; size];
        for (i, b) in src[PAGE..3 * PAGE].iter_mut().enumerate() {
            *b = (i % 7) as u8 + 1;
        }
        src[WINDOW_BYTES as usize + 5] = 9;
        let smem = mem_of(&mut src, 0x10_0000);
        let mut dst = vec![0xeeu8; size];
        let dmem = mem_of(&mut dst, 0x10_0000);
        let mut b = ChunkBuilder::default();
        let mut a = ChunkApplier::default();
        let mut frame = Vec::new();
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
            for (base, bits) in smem.all_windows() {
                let s = b
                    .build(&smem, base, bits, false, codec, &mut frame)
                    .unwrap();
                assert_eq!(s.pages, 256);
                assert_eq!(s.raw, (256 - s.zero) * PAGE as u64);
                if codec != Codec::None {
                    assert!(s.wire < s.raw, "{codec:?} {s:?}");
                }
                assert_eq!(a.apply(&dmem, &frame).unwrap(), 256);
            }
            assert!(src == dst, "{codec:?}");
            dst.fill(0xee);
        }
        // The first round leaves zero pages out.
        let s = b
            .build(
                &smem,
                0x10_0000,
                [u64::MAX; 4],
                true,
                Codec::None,
                &mut frame,
            )
            .unwrap();
        assert_eq!((s.pages, s.zero, s.raw), (2, 0, 2 * PAGE as u64));
        let zeros = vec![0u8; size];
        let mut z = zeros.clone();
        let zmem = mem_of(&mut z, 0);
        assert!(b
            .build(&zmem, 0, [u64::MAX; 4], true, Codec::Zstd, &mut frame)
            .is_none());
    }

    #[test]
    fn chunks_outside_memory_are_refused() {
        let mut src = vec![1u8; WINDOW_BYTES as usize];
        let smem = mem_of(&mut src, 0);
        let mut frame = Vec::new();
        ChunkBuilder::default()
            .build(&smem, 0, [1, 0, 0, 0], false, Codec::None, &mut frame)
            .unwrap();
        let mut dst = vec![0u8; WINDOW_BYTES as usize];
        let dmem = mem_of(&mut dst, WINDOW_BYTES);
        assert!(matches!(
            ChunkApplier::default().apply(&dmem, &frame),
            Err(ChunkError::OutOfRange(0))
        ));
    }
}
