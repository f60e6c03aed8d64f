//! Storage QoS with Hyper-V's semantics.
//!
//! Limits count *normalized* I/Os: every 8 KiB of a request, rounded up,
//! is one I/O, so a 4 KiB read is 1 and a 64 KiB write is 8
//! ([`normalized_ios`]). A maximum (`max_iops`, and `max_bw` in bytes/s) is
//! a token bucket refilled at the limit and holding at most
//! [`BURST`] of it, so a disk idle for a moment may run ahead briefly. A
//! request is admitted while the bucket is positive and charged in full,
//! so the bucket may go negative and a large request waits its cost out
//! afterwards: the long-run rate is exact whatever the request sizes.
//!
//! A minimum (`min_iops`) is a reservation Tern cannot force, only watch:
//! [`MinIopsMonitor`] raises [`QosEventKind::MinIopsNotMet`] when a disk
//! with sustained demand delivers fewer normalized IOPS than its minimum
//! for [`SUSTAIN_WINDOWS`] one-second windows in a row, and
//! [`QosEventKind::MinIopsRestored`] when it meets it again (or demand
//! stops). "Sustained demand" means requests arrived (admitted or held by
//! a maximum) in at least 9 of the window's ten 100 ms slots: a guest that
//! asks for little is not a disk that cannot deliver.
//!
//! Time comes from a [`Clock`] so tests run on a manual one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes per normalized I/O.
pub const NORMALIZED_IO_BYTES: u64 = 8192;
/// How much of a maximum's rate the bucket holds (a short burst).
pub const BURST: Duration = Duration::from_millis(100);
/// Length of one minimum-IOPS measurement window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Windows in a row below the minimum before the event is raised.
pub const SUSTAIN_WINDOWS: u32 = 3;
const SLOTS: u32 = 10;
const ACTIVE_SLOTS: u32 = 9;

/// Normalized I/Os a request of `bytes` counts as (at least 1: a flush or
/// a zero-length request is still an I/O).
pub fn normalized_ios(bytes: u64) -> u64 {
    bytes.div_ceil(NORMALIZED_IO_BYTES).max(1)
}

/// A monotonic time source.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed start.
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// A disk's limits; 0 means none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosLimits {
    /// Most normalized IOPS.
    pub max_iops: u64,
    /// Reserved normalized IOPS (watched, raises events).
    pub min_iops: u64,
    /// Most bytes per second.
    pub max_bw: u64,
}

/// Errors in a set of limits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QosError {
    /// A minimum above the maximum can never be met.
    #[error("min-iops {min} is above max-iops {max}")]
    MinAboveMax {
        /// The minimum.
        min: u64,
        /// The maximum.
        max: u64,
    },
}

impl QosLimits {
    /// Refuses contradictory limits.
    pub fn validate(&self) -> Result<(), QosError> {
        if self.max_iops != 0 && self.min_iops > self.max_iops {
            return Err(QosError::MinAboveMax {
                min: self.min_iops,
                max: self.max_iops,
            });
        }
        Ok(())
    }
}

/// A token bucket; levels and rates in units per second, as floats so
/// rates below one unit per refill step stay exact.
#[derive(Clone, Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    level: f64,
    last: Duration,
}

impl Bucket {
    fn new(rate: u64, now: Duration) -> Self {
        let rate = rate as f64;
        let burst = (rate * BURST.as_secs_f64()).max(1.0);
        Bucket {
            rate,
            burst,
            level: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.level = (self.level + dt * self.rate).min(self.burst);
    }

    /// Zero when a request may go now, else how long until it may.
    fn wait(&mut self, now: Duration) -> Duration {
        self.refill(now);
        if self.level > 0.0 {
            Duration::ZERO
        } else {
            // A hair past the exact time, so the retry finds a positive level.
            Duration::from_secs_f64((-self.level) / self.rate) + Duration::from_micros(10)
        }
    }

    fn charge(&mut self, cost: f64) {
        self.level -= cost;
    }

    fn set_rate(&mut self, rate: u64, now: Duration) {
        self.refill(now);
        let fresh = Bucket::new(rate, now);
        self.rate = fresh.rate;
        self.burst = fresh.burst;
        // Debt carries over; credit never exceeds the new burst.
        self.level = self.level.min(self.burst);
    }
}

/// What [`Qos::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Go now; the request was charged.
    Go,
    /// Try again after this long.
    Wait(Duration),
}

