//! Property tests (seeded random loops: no proptest in this workspace) of
//! the zstd stream and delta codecs through the chunk builder and
//! applier, as a channel uses them round after round.

use std::io::Write;
use std::os::fd::AsFd;

use crate::compress::CompressError;
use crate::hostmem::HostMem;
use crate::pages::{ChannelCodecs, ChunkApplier, ChunkBuilder, ChunkError, DataFrame};
use crate::wire::{Codec, PAGE, WINDOW_BYTES, WINDOW_PAGES};

/// A seeded xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WINDOWS: usize = 4;
const SIZE: usize = WINDOWS * WINDOW_BYTES as usize;

/// Fills `page` as one of several kinds: random, text, zero runs with
/// some data, one byte value, all zero.
fn fill_page(rng: &mut Rng, page: &mut [u8]) {
    match rng.below(5) {
        0 => page.iter_mut().for_each(|b| *b = rng.next() as u8),
        1 => {
            let words: [&[u8]; 6] = [b"migrate ", b"the ", b"page\n", b"0xdeadbeef ", b"{", b"}"];
            let mut at = 0;
            while at < PAGE {
                let w = words[rng.below(words.len())];
                let n = w.len().min(PAGE - at);
                page[at..at + n].copy_from_slice(&w[..n]);
                at += n;
            }
        }
        2 => {
            page.fill(0);
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(PAGE);
                let n = rng.below(PAGE - at).min(200);
                page[at..at + n]
                    .iter_mut()
                    .for_each(|b| *b = rng.next() as u8);
            }
        }
        3 => page.fill(rng.next() as u8 | 1),
        _ => page.fill(0),
    }
}

/// Changes a page the way a guest often does: a few bytes here and there.
fn touch_page(rng: &mut Rng, page: &mut [u8]) {
    match rng.below(10) {
        // Mostly a few small changes (a stamp, a counter).
        0..=6 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(PAGE);
                let n = (1 + rng.below(12)).min(PAGE - at);
                page[at..at + n]
                    .iter_mut()
                    .for_each(|b| *b = rng.next() as u8);
            }
        }
        // Sometimes rewritten, or cleared.
        7 | 8 => fill_page(rng, page),
        _ => page.fill(0),
    }
}

