//! Dirty page windows: which 1 MiB windows of guest memory hold pages to
//! send, as 256-page bitmaps.

use tern_vmm::vm::DirtyLog;

use crate::wire::WINDOW_BYTES;

/// A window of guest memory: its base address and a bit per page.
pub(super) type Window = (u64, [u64; 4]);

/// The windows with dirty pages.
pub(super) fn dirty_windows(log: &DirtyLog) -> Vec<Window> {
    let mut out = Vec::new();
    for (start, words) in &log.regions {
        for (i, w) in words.chunks(4).enumerate() {
            if w.iter().any(|&x| x != 0) {
                let mut bits = [0u64; 4];
                bits[..w.len()].copy_from_slice(w);
                out.push((start + i as u64 * WINDOW_BYTES, bits));
            }
        }
    }
    out
}

/// The union of two window lists (each ascending by address).
pub(super) fn merge_windows(a: Vec<Window>, b: Vec<Window>) -> Vec<Window> {
    let mut m: std::collections::BTreeMap<u64, [u64; 4]> = a.into_iter().collect();
    for (base, bits) in b {
        let e = m.entry(base).or_default();
        for (x, y) in e.iter_mut().zip(bits) {
            *x |= y;
        }
    }
    m.into_iter().collect()
}

/// Pages the windows hold.
pub(super) fn count_pages(windows: &[Window]) -> u64 {
    windows
        .iter()
        .flat_map(|(_, b)| b.iter())
        .map(|w| w.count_ones() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_windows_group_pages_by_mebibyte() {
        let mut words = vec![0u64; 12];
        words[0] = 1;
        words[5] = 1 << 3;
        words[11] = u64::MAX;
        let log = DirtyLog {
            regions: vec![(0, words), (1 << 32, vec![0, 0, 0, 2])],
        };
        let w = dirty_windows(&log);
        assert_eq!(
            w,
            vec![
                (0, [1, 0, 0, 0]),
                (WINDOW_BYTES, [0, 1 << 3, 0, 0]),
                (2 * WINDOW_BYTES, [0, 0, 0, u64::MAX]),
                (1 << 32, [0, 0, 0, 2]),
            ]
        );
        assert_eq!(count_pages(&w), 1 + 1 + 64 + 1);
        let m = merge_windows(vec![(0, [1, 0, 0, 0]), (WINDOW_BYTES, [0, 2, 0, 0])], w);
        assert_eq!(m[0], (0, [1, 0, 0, 0]));
        assert_eq!(m[1], (WINDOW_BYTES, [0, 2 | 1 << 3, 0, 0]));
        assert_eq!(m.len(), 4);
    }
}
