//! Page stamps written by the `dirty` workload and checked by `verify`, and
//! the mapping from workload page indices to guest-physical addresses.
//!
//! Every word of a stamped page depends on the page index and generation, so
//! a page that was lost, sent twice from different rounds, swapped with
//! another or truncated in transit fails its check.

use crate::{MemRegion, DATA_BASE, PAGE_SIZE};

/// 64-bit words in a page.
pub const WORDS_PER_PAGE: usize = (PAGE_SIZE / 8) as usize;

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// Word `w` of page `index` stamped in generation `generation`.
/// Words 0 and 1 hold the index and the generation in clear so a mismatch can
/// be reported readably.
#[inline]
pub fn stamp_word(index: u64, generation: u64, w: usize) -> u64 {
    match w {
        0 => index,
        1 => generation,
        _ => (index << 24 ^ generation).wrapping_mul(MIX) ^ (w as u64).wrapping_mul(MIX >> 7),
    }
}

/// Fills `page` with the stamp of (`index`, `generation`).
// `#[inline]` on the helpers the guest calls per page or per word: they are
// then compiled with the guest's optimization level, not this crate's (which
// is 0 in debug builds, far too slow for the `dirty` loop).
#[inline]
pub fn fill_page(page: &mut [u64; WORDS_PER_PAGE], index: u64, generation: u64) {
    for (w, word) in page.iter_mut().enumerate() {
        *word = stamp_word(index, generation, w);
    }
}

/// The generation a page must hold after the `dirty` workload stopped at
/// (`generation`, `cursor`): pages before the cursor were rewritten in the
/// current pass, the rest still hold the previous one (0: never written).
#[inline]
pub fn expected_generation(index: u64, generation: u64, cursor: u64) -> u64 {
    if index < cursor {
        generation
    } else {
        generation.saturating_sub(1)
    }
}

/// Outcome of checking one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCheck {
    /// The page holds exactly the expected stamp (or zeros for generation 0).
    Ok,
    /// Word `word` differs; `found_index`/`found_generation` are words 0 and 1.
    Mismatch {
        /// First differing word.
        word: usize,
        /// Index stamped in the page.
        found_index: u64,
        /// Generation stamped in the page.
        found_generation: u64,
    },
}

/// Checks `page` against the stamp of (`index`, `generation`); generation 0
/// means the page was never written and must be all zeros.
#[inline]
pub fn check_page(page: &[u64; WORDS_PER_PAGE], index: u64, generation: u64) -> PageCheck {
    for (w, &word) in page.iter().enumerate() {
        let want = if generation == 0 {
            0
        } else {
            stamp_word(index, generation, w)
        };
        if word != want {
            return PageCheck::Mismatch {
                word: w,
                found_index: page[0],
                found_generation: page[1],
            };
        }
    }
    PageCheck::Ok
}

/// Number of workload data pages available in `regions` (RAM at or above
/// [`DATA_BASE`]).
pub fn data_pages(regions: &[MemRegion]) -> u64 {
    regions
        .iter()
        .map(|r| {
            let start = r.start.max(DATA_BASE);
            let end = r.start.saturating_add(r.len);
            end.saturating_sub(start) / PAGE_SIZE
        })
        .sum()
}

/// Guest-physical address of workload data page `index`, walking `regions`
/// in order and skipping everything below [`DATA_BASE`]. `None` if the page
/// lies beyond the RAM described.
#[inline]
pub fn data_page_addr(regions: &[MemRegion], mut index: u64) -> Option<u64> {
    for r in regions {
        let start = r.start.max(DATA_BASE);
        let end = r.start.saturating_add(r.len);
        if end <= start {
            continue;
        }
        let pages = (end - start) / PAGE_SIZE;
        if index < pages {
            return Some(start + index * PAGE_SIZE);
        }
        index -= pages;
    }
    None
}

