//! The source side: handshake, precopy rounds over N channels, convergence
//! (auto-converge, timeout, bandwidth cap), switchover, and keeping the VM
//! running here whenever anything fails.

mod autotune;
mod dirty;
mod rate;
mod switchover;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tern_vmm::{RunState, Vm, VmConfig};

use crate::compress::{self, Compression};
use crate::disk_mirror::{DiskMirror, MirrorError};
use crate::pages::{ChannelCodecs, ChunkBuilder, HostMem};
use crate::progress::{Phase, Progress};
use crate::transport::{Endpoint, Stream};
use crate::version::{self, Reply, Version};
use crate::wire::{self, Codec, ConfigCheck, Kind, WireError, PAGE, WINDOW_BYTES};
use autotune::CodecTuner;
use dirty::{count_pages, dirty_windows, Window};
use rate::Limiter;
use switchover::{abort, switchover_zero_copy};

/// How long a socket may block before the peer counts as gone.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the destination may take to restore and start the VM.
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failed switchover waits for the destination to let go of
/// the disks it opened (it closes them when it hears the abort, or after
/// its own commit timeout when the network is gone).
const REACQUIRE_TIMEOUT: Duration = Duration::from_secs(20);
/// Fixed part of the expected downtime: pause, state capture, the
/// destination building the VM (KVM VM, vCPUs, devices, disks opened),
/// commit and start. Measured at 8-13 ms with nothing left to send
/// (`tern-bench migrate`, KVM PVM host; 27-30 ms while the last round
/// still waited for a 20 ms tick); kept a little above that, since a
/// model that promises too little makes the downtime overshoot.
const FIXED_DOWNTIME: Duration = Duration::from_millis(15);
/// Highest auto-converge throttle, percent.
const MAX_THROTTLE: u32 = 99;
/// Auto-converge duty cycle period.
const THROTTLE_PERIOD: Duration = Duration::from_millis(50);

/// What the source does when the timeout expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimeoutAction {
    /// Give up; the VM keeps running here.
    #[default]
    Cancel,
    /// Pause and switch over now, whatever the downtime.
    Switchover,
}

impl std::str::FromStr for TimeoutAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cancel" => Ok(TimeoutAction::Cancel),
            "switchover" | "force" => Ok(TimeoutAction::Switchover),
            o => Err(format!(
                "timeout action '{o}': expected cancel or switchover"
            )),
        }
    }
}

/// Options of an outgoing migration.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    /// The destination.
    pub to: Endpoint,
    /// Data channels; 0: one per host CPU.
    pub channels: u32,
    /// Compression.
    pub compression: Compression,
    /// Switch over once the rest can be sent within this.
    pub downtime: Duration,
    /// Wire bytes per second, all channels together; None: unlimited.
    pub bandwidth: Option<u64>,
    /// Give up or force switchover after this long.
    pub timeout: Option<Duration>,
    /// What the timeout does.
    pub on_timeout: TimeoutAction,
    /// Throttle the vCPUs when the guest dirties faster than the link.
    pub auto_converge: bool,
    /// Mirror the disks to the destination (shared-nothing) instead of
    /// handing them over on shared storage.
    pub with_storage: bool,
}

impl MigrateOptions {
    /// Defaults: one channel per CPU, auto compression, 50 ms downtime.
    pub fn new(to: Endpoint) -> Self {
        MigrateOptions {
            to,
            channels: 0,
            compression: Compression::Auto,
            downtime: Duration::from_millis(50),
            bandwidth: None,
            timeout: None,
            on_timeout: TimeoutAction::Cancel,
            auto_converge: true,
            with_storage: false,
        }
    }
}

