//! The bandwidth limit: one wire byte budget shared by every channel.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Burst allowed after idle time.
const BURST: Duration = Duration::from_millis(20);

/// Shares a wire byte budget between channels.
pub(super) struct Limiter {
    /// Bytes/s.
    rate: f64,
    /// When the budget spent so far is used up.
    next: Mutex<Instant>,
}

impl Limiter {
    /// A limit of `rate` bytes/s (at least 1).
    pub(super) fn new(rate: u64) -> Self {
        Limiter {
            rate: rate.max(1) as f64,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more fit the rate.
    pub(super) fn take(&self, bytes: u64) {
        let now = Instant::now();
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let floor = now.checked_sub(BURST).unwrap_or(now);
            if *next < floor {
                *next = floor;
            }
            *next += Duration::from_secs_f64(bytes as f64 / self.rate);
            next.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_holds_the_rate() {
        let l = Limiter::new(10_000_000);
        let t = Instant::now();
        for _ in 0..20 {
            l.take(100_000);
        }
        // 2 MB at 10 MB/s: about 200 ms, less the 20 ms burst.
        let e = t.elapsed();
        assert!(e >= Duration::from_millis(170), "{e:?}");
    }
}