/// The `i`-th page (of `count` per round) the `touch` workload writes in
/// round `round`, within a span of `span_pages` data pages. Deterministic, so
/// the VMM can compute the same set.
#[inline]
pub fn touch_page(seed: u64, round: u64, i: u64, span_pages: u64) -> u64 {
    // splitmix64: cheap, well spread, the same on both sides.
    let mut z = seed
        .wrapping_add(round.wrapping_mul(0x1000_0000_01b3))
        .wrapping_add(i.wrapping_add(1).wrapping_mul(MIX));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if span_pages == 0 {
        0
    } else {
        z % span_pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip_and_detects_changes() {
        let mut page = [0u64; WORDS_PER_PAGE];
        fill_page(&mut page, 42, 7);
        assert_eq!(check_page(&page, 42, 7), PageCheck::Ok);
        // Another generation or index must not pass.
        assert_ne!(check_page(&page, 42, 6), PageCheck::Ok);
        assert_ne!(check_page(&page, 43, 7), PageCheck::Ok);
        // A single flipped bit deep in the page is caught at that word.
        page[300] ^= 1 << 17;
        assert_eq!(
            check_page(&page, 42, 7),
            PageCheck::Mismatch {
                word: 300,
                found_index: 42,
                found_generation: 7
            }
        );
    }

    #[test]
    fn generation_zero_means_zeroed_page() {
        let mut page = [0u64; WORDS_PER_PAGE];
        assert_eq!(check_page(&page, 5, 0), PageCheck::Ok);
        page[511] = 1;
        assert!(matches!(
            check_page(&page, 5, 0),
            PageCheck::Mismatch { word: 511, .. }
        ));
    }

    #[test]
    fn stamps_differ_between_pages_and_generations() {
        let a = stamp_word(1, 1, 100);
        assert_ne!(a, stamp_word(2, 1, 100));
        assert_ne!(a, stamp_word(1, 2, 100));
        assert_ne!(a, stamp_word(1, 1, 101));
    }

    #[test]
    fn expected_generation_follows_cursor() {
        assert_eq!(expected_generation(0, 3, 10), 3);
        assert_eq!(expected_generation(9, 3, 10), 3);
        assert_eq!(expected_generation(10, 3, 10), 2);
        assert_eq!(expected_generation(10, 1, 10), 0);
        assert_eq!(expected_generation(0, 0, 0), 0);
    }

    #[test]
    fn data_pages_skip_reserved_low_memory_and_holes() {
        let regions = [
            MemRegion {
                start: 0,
                len: 0xc000_0000,
            },
            MemRegion {
                start: 0x1_0000_0000,
                len: 0x4000_0000,
            },
        ];
        let low = (0xc000_0000 - DATA_BASE) / PAGE_SIZE;
        assert_eq!(data_pages(&regions), low + 0x4000_0000 / PAGE_SIZE);
        assert_eq!(data_page_addr(&regions, 0), Some(DATA_BASE));
        assert_eq!(
            data_page_addr(&regions, low - 1),
            Some(0xc000_0000 - PAGE_SIZE)
        );
        assert_eq!(data_page_addr(&regions, low), Some(0x1_0000_0000));
        assert_eq!(data_page_addr(&regions, data_pages(&regions)), None);
        // Memory smaller than the reserved area has no data pages.
        let tiny = [MemRegion {
            start: 0,
            len: DATA_BASE / 2,
        }];
        assert_eq!(data_pages(&tiny), 0);
        assert_eq!(data_page_addr(&tiny, 0), None);
    }

    #[test]
    fn touch_pages_are_deterministic_and_in_span() {
        for i in 0..1000 {
            let p = touch_page(9, 2, i, 777);
            assert!(p < 777);
            assert_eq!(p, touch_page(9, 2, i, 777));
        }
        // Different rounds pick different sets.
        let a: u64 = (0..64).map(|i| touch_page(9, 1, i, 1 << 20)).sum();
        let b: u64 = (0..64).map(|i| touch_page(9, 2, i, 1 << 20)).sum();
        assert_ne!(a, b);
    }
}