/// Errors of an outgoing migration. After any of them the VM runs here as
/// it did before.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The destination cannot be reached.
    #[error("cannot connect to {to}")]
    Connect {
        /// The destination.
        to: Endpoint,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The destination refused the migration.
    #[error("destination refused the migration: {0}")]
    Refused(String),
    /// The destination speaks another protocol.
    #[error("destination is incompatible")]
    Incompatible(#[source] WireError),
    /// The connection failed.
    #[error("migration connection failed")]
    Wire(#[from] WireError),
    /// The destination failed to take over the VM.
    #[error("destination failed to start the VM: {0}")]
    Destination(String),
    /// The peer stopped reading or answering (network cut, peer hung).
    #[error("the destination did not respond for {0:?}")]
    Stalled(Duration),
    /// The user cancelled.
    #[error("migration cancelled")]
    Cancelled,
    /// The timeout expired.
    #[error("migration timed out after {0:?}")]
    TimedOut(Duration),
    /// The source committed, then never heard that the destination runs
    /// the VM: it may. The VM stays paused here, its disks released.
    #[error(
        "the switchover was committed but the destination never confirmed that it runs the VM; \
         the VM stays paused here (its disks released): resume it only if the destination does not run it"
    )]
    Unconfirmed(#[source] WireError),
    /// The disks could not be handed over (flushed and closed).
    #[error("cannot hand the disks over")]
    Disks(#[from] tern_vmm::devices::DiskError),
    /// The disks could not be mirrored.
    #[error("cannot mirror the disks")]
    Mirror(#[from] MirrorError),
    /// Mirroring disks needs a TCP destination.
    #[error("moving the disks needs a TCP destination (the UNIX hand-over moves memory only)")]
    MirrorNeedsTcp,
    /// Zero-copy needs memfd-backed memory.
    #[error("same-host migration needs guest memory in a memfd (start the VM with --memfd)")]
    NoMemfd,
    /// The VM could not be paused, logged or saved.
    #[error("VM")]
    Vm(#[from] tern_vmm::VmError),
}

impl From<std::io::Error> for MigrateError {
    fn from(e: std::io::Error) -> Self {
        // A socket timeout surfaces as EAGAIN: say what it means.
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return MigrateError::Stalled(IO_TIMEOUT);
        }
        MigrateError::Wire(WireError::Io(e))
    }
}

/// The configuration the destination must match.
pub fn config_check(cfg: &VmConfig) -> ConfigCheck {
    ConfigCheck {
        vcpus: cfg.vcpus,
        memory: cfg.memory,
        regions: tern_vmm::memory::ram_regions(cfg.memory)
            .iter()
            .flat_map(|r| [r.start, r.len])
            .collect(),
        guest_kind: match cfg.guest {
            tern_vmm::Guest::Probe { .. } => "probe".into(),
            tern_vmm::Guest::Linux { .. } => "linux".into(),
        },
        disks: cfg.disks.len() as u32,
    }
}

/// Counters the channel threads add to.
#[derive(Default)]
struct Counters {
    wire: AtomicU64,
    raw: AtomicU64,
    pages: AtomicU64,
    zero: AtomicU64,
    /// Pages sent as deltas.
    delta: AtomicU64,
}

/// Everything the rounds share.
struct Engine<'a> {
    vm: &'a Vm,
    mem: HostMem<'a>,
    opts: &'a MigrateOptions,
    progress: &'a Progress,
    limiter: Option<Limiter>,
    tuner: CodecTuner<'a>,
    counters: Counters,
    started: Instant,
    throttle: AtomicU32,
    /// The disks mirrored with the memory (shared-nothing).
    disks: Option<&'a DiskMirror<'a>>,
    /// Each channel's codecs, kept for the whole migration: its zstd
    /// stream and delta cache follow what the destination has.
    codecs: Vec<Mutex<ChannelCodecs>>,
}

/// Result of one round.
struct RoundStats {
    elapsed: Duration,
    wire: u64,
    raw_pages: u64,
}

/// Migrates `vm` as `opts` says, reporting to `progress`. On success the
/// VM is paused here and runs at the destination: the caller stops it. On
/// error the VM runs here (or stays paused if it was paused before).
pub fn migrate(vm: &Vm, opts: &MigrateOptions, progress: &Progress) -> Result<(), MigrateError> {
    let started = Instant::now();
    let was_paused = vm.state() == RunState::Paused;
    let r = run(vm, opts, progress, started, was_paused);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    match &r {
        Ok(()) => progress.update(|s| {
            s.phase = Phase::Completed;
            s.elapsed_ms = elapsed_ms;
            s.remaining_bytes = 0;
        }),
        Err(e) => {
            // The VM must run on here: undo what the migration changed.
            let _ = vm.stop_dirty_log();
            let mut msg = error_chain(e);
            if !matches!(e, MigrateError::Unconfirmed(_)) {
                // The destination may still be closing the disks it opened.
                match vm.disks().reacquire(Instant::now() + REACQUIRE_TIMEOUT) {
                    Ok(()) => {
                        if !was_paused && vm.state() == RunState::Paused {
                            let _ = vm.resume();
                        }
                    }
                    Err(d) => {
                        msg.push_str(&format!(
                            "; and the VM stays paused here: cannot take its disks back: {}",
                            error_chain(&d)
                        ));
                    }
                }
            }
            let phase = match e {
                MigrateError::Cancelled | MigrateError::TimedOut(_) => Phase::Cancelled,
                _ => Phase::Failed,
            };
            progress.update(|s| {
                s.phase = phase;
                s.elapsed_ms = elapsed_ms;
                s.error = Some(msg);
                s.throttle_percent = 0;
            });
        }
    }
    r
}

/// One line: an error and its sources (see [`tern_error::chain`]).
pub use tern_error::chain as error_chain;

fn connect(to: &Endpoint) -> Result<Stream, MigrateError> {
    let s = Stream::connect(to, IO_TIMEOUT).map_err(|source| MigrateError::Connect {
        to: to.clone(),
        source,
    })?;
    s.set_timeouts(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn run(
    vm: &Vm,
    opts: &MigrateOptions,
    progress: &Progress,
    started: Instant,
    was_paused: bool,
) -> Result<(), MigrateError> {
    let mem = HostMem::of(&vm.ram().mem);
    let memfd = vm.ram().memfd.as_ref();
    let zero_copy = matches!(opts.to, Endpoint::Unix(_));
    if zero_copy && memfd.is_none() {
        return Err(MigrateError::NoMemfd);
    }
    if zero_copy && opts.with_storage && !vm.disks().is_empty() {
        return Err(MigrateError::MirrorNeedsTcp);
    }
    // Mirrored disks: the source only reads its images and stops their
    // dirty logs when `mirror` goes, whatever the outcome.
    let (mirror, offers) = if opts.with_storage && !vm.disks().is_empty() {
        let (m, o) = DiskMirror::new(vm)?;
        (Some(m), o)
    } else {
        (None, Vec::new())
    };
    let channels = if zero_copy {
        0
    } else if opts.channels == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
    } else {
        opts.channels
    };
    progress.update(|s| {
        s.phase = Phase::Setup;
        s.memory_bytes = mem.size();
        s.channels = channels;
        s.zero_copy = zero_copy;
        s.compression = "none".into();
    });

    // Handshake on the control connection; an older destination refuses
    // our version and names its own: offer that one (see `version`). The
    // hello waits for the answer: a refusing destination closes at once,
    // and unread bytes would make that close a reset, which can beat its
    // answer to us.
    let session = session_id();
    let codec_offer = crate::stream_codec::offer();
    let hello = wire::Hello {
        session,
        channels,
        config: Some(config_check(vm.config())),
        zero_copy,
        product: env!("CARGO_PKG_VERSION").into(),
        disks: offers,
        codecs: (!zero_copy).then(|| codec_offer.clone()),
    };
    let mut offer = Version::NEWEST;
    let (mut ctl, version) = loop {
        let mut ctl = connect(&opts.to)?;
        wire::write_preamble(&mut ctl, offer.get())?;
        let peer = wire::read_preamble(&mut ctl)?;
        match version::judge(offer, peer) {
            Ok(Reply::Agreed(v)) => {
                wire::write_msg(&mut ctl, Kind::Hello, &hello)?;
                break (ctl, v);
            }
            Ok(Reply::Older(v)) => offer = v,
            Err(e) => {
                let reason = e.to_string();
                let _ = wire::write_msg(&mut ctl, Kind::Abort, &wire::Abort { reason });
                return Err(MigrateError::Incompatible(e));
            }
        }
    };
    progress.update(|s| s.protocol = version.get());
    let welcome: wire::Welcome = wire::read_msg(&mut ctl, Kind::Welcome, "welcome")?;
    if !welcome.accepted {
        return Err(MigrateError::Refused(welcome.error));
    }
    if let Some(m) = &mirror {
        if let Err(e) = DiskMirror::check_acceptance(welcome.disks.as_ref()) {
            let _ = wire::write_msg(
                &mut ctl,
                Kind::Abort,
                &wire::Abort {
                    reason: e.to_string(),
                },
            );
            return Err(e.into());
        }
        progress.update(|s| s.disk_total = m.total());
    }

    if zero_copy {
        return switchover_zero_copy(vm, ctl, memfd.expect("checked"), progress, was_paused);
    }

    let mut data = Vec::new();
    for index in 0..channels {
        let mut s = connect(&opts.to)?;
        wire::write_preamble(&mut s, version.get())?;
        wire::write_msg(&mut s, Kind::DataHello, &wire::DataHello { session, index })?;
        data.push(s);
    }

    let codecs = crate::stream_codec::agreed(&codec_offer, welcome.codecs.as_ref());
    let stream = codecs.stream_window_log > 0;
    let forced = match opts.compression {
        // zstd is the stream where the destination takes it (the same
        // level, with the channel's history as its window).
        Compression::Force(Codec::Zstd | Codec::StreamZstd) if stream => Some(Codec::StreamZstd),
        Compression::Force(Codec::StreamZstd) => Some(Codec::Zstd),
        Compression::Force(c) => Some(c),
        Compression::Auto => None,
    };
    let speeds = if forced.is_none() {
        let samples = mem.samples(64);
        let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
        compress::calibrate(&refs, codecs.stream_window_log)
    } else {
        Vec::new()
    };
    let cache = if codecs.delta {
        crate::delta::DEFAULT_CACHE_BYTES / u64::from(channels.max(1))
    } else {
        0
    };
    let builders = (0..channels)
        .map(|_| ChannelCodecs::new(codecs.stream_window_log, cache).map(Mutex::new))
        .collect::<std::io::Result<Vec<_>>>()?;
    let engine = Engine {
        vm,
        mem,
        opts,
        progress,
        limiter: opts.bandwidth.map(Limiter::new),
        tuner: CodecTuner::new(
            progress,
            opts.bandwidth,
            forced.unwrap_or(Codec::None),
            speeds,
        ),
        counters: Counters::default(),
        started,
        throttle: AtomicU32::new(0),
        disks: mirror.as_ref(),
        codecs: builders,
    };
    let throttle_stop = std::sync::atomic::AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        if !was_paused && opts.auto_converge {
            s.spawn(|| engine.throttle_loop(&throttle_stop));
        }
        let r = engine.precopy(&mut data, forced.is_none(), &throttle_stop);
        throttle_stop.store(true, Ordering::SeqCst);
        r
    });
    let pending = match result {
        Ok(p) => p,
        Err(e) => {
            abort(&mut ctl, &data, &e);
            return Err(e);
        }
    };
    match engine.switchover(&mut ctl, &mut data, pending, was_paused) {
        Ok(()) => Ok(()),
        Err(e) => {
            abort(&mut ctl, &data, &e);
            Err(e)
        }
    }
}

fn session_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
}

