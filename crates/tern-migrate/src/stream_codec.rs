//! The streaming zstd codec of a data channel (chunk codec 3): one zstd
//! frame per channel that lasts the whole migration, with a long window
//! (like `zstd -3 --long=27`), flushed at the end of every chunk so each
//! chunk decodes on arrival. Data repeated anywhere within the window of
//! what the channel carried before (identical pages megabytes apart, a
//! page sent again in a later round) costs a few bytes.
//!
//! Memory: the destination keeps the window for each channel, so it
//! holds up to `channels × 2^window_log` bytes; it chooses the window in
//! the handshake ([`accept_window_log`]) within [`WINDOW_BUDGET`], and
//! the source never uses a larger one.

use zstd::stream::raw::{CParameter, DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

use crate::compress::CompressError;

/// Largest window this build offers or accepts (`--long=27`: 128 MiB).
pub const MAX_WINDOW_LOG: u32 = 27;
/// Smallest window worth a stream (1 MiB: one chunk window); below it the
/// destination turns the codec off.
pub const MIN_WINDOW_LOG: u32 = 20;
/// What all channels' windows together may take on the destination.
pub const WINDOW_BUDGET: u64 = 1 << 30;
/// zstd level of the stream (the per-chunk codec's level).
const LEVEL: i32 = 3;

/// The window the destination accepts for `channels` channels of a guest
/// with `memory` bytes, the source having offered `offered` (0: no
/// stream codec). 0 turns the codec off. No window is larger than a
/// channel's share of guest memory (history beyond one pass over it is
/// stale), nor are all of them together larger than [`WINDOW_BUDGET`].
pub fn accept_window_log(offered: u32, channels: u32, memory: u64) -> u32 {
    if offered < MIN_WINDOW_LOG || channels == 0 {
        return 0;
    }
    let share = (memory / u64::from(channels)).max(1);
    let mut log = offered.min(MAX_WINDOW_LOG);
    // The smallest window covering a channel's share.
    while log > MIN_WINDOW_LOG && (1u64 << (log - 1)) >= share {
        log -= 1;
    }
    while log > MIN_WINDOW_LOG && u64::from(channels) << log > WINDOW_BUDGET {
        log -= 1;
    }
    if u64::from(channels) << log > WINDOW_BUDGET {
        0
    } else {
        log
    }
}

/// What this build offers in [`crate::wire::Hello::codecs`].
pub fn offer() -> crate::wire::Codecs {
    crate::wire::Codecs {
        stream_window_log: MAX_WINDOW_LOG,
        delta: true,
    }
}

/// What a destination accepts of `offer` (absent: a version 3 source,
/// nothing) for `channels` channels of a guest of `memory` bytes.
pub fn accept(
    offer: Option<&crate::wire::Codecs>,
    channels: u32,
    memory: u64,
) -> Option<crate::wire::Codecs> {
    let o = offer?;
    Some(crate::wire::Codecs {
        stream_window_log: accept_window_log(o.stream_window_log, channels, memory),
        delta: o.delta,
    })
}

/// What the source uses of the destination's `accepted` answer to its
/// own `offered` codecs: never more than it offered.
pub fn agreed(
    offered: &crate::wire::Codecs,
    accepted: Option<&crate::wire::Codecs>,
) -> crate::wire::Codecs {
    let a = accepted.cloned().unwrap_or_default();
    crate::wire::Codecs {
        stream_window_log: if a.stream_window_log >= MIN_WINDOW_LOG {
            a.stream_window_log.min(offered.stream_window_log)
        } else {
            0
        },
        delta: a.delta && offered.delta,
    }
}

fn corrupt(e: std::io::Error) -> CompressError {
    CompressError::Corrupt {
        codec: "zstd-stream",
        detail: e.to_string(),
    }
}

/// The source's end of a channel's stream.
pub struct StreamEncoder {
    enc: Encoder<'static>,
}

impl StreamEncoder {
    /// An encoder with a window of `2^window_log` bytes and long-distance
    /// matching (what `--long` turns on).
    pub fn new(window_log: u32) -> std::io::Result<Self> {
        let mut enc = Encoder::new(LEVEL)?;
        enc.set_parameter(CParameter::WindowLog(window_log))?;
        enc.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
        Ok(StreamEncoder { enc })
    }

    /// Appends `raw`, compressed and flushed (decodable on its own given
    /// every chunk before it), to `out` (cleared). Once called, what it
    /// wrote must be sent: the destination's decoder follows this one.
    pub fn compress_chunk(&mut self, raw: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(raw.len()) + 64);
        let mut input = InBuffer::around(raw);
        loop {
            if out.capacity() == out.len() {
                out.reserve(64 << 10);
            }
            let mut o = OutBuffer::around_pos(out, out.len());
            if input.pos < raw.len() {
                self.enc.run(&mut input, &mut o)?;
                continue;
            }
            if self.enc.flush(&mut o)? == 0 {
                return Ok(());
            }
        }
    }
}

/// The destination's end of a channel's stream.
pub struct StreamDecoder {
    dec: Decoder<'static>,
}

impl StreamDecoder {
    /// A decoder that accepts windows up to `2^window_log` bytes (what
    /// the handshake agreed; a larger one in the stream is an error).
    pub fn new(window_log: u32) -> std::io::Result<Self> {
        let mut dec = Decoder::new()?;
        dec.set_parameter(DParameter::WindowLogMax(window_log.max(10)))?;
        Ok(StreamDecoder { dec })
    }

