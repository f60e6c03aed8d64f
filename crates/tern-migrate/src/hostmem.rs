//! Guest memory as host ranges borrowed from the mapping that holds them,
//! and zero-page detection.

use std::marker::PhantomData;

use crate::wire::{PAGE, WINDOW_BYTES, WINDOW_PAGES};

/// One RAM region: guest-physical start, length, host address.
#[derive(Clone, Copy, Debug)]
struct Range {
    gpa: u64,
    len: u64,
    host: *mut u8,
}

/// Guest memory seen as host ranges, borrowed from the memory that maps
/// them for `'a`. The guest may write it while the sender reads (precopy):
/// pages are only ever copied out with raw copies, never borrowed as Rust
/// slices, and the dirty log resends any page that changed.
#[derive(Clone, Debug)]
pub struct HostMem<'a> {
    ranges: Vec<Range>,
    _mem: PhantomData<&'a mut [u8]>,
}

// SAFETY: the pointers are addresses inside mappings borrowed for 'a (the
// borrow keeps them mapped); access is by raw copies, which tolerate
// concurrent guest writes, and writes go to windows that one thread owns.
unsafe impl Send for HostMem<'_> {}
// SAFETY: as above; no interior state.
unsafe impl Sync for HostMem<'_> {}

/// A checked piece of guest memory: inside one region of a [`HostMem`],
/// valid for as long as the memory it was taken from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostRange<'a> {
    region: usize,
    host: *mut u8,
    /// Bytes.
    pub(crate) len: usize,
    _mem: PhantomData<&'a HostMem<'a>>,
}

impl<'a> HostRange<'a> {
    /// Whether this page is all zeros.
    pub(crate) fn is_zero_page(&self) -> bool {
        assert_eq!(self.len, PAGE);
        // SAFETY: `host` is readable for `len` = PAGE bytes while 'a lasts.
        unsafe { page_is_zero(self.host) }
    }

    /// Copies the range out into the start of `out` (at most its length).
    pub(crate) fn copy_to(&self, out: &mut [u8]) {
        let n = self.len.min(out.len());
        // SAFETY: `host` is readable for `len` >= n bytes while 'a lasts;
        // `out` is a separate buffer of at least n bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.host, out.as_mut_ptr(), n) };
    }

    /// Copies the start of `src` (at most the range's length) in.
    pub(crate) fn copy_from(&self, src: &[u8]) {
        let n = self.len.min(src.len());
        // SAFETY: `host` is writable for `len` >= n bytes while 'a lasts;
        // `src` is a separate buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.host, n) };
    }

    /// Zeroes the range.
    pub(crate) fn zero(&self) {
        // SAFETY: `host` is writable for `len` bytes while 'a lasts.
        unsafe { std::ptr::write_bytes(self.host, 0, self.len) };
    }

    /// The range as an I/O vector entry (for readv/writev, which the
    /// caller still has to justify).
    pub(crate) fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.host.cast(),
            iov_len: self.len,
        }
    }

    /// Extends this range by `next` if it follows directly in the same
    /// region.
    pub(crate) fn join(&mut self, next: &HostRange<'a>) -> bool {
        if self.region == next.region && self.host.wrapping_add(self.len) == next.host {
            self.len += next.len;
            true
        } else {
            false
        }
    }
}

impl<'a> HostMem<'a> {
    /// The RAM of `mem`, for as long as `mem` is borrowed.
    pub fn of(mem: &'a tern_vmm::memory::GuestMem) -> HostMem<'a> {
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
            _mem: PhantomData,
        }
    }

