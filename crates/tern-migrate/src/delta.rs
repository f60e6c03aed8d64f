//! Delta encoding of re-dirtied pages (chunk codec 4), after QEMU's
//! XBZRLE: the source keeps a bounded cache of the pages it sent last
//! ([`DeltaCache`]) and sends a page that was sent before as the runs of
//! bytes that changed, when that is smaller; the destination applies the
//! runs to the page it holds.
//!
//! That is exact because the destination's copy of a page is the last
//! copy the source sent of it: a page always travels on the same channel,
//! in order; the destination's VM does not run before the switchover;
//! and the source caches the very bytes it encoded (a private copy taken
//! before encoding, never guest memory the guest may be writing), and
//! updates or drops the entry for every later send of that page.
//!
//! Run encoding of one page (`encode`): pairs of ULEB128 numbers and
//! bytes, `unchanged, changed, <changed bytes>`, covering the page from
//! its start; what follows the last pair is unchanged. A pair's changed
//! count is at least 1.

use std::collections::HashMap;

use crate::wire::PAGE;

/// Default size of the source's cache, all channels together.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// Errors applying a delta.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A number is cut short or too large.
    #[error("delta: bad run length at byte {0}")]
    BadLength(usize),
    /// A run reaches past the end of the page.
    #[error("delta: run past the end of the page at byte {0}")]
    PastPage(usize),
    /// A run of changed bytes is empty.
    #[error("delta: empty run at byte {0}")]
    EmptyRun(usize),
    /// The data ends inside a run's bytes.
    #[error("delta: cut short at byte {0}")]
    Truncated(usize),
}

