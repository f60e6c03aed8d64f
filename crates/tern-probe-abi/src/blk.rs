//! What the probe's block workloads put on a disk, so a host test can check
//! the image afterwards (for example through `qemu-img convert`) without
//! running the guest again.
//!
//! `blk-verify` writes [`sector_bytes`]`(s)` to every 512-byte sector `s` of
//! the range it covers (from sector 0), and `blk-iops` writes the same
//! pattern to the sectors it writes, so a disk the probe wrote holds, in
//! every sector it ever wrote, the pattern of that sector's own number.
//!
//! Sector `s` is 64 little-endian 64-bit words, word `w` being
//! [`blk_pattern`]`(s, w)`: word 0 is the sector number in clear, word 1 is
//! [`PATTERN_MAGIC`] (`"TERNBLK1"`), the rest mix both, so a sector written
//! to the wrong place, a stale one, a torn one or one of zeros all fail.

/// Bytes in a virtio-blk sector (the unit of request and capacity fields).
pub const SECTOR_SIZE: u64 = 512;
/// 64-bit words in a sector.
pub const WORDS_PER_SECTOR: usize = (SECTOR_SIZE / 8) as usize;
/// Word 1 of every pattern sector: `"TERNBLK1"` in little-endian.
pub const PATTERN_MAGIC: u64 = u64::from_le_bytes(*b"TERNBLK1");
/// Bytes per normalized I/O in storage QoS (as in Hyper-V: every 8 KiB of a
/// request, rounded up, counts as one; a request of 0 bytes counts as one).
pub const NORMALIZED_IO_BYTES: u64 = 8192;

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// Word `word` (0..64) of the pattern of sector `sector`.
#[inline]
pub fn blk_pattern(sector: u64, word: usize) -> u64 {
    match word {
        0 => sector,
        1 => PATTERN_MAGIC,
        _ => {
            // splitmix64 of (sector, word): every word depends on both.
            let mut z = sector
                .wrapping_mul(MIX)
                .wrapping_add((word as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }
}

/// Fills `buf` with the pattern of sector `sector`.
#[inline]
pub fn fill_sector(buf: &mut [u64; WORDS_PER_SECTOR], sector: u64) {
    for (w, word) in buf.iter_mut().enumerate() {
        *word = blk_pattern(sector, w);
    }
}

/// The 512 bytes sector `sector` holds after the probe wrote it.
pub fn sector_bytes(sector: u64) -> [u8; SECTOR_SIZE as usize] {
    let mut out = [0u8; SECTOR_SIZE as usize];
    for (w, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&blk_pattern(sector, w).to_le_bytes());
    }
    out
}

/// Checks `buf` against the pattern of sector `sector`: `None` if it
/// matches, else the first differing word.
#[inline]
pub fn check_sector(buf: &[u64; WORDS_PER_SECTOR], sector: u64) -> Option<usize> {
    buf.iter()
        .enumerate()
        .position(|(w, &word)| word != blk_pattern(sector, w))
}

/// Normalized I/Os a request of `bytes` counts as in storage QoS.
#[inline]
pub const fn normalized_ios(bytes: u64) -> u64 {
    let n = bytes.div_ceil(NORMALIZED_IO_BYTES);
    if n == 0 {
        1
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_catches_displaced_sectors() {
        let mut buf = [0u64; WORDS_PER_SECTOR];
        fill_sector(&mut buf, 1234);
        assert_eq!(check_sector(&buf, 1234), None);
        assert_eq!(check_sector(&buf, 1235), Some(0));
        assert_eq!(buf[0], 1234);
        assert_eq!(buf[1], PATTERN_MAGIC);
        buf[63] ^= 1 << 40;
        assert_eq!(check_sector(&buf, 1234), Some(63));
        // Zeros never pass, not even for sector 0.
        assert_eq!(check_sector(&[0; WORDS_PER_SECTOR], 0), Some(1));
    }

    #[test]
    fn sector_bytes_are_the_words_little_endian() {
        let b = sector_bytes(7);
        assert_eq!(&b[0..8], &7u64.to_le_bytes());
        assert_eq!(&b[8..16], b"TERNBLK1");
        for w in 0..WORDS_PER_SECTOR {
            let word = u64::from_le_bytes(b[w * 8..w * 8 + 8].try_into().unwrap());
            assert_eq!(word, blk_pattern(7, w));
        }
    }

    #[test]
    fn pattern_words_differ_across_sectors_and_words() {
        // No two words of the first 4096 sectors past the header are equal:
        // a sector copied anywhere else, or a word shifted, is caught.
        extern crate std;
        let mut seen = std::collections::HashSet::new();
        for s in 0..4096u64 {
            for w in 2..WORDS_PER_SECTOR {
                assert!(seen.insert(blk_pattern(s, w)), "sector {s} word {w}");
            }
        }
        // Pinned values: the pattern is a contract with images on disk.
        assert_eq!(blk_pattern(0, 0), 0);
        assert_eq!(blk_pattern(0, 1), 0x314b_4c42_4e52_4554);
        assert_eq!(blk_pattern(1, 2), PINNED_1_2);
    }

    /// `blk_pattern(1, 2)`, pinned so a change of the pattern is noticed.
    const PINNED_1_2: u64 = 0x0572_91b3_66a5_f0bc;

    #[test]
    fn normalized_ios_round_up_per_8k() {
        assert_eq!(normalized_ios(0), 1);
        assert_eq!(normalized_ios(512), 1);
        assert_eq!(normalized_ios(4096), 1);
        assert_eq!(normalized_ios(8192), 1);
        assert_eq!(normalized_ios(8193), 2);
        assert_eq!(normalized_ios(65536), 8);
    }
}