    /// A buffer as guest memory starting at `gpa` (tests and fuzzing).
    pub fn from_slice(gpa: u64, buf: &'a mut [u8]) -> HostMem<'a> {
        HostMem {
            ranges: vec![Range {
                gpa,
                len: buf.len() as u64,
                host: buf.as_mut_ptr(),
            }],
            _mem: PhantomData,
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

    /// The `len` bytes at `gpa`, if they lie inside one region.
    pub(crate) fn range(&self, gpa: u64, len: u64) -> Option<HostRange<'a>> {
        self.ranges
            .iter()
            .enumerate()
            // Checked: `gpa` may come from the peer.
            // Checked in u128: neither end may wrap around.
            .find(|(_, r)| {
                gpa >= r.gpa && gpa as u128 + len as u128 <= r.gpa as u128 + r.len as u128
            })
            .map(|(region, r)| HostRange {
                region,
                // SAFETY: the offset is within the region's mapping (checked).
                host: unsafe { r.host.add((gpa - r.gpa) as usize) },
                len: len as usize,
                _mem: PhantomData,
            })
    }

    /// Copies `out.len()` bytes at `gpa` out of guest memory.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> bool {
        match self.range(gpa, out.len() as u64) {
            Some(r) => {
                r.copy_to(out);
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

    /// Small pieces of guest memory for compression calibration: from up
    /// to `count` windows spread evenly, up to 64 KiB of their non-zero
    /// pages each (spread over the window), copied out. Zero pages are left out: they travel as a
    /// bit, never compressed, and would make any codec look perfect.
    pub fn samples(&self, count: usize) -> Vec<Vec<u8>> {
        const SAMPLE_PAGES: usize = 16;
        let windows = self.all_windows();
        let step = (windows.len() / count.max(1)).max(1);
        windows
            .iter()
            .step_by(step)
            .take(count)
            .filter_map(|&(base, _)| {
                let mut v = Vec::with_capacity(SAMPLE_PAGES * PAGE);
                let mut page = vec![0u8; PAGE];
                // Pages spread over the window, then the ones between.
                let order = (0..WINDOW_PAGES / SAMPLE_PAGES)
                    .flat_map(|k| (k..WINDOW_PAGES).step_by(WINDOW_PAGES / SAMPLE_PAGES));
                for i in order {
                    if v.len() >= SAMPLE_PAGES * PAGE {
                        break;
                    }
                    if self.read(base + (i * PAGE) as u64, &mut page) && !is_zero(&page) {
                        v.extend_from_slice(&page);
                    }
                }
                (!v.is_empty()).then_some(v)
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
    assert_eq!(page.len(), PAGE);
    // SAFETY: `page` is PAGE readable bytes.
    unsafe { page_is_zero(page.as_ptr()) }
}

/// Whether the page at `p` is all zeros. Reads through the raw pointer
/// (guest memory that the guest may be writing): wide ORs vectorize; an
/// early exit per 256 bytes keeps non-zero pages (which usually differ
/// early) cheap.
///
/// # Safety
///
/// `p` must be readable for PAGE bytes.
unsafe fn page_is_zero(p: *const u8) -> bool {
    for block in 0..PAGE / 256 {
        let mut acc = 0u128;
        for i in 0..16 {
            // SAFETY: inside the page (block * 256 + i * 16 + 16 <= PAGE).
            acc |= unsafe { p.add(block * 256 + i * 16).cast::<u128>().read_unaligned() };
        }
        if acc != 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn ranges_are_checked_against_the_regions_without_wrapping() {
        let mut buf = vec![7u8; 2 * PAGE];
        let top = 0u64.wrapping_sub(2 * PAGE as u64);
        let mem = HostMem::from_slice(top, &mut buf);
        assert_eq!(mem.size(), 2 * PAGE as u64);
        assert!(
            mem.range(top, 2 * PAGE as u64).is_some(),
            "up to the very top"
        );
        assert!(mem.range(top + PAGE as u64, PAGE as u64 + 1).is_none());
        assert!(mem.range(u64::MAX, 2).is_none(), "wraps around");
        assert!(mem.range(top - 1, 1).is_none(), "below the region");
        let mut page = [0u8; PAGE];
        assert!(mem.read(top + PAGE as u64, &mut page));
        assert!(page.iter().all(|&b| b == 7));
        let r = mem.range(top, PAGE as u64).unwrap();
        assert!(!r.is_zero_page());
        r.zero();
        assert!(r.is_zero_page());
        let mut joined = r;
        assert!(joined.join(&mem.range(top + PAGE as u64, PAGE as u64).unwrap()));
        assert_eq!(joined.len, 2 * PAGE);
        assert!(
            !joined.join(&mem.range(top, PAGE as u64).unwrap()),
            "not adjacent"
        );
    }
}
