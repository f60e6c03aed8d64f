//! Per-chunk compression and the automatic choice between none, LZ4,
//! zstd and the channel's zstd stream from measured link and compression
//! throughput.

use std::time::Instant;

use crate::stream_codec::{StreamDecoder, StreamEncoder};
use crate::wire::Codec;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Chosen from measurements, and re-chosen as they change.
    #[default]
    Auto,
    /// Always this codec.
    Force(Codec),
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Compression::Auto,
            "off" | "none" => Compression::Force(Codec::None),
            "lz4" => Compression::Force(Codec::Lz4),
            "zstd" => Compression::Force(Codec::Zstd),
            "zstd-stream" => Compression::Force(Codec::StreamZstd),
            other => {
                return Err(format!(
                    "compression '{other}': expected auto, off, lz4, zstd or zstd-stream"
                ))
            }
        })
    }
}

/// zstd level. Only the fast levels keep up with a network; 3 carried the
/// bench image over 1 Gbit/s in 849 MB against level 1's 873 MB (7.17 s
/// against 7.35 s), and `auto` measures it before choosing it. Higher
/// levels need more CPU than two cores have (level 9: ~50 MB/s a core).
const ZSTD_LEVEL: i32 = 3;

/// Errors decoding chunk data.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The data does not decode.
    #[error("{codec} data does not decode")]
    Corrupt {
        /// The codec.
        codec: &'static str,
        /// Why (as text: the codecs' error types differ).
        detail: String,
    },
    /// It decodes to the wrong size.
    #[error("{codec} data decodes to {got} bytes, expected {want}")]
    Size {
        /// The codec.
        codec: &'static str,
        /// Decoded size.
        got: usize,
        /// Expected size.
        want: usize,
    },
    /// The chunk uses a codec the handshake did not agree on.
    #[error("{codec} was not agreed in the handshake")]
    NotAgreed {
        /// The codec.
        codec: &'static str,
    },
    /// A delta does not apply.
    #[error(transparent)]
    Delta(#[from] crate::delta::DeltaError),
    /// The delta records of a chunk are malformed.
    #[error("delta records: {0}")]
    Records(String),
    /// The decoded pages are not what the source encoded.
    #[error("{codec} data decodes to other pages than were sent (checksum {got:#010x}, sent {want:#010x})")]
    Checksum {
        /// The codec.
        codec: &'static str,
        /// CRC32C of the decoded pages.
        got: u32,
        /// CRC32C the source sent.
        want: u32,
    },
}