/// Kinds of QoS events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosEventKind {
    /// A disk with demand stayed below its minimum.
    MinIopsNotMet,
    /// It meets its minimum again (or has no demand any more).
    MinIopsRestored,
}

impl QosEventKind {
    /// Kebab-case name, for the control socket and the API.
    pub fn name(self) -> &'static str {
        match self {
            QosEventKind::MinIopsNotMet => "min-iops-not-met",
            QosEventKind::MinIopsRestored => "min-iops-restored",
        }
    }
}

/// A QoS event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QosEvent {
    /// What happened.
    pub kind: QosEventKind,
    /// The minimum in force.
    pub min_iops: u64,
    /// Normalized IOPS measured in the last window.
    pub measured_iops: u64,
}

/// Watches a minimum-IOPS reservation (see the module docs).
#[derive(Clone, Debug)]
pub struct MinIopsMonitor {
    min: u64,
    start: Duration,
    ios: u64,
    slots: u32,
    below: u32,
    raised: bool,
}

impl MinIopsMonitor {
    /// A monitor for `min` normalized IOPS (0: off), starting at `now`.
    pub fn new(min: u64, now: Duration) -> Self {
        MinIopsMonitor {
            min,
            start: now,
            ios: 0,
            slots: 0,
            below: 0,
            raised: false,
        }
    }

    fn slot(&self, now: Duration) -> u32 {
        let per = WINDOW / SLOTS;
        (now.saturating_sub(self.start).as_nanos() / per.as_nanos()).min(SLOTS as u128 - 1) as u32
    }

    /// The guest asked for I/O at `now` (admitted or not).
    pub fn demand(&mut self, now: Duration) {
        self.slots |= 1 << self.slot(now);
    }

    /// `ios` normalized I/Os were delivered at `now`.
    pub fn delivered(&mut self, now: Duration, ios: u64) {
        self.demand(now);
        self.ios += ios;
    }

    /// Closes every window that ended by `now`; returns an event if one is due.
    pub fn tick(&mut self, now: Duration) -> Option<QosEvent> {
        let mut event = None;
        while now >= self.start + WINDOW {
            let active = self.slots.count_ones() >= ACTIVE_SLOTS;
            let measured = self.ios; // per one-second window
            if self.min != 0 && active && measured < self.min {
                self.below += 1;
                if self.below >= SUSTAIN_WINDOWS && !self.raised {
                    self.raised = true;
                    event = Some(self.event(QosEventKind::MinIopsNotMet, measured));
                }
            } else {
                self.below = 0;
                if self.raised {
                    self.raised = false;
                    event = Some(self.event(QosEventKind::MinIopsRestored, measured));
                }
            }
            self.ios = 0;
            self.slots = 0;
            self.start += WINDOW;
            if now >= self.start + WINDOW * 2 {
                // Long idle: skip ahead, those windows had no demand.
                self.start = now - (now - self.start).min(WINDOW);
            }
        }
        event
    }

    fn event(&self, kind: QosEventKind, measured: u64) -> QosEvent {
        QosEvent {
            kind,
            min_iops: self.min,
            measured_iops: measured,
        }
    }

    /// True while a not-met event is outstanding.
    pub fn raised(&self) -> bool {
        self.raised
    }
}

/// A disk's QoS state: the maximum buckets and the minimum monitor.
pub struct Qos {
    clock: Arc<dyn Clock>,
    limits: QosLimits,
    iops: Option<Bucket>,
    bw: Option<Bucket>,
    monitor: MinIopsMonitor,
}