/// Sends `frame` into an applier through a socket, as a data channel.
fn apply<'a>(
    a: &mut ChunkApplier<'a>,
    mem: &HostMem<'a>,
    frame: &[u8],
) -> Result<DataFrame, ChunkError> {
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

/// A way to break a frame.
type Mutation = dyn Fn(&mut Vec<u8>);

fn bits_of(pages: &[usize]) -> [u64; 4] {
    let mut b = [0u64; 4];
    for &p in pages {
        b[p / 64] |= 1 << (p % 64);
    }
    b
}

/// Rounds of a channel: all memory, then random re-dirtied pages, each
/// chunk in a codec drawn at random (the stream and delta state carried
/// from round to round as the sender does); after every chunk the
/// destination equals the source exactly.
#[test]
fn stream_and_delta_chunks_round_trip_every_round() {
    for seed in [1u64, 0x5eed, 0xdead_beef] {
        let mut rng = Rng(seed);
        let mut src = vec![0u8; SIZE];
        for p in src.chunks_mut(PAGE) {
            fill_page(&mut rng, p);
        }
        let mut dst = vec![0u8; SIZE];
        let dmem = HostMem::from_slice(0, &mut dst);
        // A cache smaller than memory: entries are replaced as it fills.
        let mut codecs = ChannelCodecs::new(22, 2 << 20).unwrap();
        let mut applier = ChunkApplier::with_codecs(22, true).unwrap();
        let mut frame = Vec::new();
        let (mut deltas, mut delta_wire, mut delta_raw) = (0, 0, 0);
        let codec_set = [Codec::None, Codec::Lz4, Codec::Zstd, Codec::StreamZstd];
        for round in 0..8 {
            let mut dirty = vec![round == 0; SIZE / PAGE];
            if round > 0 {
                for _ in 0..rng.below(400) + 50 {
                    let p = rng.below(SIZE / PAGE);
                    touch_page(&mut rng, &mut src[p * PAGE..(p + 1) * PAGE]);
                    dirty[p] = true;
                }
            }
            let smem = HostMem::from_slice(0, &mut src);
            let mut b = ChunkBuilder::resume(std::mem::take(&mut codecs));
            for w in 0..WINDOWS {
                let base = (w as u64) * WINDOW_BYTES;
                // The dirty pages, and some clean ones (sent again unchanged,
                // as a page written with the same bytes is).
                let pages: Vec<usize> = (0..WINDOW_PAGES)
                    .filter(|&i| dirty[w * WINDOW_PAGES + i] || rng.below(20) == 0)
                    .collect();
                let codec = codec_set[rng.below(codec_set.len())];
                let Some(st) = b.build(&smem, base, bits_of(&pages), round == 0, codec) else {
                    continue;
                };
                b.encode(&mut frame);
                assert_eq!(st.wire, frame.len() as u64);
                if st.delta > 0 {
                    deltas += st.delta;
                    delta_wire += st.wire;
                    delta_raw += st.raw;
                }
                let r = apply(&mut applier, &dmem, &frame);
                assert!(
                    matches!(r, Ok(DataFrame::Chunk(n)) if n == st.pages),
                    "seed {seed} round {round} window {w} {codec:?}: {r:?}"
                );
            }
            codecs = b.suspend();
            drop(smem);
            let mut back = vec![0u8; SIZE];
            assert!(dmem.read(0, &mut back));
            for (i, (x, y)) in back.chunks(PAGE).zip(src.chunks(PAGE)).enumerate() {
                assert!(x == y, "seed {seed} round {round}: page {i} differs");
            }
        }
        assert!(deltas > 100, "seed {seed}: {deltas} delta pages");
        assert!(
            delta_wire * 2 < delta_raw,
            "seed {seed}: delta chunks {delta_wire} bytes for {delta_raw}"
        );
    }
}

/// A chunk in each new codec, then the same chunk broken in many ways:
/// every broken one is refused, naming the chunk, and leaves guest memory
/// exactly as it was.
#[test]
fn corrupt_and_truncated_chunks_are_refused_without_touching_memory() {
    let mut rng = Rng(77);
    let mut src = vec![0u8; WINDOW_BYTES as usize];
    for p in src.chunks_mut(PAGE) {
        fill_page(&mut rng, p);
        p[0] = 1; // no zero pages: every page has data
    }
    let base = WINDOW_BYTES;
    let all = [u64::MAX; 4];
    let mut frames = Vec::new();
    // Codec 3: a first chunk of the stream.
    {
        let smem = HostMem::from_slice(base, &mut src);
        let mut b = ChunkBuilder::resume(ChannelCodecs::new(20, 0).unwrap());
        b.build(&smem, base, all, false, Codec::StreamZstd).unwrap();
        let mut f = Vec::new();
        b.encode(&mut f);
        assert_eq!(f[5 + 72], Codec::StreamZstd as u8);
        frames.push((f, 20, Vec::new()));
    }
    // Codec 4: deltas against what the destination got in round 2, raw
    // records and zstd-compressed ones.
    for codec in [Codec::None, Codec::Zstd] {
        let mut before = Vec::new();
        let mut f = Vec::new();
        let state = {
            let mut b = ChunkBuilder::resume(ChannelCodecs::new(0, 1 << 20).unwrap());
            let smem = HostMem::from_slice(base, &mut src);
            b.build(&smem, base, all, false, codec).unwrap();
            b.encode(&mut before);
            b.suspend()
        };
        let mut b = ChunkBuilder::resume(state);
        let mut changed = src.clone();
        for p in changed.chunks_mut(PAGE) {
            p[100] ^= 0x55;
            p[3000] ^= 0x0f;
        }
        let smem = HostMem::from_slice(base, &mut changed);
        let st = b.build(&smem, base, all, false, codec).unwrap();
        assert_eq!(st.delta, WINDOW_PAGES as u64);
        b.encode(&mut f);
        assert_eq!(f[5 + 72], Codec::Delta as u8);
        frames.push((f, 0, before));
    }
    for (frame, log, before) in frames {
        let mutations: Vec<Box<Mutation>> = vec![
            // Truncated: the frame says less and ends there.
            Box::new(|f: &mut Vec<u8>| {
                let cut = f.len() - 7;
                f.truncate(cut);
                let l = (cut - 4) as u32;
                f[..4].copy_from_slice(&l.to_le_bytes());
            }),
            Box::new(|f: &mut Vec<u8>| {
                let cut = 5 + 77 + 6;
                f.truncate(cut);
                let l = (cut - 4) as u32;
                f[..4].copy_from_slice(&l.to_le_bytes());
            }),
            // Bytes changed in the checksum, headers, and body.
            Box::new(|f: &mut Vec<u8>| f[5 + 77] ^= 1),
            Box::new(|f: &mut Vec<u8>| f[5 + 77 + 1] ^= 0x80),
            Box::new(|f: &mut Vec<u8>| f[5 + 77 + 4] ^= 0xff),
            Box::new(|f: &mut Vec<u8>| f[5 + 77 + 9] ^= 0x02),
            Box::new(|f: &mut Vec<u8>| f[5 + 77 + 12] = 0xff),
            Box::new(|f: &mut Vec<u8>| {
                let n = f.len();
                f[n / 2] ^= 0x10;
            }),
            Box::new(|f: &mut Vec<u8>| {
                let n = f.len();
                f[n - 1] ^= 0x01;
            }),
        ];
        for (i, m) in mutations.iter().enumerate() {
            let mut f = frame.clone();
            m(&mut f);
            let mut dst = vec![0xa5u8; 3 * WINDOW_BYTES as usize];
            let dmem = HostMem::from_slice(0, &mut dst);
            let mut a = ChunkApplier::with_codecs(log, true).unwrap();
            if !before.is_empty() {
                assert!(matches!(
                    apply(&mut a, &dmem, &before),
                    Ok(DataFrame::Chunk(256))
                ));
            }
            let mut snapshot = vec![0u8; 3 * WINDOW_BYTES as usize];
            assert!(dmem.read(0, &mut snapshot));
            let r = apply(&mut a, &dmem, &f);
            let mut after = vec![0u8; snapshot.len()];
            assert!(dmem.read(0, &mut after));
            assert!(after == snapshot, "mutation {i} wrote guest memory");
            match r {
                Err(e @ ChunkError::Data { base: b, .. }) => {
                    assert_eq!(b, base);
                    assert!(e.to_string().contains("0x100000"), "{e}");
                }
                // Truncation can also be found by the header's checks, or
                // the stream ending.
                Err(ChunkError::Wire(_)) if i < 2 => {}
                other => panic!("mutation {i}: {other:?}"),
            }
        }
        // Unbroken, it applies; and an applier that did not agree the
        // codec refuses it, untouched.
        let mut dst = vec![0u8; 3 * WINDOW_BYTES as usize];
        let dmem = HostMem::from_slice(0, &mut dst);
        let mut a = ChunkApplier::with_codecs(log, true).unwrap();
        if !before.is_empty() {
            apply(&mut a, &dmem, &before).unwrap();
        }
        assert!(matches!(
            apply(&mut a, &dmem, &frame),
            Ok(DataFrame::Chunk(256))
        ));
        let mut plain = ChunkApplier::default();
        let mut dst2 = vec![0x33u8; 3 * WINDOW_BYTES as usize];
        let dmem2 = HostMem::from_slice(0, &mut dst2);
        let r = apply(&mut plain, &dmem2, &frame);
        assert!(
            matches!(
                r,
                Err(ChunkError::Data {
                    source: CompressError::NotAgreed { .. },
                    ..
                })
            ),
            "{r:?}"
        );
        drop(dmem2);
        assert!(dst2.iter().all(|&x| x == 0x33));
    }
}
