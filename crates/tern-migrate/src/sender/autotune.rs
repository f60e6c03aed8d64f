//! Automatic compression and the link estimate: which codec the channels
//! use, chosen from the measured link and the calibrated codec speeds, and
//! kept only when it moves memory faster on real traffic.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::compress::{self, CodecSpeed};
use crate::progress::Progress;
use crate::wire::Codec;

/// Sending time before automatic compression may try a codec.
const FIRST_TRIAL_AFTER: Duration = Duration::from_millis(200);

/// Link estimate assumed before anything was measured, wire bytes/s.
const DEFAULT_LINK: f64 = 100e6;

/// Automatic compression: a codec the model prefers is tried against the
/// current one on real traffic, and kept only if it moves memory faster
/// (on a fast link both ends' CPUs, not the wire, are the bottleneck).
#[derive(Default)]
struct AutoTrial {
    /// (codec before the trial, its memory bytes/s, trial start, raw bytes then).
    trial: Option<(Codec, f64, Instant, u64)>,
    /// No new trial before this.
    quiet_until: Option<Instant>,
}

/// The codec in use (read by every channel for every chunk) and what
/// decides it.
pub(super) struct CodecTuner<'a> {
    progress: &'a Progress,
    /// The user's bandwidth cap, bytes/s.
    cap: Option<u64>,
    codec: AtomicU8,
    speeds: Vec<CodecSpeed>,
    /// Link estimate, wire bytes/s (measured while not CPU-bound).
    link: Mutex<f64>,
    auto: Mutex<AutoTrial>,
}

impl<'a> CodecTuner<'a> {
    /// Starts with `codec`; `speeds` (empty for a forced codec) feed the
    /// automatic choice.
    pub(super) fn new(
        progress: &'a Progress,
        cap: Option<u64>,
        codec: Codec,
        speeds: Vec<CodecSpeed>,
    ) -> Self {
        let t = CodecTuner {
            progress,
            cap,
            codec: AtomicU8::new(codec as u8),
            speeds,
            link: Mutex::new(0.0),
            auto: Mutex::new(AutoTrial::default()),
        };
        t.update_codec_name();
        t
    }

    /// The codec chunks are built with now.
    pub(super) fn codec(&self) -> Codec {
        Codec::from_u8(self.codec.load(Ordering::Relaxed)).unwrap_or(Codec::None)
    }

    fn update_codec_name(&self) {
        let c = self.codec();
        self.progress.update(|s| s.compression = c.name().into());
    }

    /// Wire bytes/s: the measured link, capped.
    pub(super) fn bandwidth(&self) -> f64 {
        let link = *self.link.lock().unwrap_or_else(|p| p.into_inner());
        let link = if link > 0.0 { link } else { DEFAULT_LINK };
        match self.cap {
            Some(b) => link.min(b as f64),
            None => link,
        }
    }

    /// Folds a throughput observation into the link estimate. Sending raw,
    /// the wire rate is the link; compressing, it is only a lower bound
    /// (the CPU may be what limits).
    pub(super) fn observe_link(&self, wire_rate: f64, codec: Codec) {
        let mut link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        if codec == Codec::None || *link == 0.0 {
            *link = if *link == 0.0 {
                wire_rate
            } else {
                0.5 * *link + 0.5 * wire_rate
            };
        } else if wire_rate > *link {
            *link = wire_rate;
        }
    }

    fn set_codec(&self, c: Codec) {
        if self.codec.swap(c as u8, Ordering::Relaxed) != c as u8 {
            self.update_codec_name();
        }
    }

    /// One step of automatic compression, every 100 ms of sending.
    /// `raw_rate`: memory bytes/s over the last interval; `raw`: total.
    pub(super) fn rechoose(&self, threads: usize, raw_rate: f64, raw: u64) {
        let now = Instant::now();
        let mut a = self.auto.lock().unwrap_or_else(|p| p.into_inner());
        if a.quiet_until.is_none() {
            // The first 100 ms understate a fast link (slow start, the
            // destination faulting its memory in): let the estimate
            // settle before it decides a trial.
            a.quiet_until = Some(now + FIRST_TRIAL_AFTER);
        }
        if a.quiet_until.is_some_and(|t| now < t) {
            return;
        }
        let cur = self.codec();
        match a.trial {
            None => {
                let c = compress::choose(self.bandwidth(), threads, &self.speeds);
                if c != cur && raw_rate > 0.0 {
                    a.trial = Some((cur, raw_rate, now, raw));
                    self.set_codec(c);
                }
            }
            Some((prev, prev_rate, since, raw0)) => {
                let dt = now.duration_since(since);
                if dt < Duration::from_millis(300) {
                    return;
                }
                let rate = (raw - raw0) as f64 / dt.as_secs_f64();
                // A trial that lost is not repeated soon: each costs time.
                let quiet = if rate < prev_rate * 1.15 {
                    self.set_codec(prev);
                    Duration::from_secs(15)
                } else {
                    Duration::from_secs(3)
                };
                a.trial = None;
                a.quiet_until = Some(now + quiet);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_estimate_follows_raw_traffic_and_respects_the_cap() {
        let p = Progress::default();
        let t = CodecTuner::new(&p, Some(50_000_000), Codec::None, Vec::new());
        assert_eq!(t.bandwidth(), 50e6, "the cap below the default");
        t.observe_link(10e6, Codec::None);
        assert_eq!(t.bandwidth(), 10e6);
        t.observe_link(30e6, Codec::None);
        assert_eq!(t.bandwidth(), 20e6, "raw rates are averaged");
        // Compressed traffic only raises the estimate (the CPU may limit).
        t.observe_link(5e6, Codec::Zstd);
        assert_eq!(t.bandwidth(), 20e6);
        t.observe_link(40e6, Codec::Zstd);
        assert_eq!(t.bandwidth(), 40e6);
        assert_eq!(p.snapshot().compression, "none");
    }
}