impl Engine<'_> {
    fn check_timeout(&self) -> Option<TimeoutAction> {
        match self.opts.timeout {
            Some(t) if self.started.elapsed() > t => Some(self.opts.on_timeout),
            _ => None,
        }
    }

    /// Duty-cycles the vCPUs while the throttle is set.
    fn throttle_loop(&self, stop: &std::sync::atomic::AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let pct = self.throttle.load(Ordering::Relaxed).min(MAX_THROTTLE);
            if pct == 0 {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let held = THROTTLE_PERIOD * pct / 100;
            if self.vm.pause().is_ok() {
                std::thread::sleep(held);
                let _ = self.vm.resume();
            }
            std::thread::sleep(THROTTLE_PERIOD - held);
        }
    }

    /// Precopy rounds until the rest fits the downtime target. Returns the
    /// dirty windows not sent yet (read from the log, which is now clear).
    fn precopy(
        &self,
        data: &mut [Stream],
        auto: bool,
        throttle_stop: &std::sync::atomic::AtomicBool,
    ) -> Result<Vec<Window>, MigrateError> {
        self.progress.update(|s| s.phase = Phase::Precopy);
        self.vm.start_dirty_log()?;
        let mut disk_dirty = match self.disks {
            Some(m) => m.start()?,
            None => 0,
        };
        let mut windows = self.mem.all_windows();
        let mut round = 0u32;
        let mut last_dirty: Option<u64> = None;
        let mut wire_per_page = PAGE as f64;
        let mut prev_sent_bytes = 0u64;
        // Rounds at the highest throttle that still did not converge.
        let mut stuck = 0;
        loop {
            let disk_wire0 = self.disks.map_or(0, DiskMirror::wire);
            let st = self.send_round(data, &windows, round == 0, auto, false)?;
            round += 1;
            // Disk chunks share the channels: only memory's wire bytes
            // say what a page costs.
            let disk_wire = self.disks.map_or(0, DiskMirror::wire) - disk_wire0;
            let mem_wire = st.wire.saturating_sub(disk_wire);
            if st.raw_pages > 0 {
                wire_per_page = (mem_wire as f64 / st.raw_pages as f64).max(16.0);
            }
            let log = self.vm.read_dirty_log()?;
            windows = dirty_windows(&log);
            let dirty = count_pages(&windows);
            let disk_ratio = if disk_dirty > 0 && disk_wire > 0 {
                (disk_wire as f64 / disk_dirty as f64).min(1.0)
            } else {
                1.0
            };
            disk_dirty = match self.disks {
                Some(m) => m.next_round()?,
                None => 0,
            };
            let dirty_bytes = dirty * PAGE as u64 + disk_dirty;
            let dirty_rate = dirty_bytes as f64 / st.elapsed.as_secs_f64().max(1e-3);
            let bw = self.tuner.bandwidth();
            let est_wire = dirty as f64 * wire_per_page + disk_dirty as f64 * disk_ratio;
            let est = Duration::from_secs_f64(est_wire / bw.max(1.0));
            let downtime = est + FIXED_DOWNTIME;
            let throttle = self.throttle.load(Ordering::Relaxed);
            self.progress.update(|s| {
                s.rounds = round;
                s.dirty_rate = dirty_rate;
                s.remaining_bytes = dirty_bytes;
                s.estimated_remaining_ms = est.as_secs_f64() * 1e3;
                s.expected_downtime_ms = downtime.as_secs_f64() * 1e3;
                s.bandwidth = bw;
                s.throttle_percent = throttle;
                s.elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
                if let Some(m) = self.disks {
                    s.disk_sent = m.sent();
                    s.disk_remaining = disk_dirty;
                }
            });
            if self.progress.cancelled() {
                return Err(MigrateError::Cancelled);
            }
            if downtime <= self.opts.downtime || (dirty == 0 && disk_dirty == 0) {
                break;
            }
            match self.check_timeout() {
                Some(TimeoutAction::Cancel) => {
                    return Err(MigrateError::TimedOut(
                        self.opts.timeout.unwrap_or_default(),
                    ))
                }
                Some(TimeoutAction::Switchover) => break,
                None => {}
            }
            // Not converging: the guest dirtied more than half of what the
            // link moved in the last round. Hold the vCPUs longer.
            if self.opts.auto_converge
                && round >= 2
                && est_wire > 0.5 * prev_sent_bytes.max(st.wire) as f64
                && last_dirty.is_some_and(|l| dirty * 10 >= l * 8)
            {
                if throttle >= MAX_THROTTLE {
                    // Even a nearly stopped guest outruns the link: finish
                    // with a longer pause rather than never.
                    stuck += 1;
                    if stuck >= 3 {
                        break;
                    }
                }
                let t = if throttle == 0 {
                    20
                } else {
                    (throttle + 10).min(MAX_THROTTLE)
                };
                self.throttle.store(t, Ordering::Relaxed);
            }
            last_dirty = Some(dirty);
            prev_sent_bytes = st.wire;
        }
        // What the socket buffers still hold would be sent while paused,
        // and what the destination holds unapplied applied while paused.
        self.drain(data)?;
        self.sync(data)?;
        throttle_stop.store(true, Ordering::SeqCst);
        Ok(windows)
    }

    /// Sends one round over every channel; the calling thread watches
    /// progress, the timeout, cancel, and (auto) the codec meanwhile.
    /// `paused`: the last round, inside the downtime: the watcher returns
    /// the moment the channels are done instead of at its next 20 ms tick.
    fn send_round(
        &self,
        data: &mut [Stream],
        windows: &[Window],
        first: bool,
        auto: bool,
        paused: bool,
    ) -> Result<RoundStats, MigrateError> {
        let n = data.len() as u64;
        let t0 = Instant::now();
        let wire0 = self.counters.wire.load(Ordering::Relaxed);
        let raw0 = self.counters.raw.load(Ordering::Relaxed);
        let done = AtomicU32::new(0);
        // Signalled when a channel is done (the lock orders it with the
        // watcher's check of `done`).
        let finished = (Mutex::new(()), std::sync::Condvar::new());
        let broken = std::sync::atomic::AtomicBool::new(false);
        // Second handles, to wake channels blocked on a dead peer.
        let wakers: Vec<Stream> = data.iter().filter_map(|d| d.try_clone().ok()).collect();
        let result = std::thread::scope(|s| {
            let handles: Vec<_> = data
                .iter_mut()
                .enumerate()
                .map(|(i, stream)| {
                    let (done, broken, finished) = (&done, &broken, &finished);
                    s.spawn(move || {
                        let r = self.send_channel(stream, windows, i as u64, n, first);
                        if r.is_err() {
                            broken.store(true, Ordering::SeqCst);
                        }
                        let _g = finished.0.lock().unwrap_or_else(|p| p.into_inner());
                        done.fetch_add(1, Ordering::SeqCst);
                        finished.1.notify_all();
                        r
                    })
                })
                .collect();
            let mut last = (Instant::now(), wire0, raw0);
            let mut failed = false;
            while done.load(Ordering::SeqCst) < n as u32 {
                if paused {
                    let g = finished.0.lock().unwrap_or_else(|p| p.into_inner());
                    if done.load(Ordering::SeqCst) < n as u32 {
                        let _ = finished.1.wait_timeout(g, Duration::from_millis(20));
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let now = Instant::now();
                let wire = self.counters.wire.load(Ordering::Relaxed);
                let raw = self.counters.raw.load(Ordering::Relaxed);
                let dt = now.duration_since(last.0);
                if dt >= Duration::from_millis(100) {
                    let rate = (wire - last.1) as f64 / dt.as_secs_f64();
                    if wire > last.1 {
                        self.tuner.observe_link(rate, self.tuner.codec());
                    }
                    if auto {
                        let raw_rate = (raw - last.2) as f64 / dt.as_secs_f64();
                        // Half the CPUs: the rest send, and run the guest.
                        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
                        self.tuner
                            .rechoose((n as usize).min(cpus / 2).max(1), raw_rate, raw);
                    }
                    last = (now, wire, raw);
                    self.progress.update(|s| {
                        s.bytes_sent = wire;
                        if let Some(m) = self.disks {
                            s.disk_sent = m.sent();
                        }
                        s.pages_sent = self.counters.pages.load(Ordering::Relaxed);
                        s.zero_pages = self.counters.zero.load(Ordering::Relaxed);
                        s.bandwidth = self.tuner.bandwidth();
                        s.elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
                    });
                }
                let give_up = self.progress.cancelled()
                    || self.check_timeout() == Some(TimeoutAction::Cancel);
                if give_up || broken.load(Ordering::SeqCst) {
                    failed = give_up;
                    for w in &wakers {
                        w.shutdown();
                    }
                    break;
                }
            }
            let mut first_err = None;
            for h in handles {
                if let Ok(Err(e)) | Err(e) = h
                    .join()
                    .map_err(|_| MigrateError::Destination("sender thread panicked".into()))
                {
                    first_err.get_or_insert(e);
                }
            }
            if failed {
                // Closing the sockets made the channels fail: report why.
                first_err = Some(if self.progress.cancelled() {
                    MigrateError::Cancelled
                } else {
                    MigrateError::TimedOut(self.opts.timeout.unwrap_or_default())
                });
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok(()),
            }
        });
        result?;
        let elapsed = t0.elapsed();
        let wire = self.counters.wire.load(Ordering::Relaxed) - wire0;
        let raw = self.counters.raw.load(Ordering::Relaxed) - raw0;
        // Short rounds are dominated by latency; only long ones measure.
        if elapsed > Duration::from_millis(30) && wire > 0 {
            self.tuner
                .observe_link(wire as f64 / elapsed.as_secs_f64(), self.tuner.codec());
        }
        self.progress.update(|s| {
            s.bytes_sent = self.counters.wire.load(Ordering::Relaxed);
            s.pages_sent = self.counters.pages.load(Ordering::Relaxed);
            s.zero_pages = self.counters.zero.load(Ordering::Relaxed);
            if let Some(m) = self.disks {
                s.disk_sent = m.sent();
            }
        });
        Ok(RoundStats {
            elapsed,
            wire,
            raw_pages: raw / PAGE as u64,
        })
    }

    /// Sends the windows that belong to channel `index` of `n`: a window's
    /// channel depends only on its address, so a page resent in a later
    /// round travels the same connection and arrives after its old copy.
    fn send_channel(
        &self,
        stream: &mut Stream,
        windows: &[Window],
        index: u64,
        n: u64,
        first: bool,
    ) -> Result<(), MigrateError> {
        let mut slot = self.codecs[index as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A round that fails leaves the slot without stream or cache,
        // which is consistent too: nothing more refers to them.
        let mut builder = ChunkBuilder::resume(std::mem::take(&mut *slot));
        let fd = std::os::fd::AsFd::as_fd(&*stream);
        for &(base, bits) in windows {
            if (base / WINDOW_BYTES) % n != index {
                continue;
            }
            if self.progress.cancelled() {
                return Err(MigrateError::Cancelled);
            }
            let codec = self.tuner.codec();
            let Some(st) = builder.build(&self.mem, base, bits, first, codec) else {
                continue;
            };
            if let Some(l) = &self.limiter {
                l.take(st.wire);
            }
            builder.write_to(fd)?;
            self.counters.wire.fetch_add(st.wire, Ordering::Relaxed);
            self.counters.raw.fetch_add(st.raw, Ordering::Relaxed);
            self.counters.pages.fetch_add(st.pages, Ordering::Relaxed);
            self.counters.zero.fetch_add(st.zero, Ordering::Relaxed);
            self.counters.delta.fetch_add(st.delta, Ordering::Relaxed);
        }
        *slot = builder.suspend();
        drop(slot);
        if let Some(m) = self.disks {
            m.send_channel(
                stream,
                index,
                n,
                &|| self.tuner.codec(),
                &|| self.progress.cancelled(),
                &|bytes| {
                    if let Some(l) = &self.limiter {
                        l.take(bytes);
                    }
                    self.counters.wire.fetch_add(bytes, Ordering::Relaxed);
                },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_actions_parse() {
        assert_eq!("cancel".parse(), Ok(TimeoutAction::Cancel));
        assert_eq!("switchover".parse(), Ok(TimeoutAction::Switchover));
        assert!("explode".parse::<TimeoutAction>().is_err());
    }
}