impl Qos {
    /// QoS with `limits` (validated) on `clock`.
    pub fn new(limits: QosLimits, clock: Arc<dyn Clock>) -> Result<Self, QosError> {
        limits.validate()?;
        let now = clock.now();
        Ok(Qos {
            iops: (limits.max_iops != 0).then(|| Bucket::new(limits.max_iops, now)),
            bw: (limits.max_bw != 0).then(|| Bucket::new(limits.max_bw, now)),
            monitor: MinIopsMonitor::new(limits.min_iops, now),
            limits,
            clock,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> QosLimits {
        self.limits
    }

    /// Changes the limits at once, keeping any debt a maximum had.
    pub fn set_limits(&mut self, limits: QosLimits) -> Result<(), QosError> {
        limits.validate()?;
        let now = self.clock.now();
        let update = |b: &mut Option<Bucket>, rate: u64| match (b.as_mut(), rate) {
            (_, 0) => *b = None,
            (Some(b), r) => b.set_rate(r, now),
            (None, r) => *b = Some(Bucket::new(r, now)),
        };
        update(&mut self.iops, limits.max_iops);
        update(&mut self.bw, limits.max_bw);
        if limits.min_iops != self.limits.min_iops {
            self.monitor = MinIopsMonitor::new(limits.min_iops, now);
        }
        self.limits = limits;
        Ok(())
    }

    /// Asks to start a request moving `bytes` (0 for flush and the like).
    pub fn admit(&mut self, bytes: u64) -> Admit {
        let now = self.clock.now();
        let wait = [self.iops.as_mut(), self.bw.as_mut()]
            .into_iter()
            .flatten()
            .map(|b| b.wait(now))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            self.monitor.demand(now);
            return Admit::Wait(wait);
        }
        let ios = normalized_ios(bytes);
        if let Some(b) = self.iops.as_mut() {
            b.charge(ios as f64);
        }
        if let Some(b) = self.bw.as_mut() {
            b.charge(bytes as f64);
        }
        self.monitor.delivered(now, ios);
        Admit::Go
    }

    /// Closes finished monitor windows; call it every 100 ms or so.
    pub fn tick(&mut self) -> Option<QosEvent> {
        self.monitor.tick(self.clock.now())
    }

    /// True when no maximum is set (no request ever waits).
    pub fn unlimited(&self) -> bool {
        self.iops.is_none() && self.bw.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qos(limits: QosLimits) -> (Arc<ManualClock>, Qos) {
        let c = Arc::new(ManualClock::default());
        let q = Qos::new(limits, c.clone()).unwrap();
        (c, q)
    }

    /// Runs a closed-loop client of `bytes` requests for `secs`, stepping
    /// the clock to each wakeup; returns normalized I/Os delivered.
    fn run(c: &ManualClock, q: &mut Qos, bytes: u64, secs: u64) -> u64 {
        let end = c.now() + Duration::from_secs(secs);
        let mut ios = 0;
        while c.now() < end {
            match q.admit(bytes) {
                Admit::Go => ios += normalized_ios(bytes),
                Admit::Wait(d) => c.advance(d),
            }
        }
        ios
    }

    #[test]
    fn normalization_counts_each_started_8k() {
        assert_eq!(normalized_ios(0), 1);
        assert_eq!(normalized_ios(512), 1);
        assert_eq!(normalized_ios(4096), 1);
        assert_eq!(normalized_ios(8192), 1);
        assert_eq!(normalized_ios(8193), 2);
        assert_eq!(normalized_ios(65536), 8);
        assert_eq!(normalized_ios(1 << 20), 128);
    }

    #[test]
    fn max_iops_holds_the_rate_after_a_short_burst() {
        let limits = QosLimits {
            max_iops: 500,
            ..Default::default()
        };
        let (c, mut q) = qos(limits);
        // A full bucket lets 50 (100 ms worth) through at once, no more.
        let mut burst = 0;
        while q.admit(4096) == Admit::Go {
            burst += 1;
        }
        assert_eq!(burst, 50);
        let ios = run(&c, &mut q, 4096, 10);
        assert!((4999..=5001).contains(&ios), "{ios}");
        // 64 KiB requests count 8 each: a eighth as many requests.
        let ios = run(&c, &mut q, 65536, 10);
        assert!((4990..=5010).contains(&ios), "{ios}");
    }

    #[test]
    fn max_bw_limits_bytes() {
        let (c, mut q) = qos(QosLimits {
            max_bw: 1 << 20,
            ..Default::default()
        });
        c.advance(Duration::from_secs(1));
        let mut bytes = 0;
        let end = c.now() + Duration::from_secs(4);
        while c.now() < end {
            match q.admit(65536) {
                Admit::Go => bytes += 65536,
                Admit::Wait(d) => c.advance(d),
            }
        }
        // 4 s at 1 MiB/s plus the 100 ms burst and one request of debt.
        assert!(
            (4 << 20..=(4 << 20) + (1 << 20) / 10 + 65536).contains(&bytes),
            "{bytes}"
        );
    }

    #[test]
    fn raising_the_limit_takes_effect_at_once() {
        let (c, mut q) = qos(QosLimits {
            max_iops: 100,
            ..Default::default()
        });
        let slow = run(&c, &mut q, 4096, 2);
        q.set_limits(QosLimits {
            max_iops: 1000,
            ..Default::default()
        })
        .unwrap();
        let fast = run(&c, &mut q, 4096, 2);
        assert!((199..=211).contains(&slow), "{slow}");
        assert!((1990..=2101).contains(&fast), "{fast}");
        q.set_limits(QosLimits::default()).unwrap();
        assert!(q.unlimited());
        for _ in 0..100_000 {
            assert_eq!(q.admit(1 << 20), Admit::Go);
        }
    }

    #[test]
    fn min_above_max_is_refused() {
        let bad = QosLimits {
            max_iops: 10,
            min_iops: 20,
            max_bw: 0,
        };
        assert!(Qos::new(bad, Arc::new(ManualClock::default())).is_err());
        let (_, mut q) = qos(QosLimits::default());
        assert_eq!(
            q.set_limits(bad),
            Err(QosError::MinAboveMax { min: 20, max: 10 })
        );
    }

    #[test]
    fn unmet_minimum_raises_after_sustained_demand_and_restores() {
        let (c, mut q) = qos(QosLimits {
            min_iops: 1000,
            ..Default::default()
        });
        let step = Duration::from_millis(10);
        let mut events = vec![];
        // 100 IOPS of steady demand: below the minimum.
        for _ in 0..500 {
            q.admit(4096);
            c.advance(step);
            events.extend(q.tick());
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, QosEventKind::MinIopsNotMet);
        assert_eq!(events[0].min_iops, 1000);
        assert!((99..=101).contains(&events[0].measured_iops), "{events:?}");
        // Now 2000 IOPS: restored within a window.
        events.clear();
        for _ in 0..150 {
            for _ in 0..20 {
                q.admit(4096);
            }
            c.advance(step);
            events.extend(q.tick());
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, QosEventKind::MinIopsRestored);
    }

    #[test]
    fn light_demand_is_not_a_missed_minimum() {
        let (c, mut q) = qos(QosLimits {
            min_iops: 1000,
            ..Default::default()
        });
        // A burst of 50 requests once a second: most slots idle.
        for _ in 0..10 {
            for _ in 0..50 {
                q.admit(4096);
            }
            c.advance(WINDOW);
            assert_eq!(q.tick(), None);
        }
        // Idle for a long time: no event, and no backlog of windows.
        c.advance(Duration::from_secs(3600));
        assert_eq!(q.tick(), None);
    }

    #[test]
    fn demand_held_by_a_maximum_counts() {
        // A maximum below the minimum is refused, but a bandwidth cap can
        // still starve a minimum: the held requests count as demand.
        let (c, mut q) = qos(QosLimits {
            min_iops: 200,
            max_bw: 100 * 4096,
            ..Default::default()
        });
        let mut events = vec![];
        let end = c.now() + Duration::from_secs(5);
        while c.now() < end {
            match q.admit(4096) {
                Admit::Go => {}
                Admit::Wait(d) => c.advance(d.min(Duration::from_millis(5))),
            }
            events.extend(q.tick());
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, QosEventKind::MinIopsNotMet);
    }
}