fn put_uleb(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a ULEB128 number (at most 2 bytes: a page is 4096 bytes).
fn get_uleb(d: &[u8], at: &mut usize) -> Result<usize, DeltaError> {
    let start = *at;
    let mut v = 0usize;
    for shift in [0, 7] {
        let b = *d.get(*at).ok_or(DeltaError::BadLength(start))?;
        *at += 1;
        v |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DeltaError::BadLength(start))
}

/// Length of the common prefix of `a` and `b` (equal lengths), by words.
fn same_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut i = 0;
    while i + 8 <= a.len() && a[i..i + 8] == b[i..i + 8] {
        i += 8;
    }
    while i < a.len() && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Appends the runs turning `old` into `new` (both one page) to `out`.
/// Returns false, with `out` as it was, when they would take more than
/// `limit` bytes (then the page is better sent whole).
pub fn encode(old: &[u8], new: &[u8], out: &mut Vec<u8>, limit: usize) -> bool {
    debug_assert!(old.len() == PAGE && new.len() == PAGE);
    let start = out.len();
    let mut i = 0;
    while i < PAGE {
        let same = same_prefix(&old[i..], &new[i..]);
        if i + same == PAGE {
            break;
        }
        let from = i + same;
        // A changed run ends where 3 bytes in a row agree again (a shorter
        // unchanged gap costs more as a new pair than as changed bytes).
        let mut end = from + 1;
        while end < PAGE {
            if old[end] != new[end] {
                end += 1;
                continue;
            }
            let agree = old[end..(end + 3).min(PAGE)]
                .iter()
                .zip(&new[end..(end + 3).min(PAGE)])
                .take_while(|(a, b)| a == b)
                .count();
            if agree >= 3 || end + agree == PAGE {
                break;
            }
            end += agree;
        }
        put_uleb(out, same);
        put_uleb(out, end - from);
        out.extend_from_slice(&new[from..end]);
        if out.len() - start > limit {
            out.truncate(start);
            return false;
        }
        i = end;
    }
    true
}

/// Applies the runs `delta` to `page` (one page, the old copy; a scratch
/// copy: on error part of it may be changed).
pub fn apply(delta: &[u8], page: &mut [u8]) -> Result<(), DeltaError> {
    let mut at = 0;
    let mut pos = 0usize;
    while at < delta.len() {
        let pair = at;
        let same = get_uleb(delta, &mut at)?;
        let changed = get_uleb(delta, &mut at)?;
        if changed == 0 {
            return Err(DeltaError::EmptyRun(pair));
        }
        pos += same;
        if pos + changed > page.len() {
            return Err(DeltaError::PastPage(pair));
        }
        let bytes = delta
            .get(at..at + changed)
            .ok_or(DeltaError::Truncated(at))?;
        page[pos..pos + changed].copy_from_slice(bytes);
        pos += changed;
        at += changed;
    }
    Ok(())
}

/// The source's copies of pages it sent, for one channel, keyed by
/// guest-physical address. Bounded; when full, the oldest insertion is
/// replaced (the pages a guest keeps dirtying are re-inserted every
/// round, so they stay).
pub struct DeltaCache {
    slots: Vec<u8>,
    /// Address held by each slot (`u64::MAX`: free).
    owner: Vec<u64>,
    index: HashMap<u64, usize>,
    next: usize,
}

impl DeltaCache {
    /// A cache of `bytes` (rounded down to pages, at least one page).
    pub fn new(bytes: u64) -> Self {
        let n = ((bytes / PAGE as u64) as usize).max(1);
        DeltaCache {
            slots: vec![0; n * PAGE],
            owner: vec![u64::MAX; n],
            index: HashMap::with_capacity(n),
            next: 0,
        }
    }

    /// The cached copy of the page at `gpa`.
    pub fn get(&self, gpa: u64) -> Option<&[u8]> {
        self.index
            .get(&gpa)
            .map(|&s| &self.slots[s * PAGE..(s + 1) * PAGE])
    }

    /// Remembers `page` (one page) as the copy last sent of `gpa`.
    pub fn put(&mut self, gpa: u64, page: &[u8]) {
        let slot = match self.index.get(&gpa) {
            Some(&s) => s,
            None => {
                let s = self.next;
                self.next = (self.next + 1) % self.owner.len();
                if self.owner[s] != u64::MAX {
                    self.index.remove(&self.owner[s]);
                }
                self.owner[s] = gpa;
                self.index.insert(gpa, s);
                s
            }
        };
        self.slots[slot * PAGE..(slot + 1) * PAGE].copy_from_slice(page);
    }

    /// Forgets `gpa` (it was sent in a way the cache does not follow).
    pub fn remove(&mut self, gpa: u64) {
        if let Some(s) = self.index.remove(&gpa) {
            self.owner[s] = u64::MAX;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A seeded xorshift generator (no proptest in this workspace).
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Pages of several kinds: random, text, zero runs, one byte value.
    pub(crate) fn page_of(rng: &mut Rng, kind: usize) -> Vec<u8> {
        let mut p = vec![0u8; PAGE];
        match kind % 4 {
            0 => p.iter_mut().for_each(|b| *b = rng.next() as u8),
            1 => {
                let words = ["the ", "guest ", "page ", "moves ", "\n", "0x1f "];
                let mut s = Vec::new();
                while s.len() < PAGE {
                    s.extend_from_slice(words[rng.below(words.len())].as_bytes());
                }
                p.copy_from_slice(&s[..PAGE]);
            }
            2 => {
                for _ in 0..rng.below(8) {
                    let at = rng.below(PAGE);
                    let n = rng.below(PAGE - at).min(300);
                    p[at..at + n].iter_mut().for_each(|b| *b = rng.next() as u8);
                }
            }
            _ => p.fill(rng.next() as u8),
        }
        p
    }

    /// `old` changed in a few places (a stamp, a counter, a short string).
    pub(crate) fn few_changes(rng: &mut Rng, old: &[u8]) -> Vec<u8> {
        let mut p = old.to_vec();
        for _ in 0..1 + rng.below(6) {
            let at = rng.below(PAGE);
            let n = (1 + rng.below(16)).min(PAGE - at);
            p[at..at + n].iter_mut().for_each(|b| *b = rng.next() as u8);
        }
        p
    }

    #[test]
    fn random_and_structured_pages_round_trip() {
        let mut rng = Rng(0x5eed_0001);
        let mut out = Vec::new();
        for case in 0..2000 {
            let old = page_of(&mut rng, case);
            let new = match case % 3 {
                0 => few_changes(&mut rng, &old),
                1 => page_of(&mut rng, case / 3),
                _ => old.clone(),
            };
            out.clear();
            if encode(&old, &new, &mut out, PAGE) {
                let mut p = old.clone();
                apply(&out, &mut p).unwrap();
                assert!(p == new, "case {case}");
                if case % 3 == 0 {
                    assert!(out.len() < 6 * (16 + 4) + 8, "case {case}: {}", out.len());
                }
                if case % 3 == 2 {
                    assert!(out.is_empty());
                }
            } else {
                assert!(out.is_empty());
            }
        }
        // Every byte changed: over the limit.
        let old = vec![0u8; PAGE];
        let new = vec![1u8; PAGE];
        assert!(!encode(&old, &new, &mut out, PAGE / 2));
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_deltas_are_refused() {
        let mut p = vec![0u8; PAGE];
        assert_eq!(apply(&[0x80], &mut p), Err(DeltaError::BadLength(0)));
        assert_eq!(
            apply(&[0xff, 0xff, 0x01, 1, 2], &mut p),
            Err(DeltaError::BadLength(0))
        );
        assert_eq!(apply(&[5, 0], &mut p), Err(DeltaError::EmptyRun(0)));
        assert_eq!(
            apply(&[0xff, 0x1f, 2, 1, 1], &mut p),
            Err(DeltaError::PastPage(0))
        );
        assert_eq!(apply(&[0, 4, 1, 2], &mut p), Err(DeltaError::Truncated(2)));
        apply(&[], &mut p).unwrap();
        apply(&[0xff, 0x1f, 1, 9], &mut p).unwrap();
        assert_eq!(p[PAGE - 1], 9);
    }

    #[test]
    fn the_cache_is_bounded_and_replaces_the_oldest() {
        let mut c = DeltaCache::new(2 * PAGE as u64);
        let a = vec![1u8; PAGE];
        c.put(0, &a);
        c.put(4096, &a);
        c.put(0, &vec![2u8; PAGE]);
        assert_eq!(c.get(0).unwrap()[0], 2);
        c.put(8192, &a);
        assert!(c.get(0).is_none(), "the oldest insertion went");
        assert!(c.get(4096).is_some() && c.get(8192).is_some());
        c.remove(4096);
        assert!(c.get(4096).is_none());
        c.put(12288, &a);
        assert!(c.get(8192).is_some() && c.get(12288).is_some());
    }
}