    /// Decodes one chunk's `data` into `out`, which it must fill exactly,
    /// consuming all of `data`. `out` is a scratch buffer: on error its
    /// contents are undefined (and the stream is broken: the channel
    /// fails).
    pub fn decompress_chunk(&mut self, data: &[u8], out: &mut [u8]) -> Result<(), CompressError> {
        let want = out.len();
        let mut input = InBuffer::around(data);
        let mut o = OutBuffer::around(out);
        loop {
            let (ip, op) = (input.pos, o.pos());
            if ip == data.len() && op == want {
                break;
            }
            self.dec.run(&mut input, &mut o).map_err(corrupt)?;
            if input.pos == ip && o.pos() == op {
                // Nothing moved: input ended before the output filled
                // (truncated) or the output filled before the input ended
                // (too long).
                return Err(CompressError::Size {
                    codec: "zstd-stream",
                    got: o.pos(),
                    want,
                });
            }
        }
        // Nothing may be left inside the decoder for this chunk.
        let mut extra = [0u8; 1];
        let mut e = OutBuffer::around(&mut extra[..]);
        self.dec
            .run(&mut InBuffer::around(&[]), &mut e)
            .map_err(corrupt)?;
        if e.pos() != 0 {
            return Err(CompressError::Size {
                codec: "zstd-stream",
                got: want + 1,
                want,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_fits_the_share_and_the_budget() {
        assert_eq!(accept_window_log(0, 2, 1 << 30), 0, "not offered");
        assert_eq!(accept_window_log(27, 2, 1 << 30), 27);
        assert_eq!(accept_window_log(27, 4, 64 << 20), 24, "16 MiB share");
        assert_eq!(accept_window_log(27, 16, 4 << 30), 26, "1 GiB budget");
        assert_eq!(accept_window_log(27, 256, 64 << 30), 22);
        assert_eq!(accept_window_log(40, 1, 8 << 30), MAX_WINDOW_LOG);
        assert_eq!(accept_window_log(27, 2048, 1 << 40), 0, "over budget");
    }

    #[test]
    fn a_version_3_peer_gets_no_new_codec() {
        assert_eq!(accept(None, 2, 1 << 30), None);
        let a = agreed(&offer(), None);
        assert_eq!((a.stream_window_log, a.delta), (0, false));
        let acc = accept(Some(&offer()), 2, 1 << 30).unwrap();
        assert_eq!(agreed(&offer(), Some(&acc)), acc);
        let mut big = acc.clone();
        big.stream_window_log = 31;
        assert_eq!(
            agreed(&offer(), Some(&big)).stream_window_log,
            MAX_WINDOW_LOG
        );
    }

    #[test]
    fn chunks_decode_on_arrival_and_reuse_far_history() {
        let mut page = vec![0u8; 64 << 10];
        let mut x = 0x9e37_79b9_u32;
        for b in page.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let mut enc = StreamEncoder::new(22).unwrap();
        let mut dec = StreamDecoder::new(22).unwrap();
        let mut wire = Vec::new();
        let mut back = vec![0u8; page.len()];
        enc.compress_chunk(&page, &mut wire).unwrap();
        assert!(wire.len() > page.len() / 2, "random data does not shrink");
        dec.decompress_chunk(&wire, &mut back).unwrap();
        assert_eq!(back, page);
        // Megabytes of other data later, the same bytes are a reference.
        let filler = vec![7u8; 2 << 20];
        let mut fb = vec![0u8; filler.len()];
        enc.compress_chunk(&filler, &mut wire).unwrap();
        dec.decompress_chunk(&wire, &mut fb).unwrap();
        enc.compress_chunk(&page, &mut wire).unwrap();
        assert!(wire.len() < 1024, "{} bytes", wire.len());
        dec.decompress_chunk(&wire, &mut back).unwrap();
        assert_eq!(back, page);
    }

    #[test]
    fn truncated_long_and_corrupt_chunks_are_refused() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 97) as u8).collect();
        let mut wire = Vec::new();
        let mut out = vec![0u8; raw.len()];
        let fresh = || {
            let mut e = StreamEncoder::new(20).unwrap();
            let mut w = Vec::new();
            e.compress_chunk(&raw, &mut w).unwrap();
            (e, w)
        };
        let (_, w) = fresh();
        wire.clone_from(&w);
        let mut d = StreamDecoder::new(20).unwrap();
        assert!(d
            .decompress_chunk(&wire[..wire.len() - 3], &mut out)
            .is_err());
        let mut d = StreamDecoder::new(20).unwrap();
        assert!(d.decompress_chunk(&wire, &mut out[..1000]).is_err());
        let mut d = StreamDecoder::new(20).unwrap();
        let mut long = vec![0u8; raw.len() + 1];
        assert!(d.decompress_chunk(&wire, &mut long).is_err());
        let mut bad = wire.clone();
        bad[0] ^= 0xff;
        let mut d = StreamDecoder::new(20).unwrap();
        assert!(d.decompress_chunk(&bad, &mut out).is_err());
        // A window larger than agreed.
        let mut big = StreamEncoder::new(26).unwrap();
        let mut w = Vec::new();
        big.compress_chunk(&raw, &mut w).unwrap();
        let mut d = StreamDecoder::new(20).unwrap();
        assert!(d.decompress_chunk(&w, &mut out).is_err());
        let mut d = StreamDecoder::new(20).unwrap();
        d.decompress_chunk(&wire, &mut out).unwrap();
        assert_eq!(out, raw);
    }
}