/// A per-thread compressor (keeps the zstd context between chunks, and
/// the channel's zstd stream when one was agreed).
pub struct Compressor {
    zstd: zstd::bulk::Compressor<'static>,
    stream: Option<StreamEncoder>,
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Compressor {
    /// A fresh compressor.
    pub fn new() -> Self {
        Compressor {
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context"),
            stream: None,
        }
    }

    /// A compressor that also has a zstd stream with a window of
    /// `2^window_log` bytes (0: none).
    pub fn with_stream(window_log: u32) -> std::io::Result<Self> {
        let mut c = Compressor::new();
        if window_log > 0 {
            c.stream = Some(StreamEncoder::new(window_log)?);
        }
        Ok(c)
    }

    /// Compresses `raw` with `codec` into `out` (cleared). Returns false
    /// when compression did not shrink it (then send it raw). The stream
    /// codec returns true even then: what went into the stream must be
    /// sent, the destination's decoder follows the encoder.
    pub fn compress(&mut self, codec: Codec, raw: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        match codec {
            Codec::None => return false,
            Codec::Lz4 => {
                out.resize(lz4_flex::block::get_maximum_output_size(raw.len()), 0);
                match lz4_flex::block::compress_into(raw, out) {
                    Ok(n) => out.truncate(n),
                    Err(_) => return false,
                }
            }
            Codec::Zstd => {
                out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
                if self.zstd.compress_to_buffer(raw, out).is_err() {
                    return false;
                }
            }
            Codec::StreamZstd => {
                let Some(s) = &mut self.stream else {
                    return false;
                };
                if s.compress_chunk(raw, out).is_err() {
                    // Its state is unknown now: never use it again.
                    self.stream = None;
                    return false;
                }
                return true;
            }
            // Not a compression: the chunk builder makes delta records.
            Codec::Delta => return false,
        }
        out.len() < raw.len()
    }
}

/// A per-thread decompressor (with the channel's zstd stream when one
/// was agreed).
pub struct Decompressor {
    zstd: zstd::bulk::Decompressor<'static>,
    stream: Option<StreamDecoder>,
}

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Decompressor {
    /// A fresh decompressor.
    pub fn new() -> Self {
        Decompressor {
            zstd: zstd::bulk::Decompressor::new().expect("zstd context"),
            stream: None,
        }
    }

    /// A decompressor that also decodes a zstd stream with windows up to
    /// `2^window_log` bytes (0: none).
    pub fn with_stream(window_log: u32) -> std::io::Result<Self> {
        let mut d = Decompressor::new();
        if window_log > 0 {
            d.stream = Some(StreamDecoder::new(window_log)?);
        }
        Ok(d)
    }

    /// Decodes `data` into `out`, which must be exactly the raw length.
    pub fn decompress(
        &mut self,
        codec: Codec,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<(), CompressError> {
        let n =
            match codec {
                Codec::None => {
                    if data.len() != out.len() {
                        return Err(CompressError::Size {
                            codec: "raw",
                            got: data.len(),
                            want: out.len(),
                        });
                    }
                    out.copy_from_slice(data);
                    return Ok(());
                }
                Codec::Lz4 => lz4_flex::block::decompress_into(data, out).map_err(|e| {
                    CompressError::Corrupt {
                        codec: "lz4",
                        detail: e.to_string(),
                    }
                })?,
                Codec::Zstd => self.zstd.decompress_to_buffer(data, out).map_err(|e| {
                    CompressError::Corrupt {
                        codec: "zstd",
                        detail: e.to_string(),
                    }
                })?,
                Codec::StreamZstd => {
                    let s = self.stream.as_mut().ok_or(CompressError::NotAgreed {
                        codec: "zstd-stream",
                    })?;
                    s.decompress_chunk(data, out)?;
                    out.len()
                }
                Codec::Delta => {
                    return Err(CompressError::Records(
                        "delta records inside delta records".into(),
                    ))
                }
            };
        if n != out.len() {
            return Err(CompressError::Size {
                codec: codec.name(),
                got: n,
                want: out.len(),
            });
        }
        Ok(())
    }
}

/// Measured speed of one codec on this guest's memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CodecSpeed {
    /// The codec.
    pub codec: Codec,
    /// Input bytes per second one thread compresses.
    pub bytes_per_s: f64,
    /// Output size / input size.
    pub ratio: f64,
}

/// Measures LZ4 and zstd on `samples` (pieces of guest memory), and the
/// zstd stream with a window of `2^stream_window_log` bytes (0: not
/// agreed; the samples go through one stream in order, as a channel's
/// chunks do).
pub fn calibrate(samples: &[&[u8]], stream_window_log: u32) -> Vec<CodecSpeed> {
    let mut c = Compressor::with_stream(stream_window_log).unwrap_or_default();
    let mut out = Vec::new();
    let total: usize = samples.iter().map(|s| s.len()).sum();
    let stream = c.stream.is_some().then_some(Codec::StreamZstd);
    [Codec::Lz4, Codec::Zstd]
        .into_iter()
        .chain(stream)
        .map(|codec| {
            let t = Instant::now();
            let mut produced = 0usize;
            for s in samples {
                produced += if c.compress(codec, s, &mut out) {
                    out.len()
                } else {
                    s.len()
                };
            }
            let secs = t.elapsed().as_secs_f64().max(1e-6);
            CodecSpeed {
                codec,
                bytes_per_s: total as f64 / secs,
                ratio: if total == 0 {
                    1.0
                } else {
                    produced as f64 / total as f64
                },
            }
        })
        .collect()
}

/// Picks the codec moving guest memory fastest: with `link` wire bytes/s
/// and `threads` compressing threads, codec c moves
/// `min(threads × speed_c, link / ratio_c)` bytes of memory per second;
/// no compression moves `link`. Compression must be predicted to win by
/// 50% to be chosen: it costs CPU the guest could use, and where sending
/// is CPU-bound too (a fast link, few cores) the model overrates it.
pub fn choose(link: f64, threads: usize, speeds: &[CodecSpeed]) -> Codec {
    let mut best = (Codec::None, link * 1.5);
    for s in speeds {
        let rate = (threads as f64 * s.bytes_per_s).min(link / s.ratio.max(1e-3));
        if rate > best.1 {
            best = (s.codec, rate);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speeds() -> Vec<CodecSpeed> {
        vec![
            CodecSpeed {
                codec: Codec::Lz4,
                bytes_per_s: 800e6,
                ratio: 0.5,
            },
            CodecSpeed {
                codec: Codec::Zstd,
                bytes_per_s: 300e6,
                ratio: 0.33,
            },
        ]
    }

    #[test]
    fn fast_links_send_raw() {
        assert_eq!(choose(3e9, 2, &speeds()), Codec::None);
    }

    #[test]
    fn slow_links_compress_hard() {
        // 1 Gbit: zstd moves min(600, 375) MB/s, lz4 min(1600, 250).
        assert_eq!(choose(125e6, 2, &speeds()), Codec::Zstd);
        // One thread: zstd min(300, 375) = 300 beats lz4's 250.
        assert_eq!(choose(125e6, 1, &speeds()), Codec::Zstd);
    }

    #[test]
    fn middle_links_pick_the_fast_codec() {
        // 600 MB/s: lz4 min(1600, 1200), zstd min(600, 1800).
        assert_eq!(choose(600e6, 2, &speeds()), Codec::Lz4);
    }

    #[test]
    fn incompressible_memory_is_sent_raw() {
        let s = [CodecSpeed {
            codec: Codec::Zstd,
            bytes_per_s: 300e6,
            ratio: 1.0,
        }];
        assert_eq!(choose(125e6, 2, &s), Codec::None);
    }

    #[test]
    fn codecs_round_trip_and_reject_garbage() {
        let mut raw = vec![0u8; 3 * 4096];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = (i % 251) as u8 ^ (i / 4096) as u8;
        }
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        for codec in [Codec::Lz4, Codec::Zstd] {
            let mut out = Vec::new();
            assert!(c.compress(codec, &raw, &mut out), "{codec:?}");
            let mut back = vec![0u8; raw.len()];
            d.decompress(codec, &out, &mut back).unwrap();
            assert_eq!(back, raw);
            let mut short = vec![0u8; raw.len() + 4096];
            assert!(d.decompress(codec, &out, &mut short).is_err());
            assert!(d.decompress(codec, &[1, 2, 3], &mut back).is_err());
        }
        let sp = calibrate(&[&raw], 0);
        assert_eq!(sp.len(), 2);
        let sp = calibrate(&[&raw, &raw], 20);
        assert_eq!(sp.len(), 3);
        assert!(
            sp[2].ratio < sp[1].ratio / 1.5,
            "{sp:?}: the stream sees the repeat"
        );
        assert!(sp.iter().all(|s| s.ratio < 1.0 && s.bytes_per_s > 0.0));
    }

    #[test]
    fn compression_parses() {
        assert_eq!("auto".parse(), Ok(Compression::Auto));
        assert_eq!("off".parse(), Ok(Compression::Force(Codec::None)));
        assert_eq!("zstd".parse(), Ok(Compression::Force(Codec::Zstd)));
        assert_eq!(
            "zstd-stream".parse(),
            Ok(Compression::Force(Codec::StreamZstd))
        );
        assert!("gzip".parse::<Compression>().is_err());
    }
}
