//! The destination side: accepts a migration into fresh memory (or a
//! handed-over memfd) and returns the state to restore. The caller builds
//! and starts the VM, then [`Received::confirm`]s.

use std::io;
use std::time::{Duration, Instant};

use tern_vmm::memory::{Backing, GuestRam, MemoryError, MemorySource, PreparedRam};
use tern_vmm::VmState;

use crate::disk_receive::{DiskApplier, DiskReceiveError, DiskTargets};
use crate::pages::{ChunkApplier, ChunkError, DataFrame, HostMem};
use crate::transport::{self, Listener, Stream};
use crate::version::{self, Version};
use crate::wire::{self, ConfigCheck, Kind, WireError};

/// How long the source may take to open its data channels, and to send
/// each part of the handshake.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence on a data channel longer than this means the source is gone
/// (it sends every round back to back; the final round follows at once).
const DATA_TIMEOUT: Duration = Duration::from_secs(60);
/// The source commits as soon as it reads the destination's ready
/// outcome; longer silence means it is gone (and resumed its own copy or
/// will, once it hears nothing).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of an incoming migration. The attempt is over; the listener can
/// take another.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The connection failed or a message is malformed.
    #[error("migration connection failed")]
    Wire(#[from] WireError),
    /// This side refused the source.
    #[error("refused the source: {0}")]
    Refused(String),
    /// The source gave up.
    #[error("the source aborted the migration: {0}")]
    Aborted(String),
    /// A data channel failed.
    #[error("data channel {index}")]
    Channel {
        /// Channel index.
        index: u32,
        /// Why.
        #[source]
        source: ChunkError,
    },
    /// A data channel's disk chunk failed.
    #[error("data channel {index}")]
    Disk {
        /// Channel index.
        index: u32,
        /// Why.
        #[source]
        source: DiskReceiveError,
    },
    /// Guest memory could not be set up.
    #[error("cannot set up guest memory")]
    Memory(#[from] MemoryError),
    /// The VM state does not decode.
    #[error("bad VM state")]
    State(#[source] prost::DecodeError),
    /// The handed-over memory file is wrong.
    #[error("handed-over memory is {have} bytes, the VM needs {need}")]
    MemfdSize {
        /// Its size.
        have: u64,
        /// Needed.
        need: u64,
    },
}

impl From<io::Error> for ReceiveError {
    fn from(e: io::Error) -> Self {
        ReceiveError::Wire(WireError::Io(e))
    }
}

/// A completed transfer, waiting for the VM to be started.
pub struct Received {
    /// vCPU and device state.
    pub state: VmState,
    /// Guest memory for the VM: the memfd handed over on the same host,
    /// or the RAM the stream was written into.
    pub memory: MemorySource,
    /// Keep the VM paused (it was paused at the source).
    pub paused: bool,
    /// Memory came as a memfd (same host), nothing was copied.
    pub zero_copy: bool,
    /// Precopy rounds the source ran.
    pub rounds: u32,
    /// Pages written here.
    pub pages: u64,
    /// The disks mirrored here (shared-nothing), unnamed until
    /// [`DiskTargets::commit`]; `None`: shared storage.
    pub disks: Option<DiskTargets>,
    ctl: Stream,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("paused", &self.paused)
            .field("zero_copy", &self.zero_copy)
            .field("rounds", &self.rounds)
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

impl Received {
    /// Tells the source the VM is built here (memory, state, disks open)
    /// and waits for its commit. `Ok`: the source will never resume its
    /// copy: start the VM, then [`Received::confirm`]. `Err`: the source
    /// gave up, or is gone: discard the VM (it never ran), releasing its
    /// disks, and wait for the next attempt.
    pub fn await_commit(&mut self) -> Result<(), ReceiveError> {
        wire::write_msg(
            &mut self.ctl,
            Kind::Outcome,
            &wire::Outcome {
                ready: true,
                error: String::new(),
            },
        )?;
        // The source answers at once; a silent one has gone away.
        self.ctl.set_timeouts(Some(COMMIT_TIMEOUT))?;
        let mut buf = Vec::new();
        match wire::read_frame(&mut self.ctl, &mut buf)? {
            Kind::Commit => Ok(()),
            Kind::Abort => Err(aborted(&buf)),
            got => Err(WireError::Unexpected {
                expected: "commit",
                got,
            }
            .into()),
        }
    }

    /// Tells the source the VM runs here, after [`Received::await_commit`]
    /// and the start. The source committed already, so an error only
    /// means it will not learn it from us: the VM runs on regardless.
    pub fn confirm(mut self) -> io::Result<()> {
        wire::write_frame(&mut self.ctl, Kind::Running, &[])
    }

    /// Tells the source the VM could not be built here: it resumes.
    pub fn fail(mut self, error: &str) {
        let _ = wire::write_msg(
            &mut self.ctl,
            Kind::Outcome,
            &wire::Outcome {
                ready: false,
                error: error.into(),
            },
        );
    }
}

/// Guest memory made ready for a migration streamed over TCP.
pub struct IncomingMemory {
    ram: GuestRam,
    prefault: Option<Prefault>,
}

impl IncomingMemory {
    /// `size` bytes of guest RAM backed as `backing`. `prealloc`: every
    /// page is allocated and mapped before this returns (QEMU's
    /// `prealloc=on`), so the transfer faults nothing in; otherwise, for
    /// a memfd, a background thread allocates pages while the worker
    /// waits for the source, until the data starts.
    pub fn new(size: u64, backing: Backing, prealloc: bool) -> Result<Self, ReceiveError> {
        let ram = GuestRam::new(size, backing)?;
        if prealloc {
            ram.populate()?;
            return Ok(IncomingMemory {
                ram,
                prefault: None,
            });
        }
        let prefault = prefault_in_background(&ram, size);
        Ok(IncomingMemory { ram, prefault })
    }
}

/// What the destination offers beyond the VM's configuration.
#[derive(Clone, Debug, Default)]
pub struct ReceiveOptions {
    /// Where mirrored disks are created (shared-nothing); `None`: this
    /// side refuses a source that offers disks.
    pub dest_dir: Option<std::path::PathBuf>,
}

/// Waits for one migration on `listener` for a VM configured as `expect`.
/// Memory streamed over TCP goes into `memory` (made here when `None`;
/// a same-host hand-over brings its own). `log` gets one line per notable
/// event. Takes no mirrored disks (see [`receive_with`]).
pub fn receive(
    listener: &Listener,
    expect: &ConfigCheck,
    memory: Option<IncomingMemory>,
    log: &dyn Fn(&str),
) -> Result<Received, ReceiveError> {
    receive_with(listener, expect, memory, &ReceiveOptions::default(), log)
}

/// [`receive`], with the destination's options (where mirrored disks go).
pub fn receive_with(
    listener: &Listener,
    expect: &ConfigCheck,
    memory: Option<IncomingMemory>,
    opts: &ReceiveOptions,
    log: &dyn Fn(&str),
) -> Result<Received, ReceiveError> {
    let memory = match (listener, memory) {
        (Listener::Tcp(_), None) => {
            Some(IncomingMemory::new(expect.memory, Backing::Memfd, false)?)
        }
        (Listener::Tcp(_), m) => m,
        (Listener::Unix(..), _) => None,
    };
    let mut ctl = listener.accept()?;
    ctl.set_timeouts(Some(SETUP_TIMEOUT))?;
    // Answer with the session's version (ours when refusing) before
    // judging, so a source of another version learns what we speak.
    let offer = version::answer(wire::read_preamble(&mut ctl)?);
    wire::write_preamble(&mut ctl, offer.preamble)?;
    let refuse = |ctl: &mut Stream, why: String| {
        let _ = wire::write_msg(
            ctl,
            Kind::Welcome,
            &wire::Welcome {
                accepted: false,
                error: why.clone(),
                disks: None,
                codecs: None,
            },
        );
        ReceiveError::Refused(why)
    };
    let version = match offer.verdict {
        Ok(v) => v,
        Err(e) => return Err(refuse(&mut ctl, e.to_string())),
    };
    let mut buf = Vec::new();
    let kind = wire::read_frame(&mut ctl, &mut buf)?;
    if kind != Kind::Hello {
        return Err(refuse(
            &mut ctl,
            format!("expected a hello, got {kind:?} (a data channel of an old session?)"),
        ));
    }
    let hello: wire::Hello =
        prost::Message::decode(buf.as_slice()).map_err(|source| WireError::Decode {
            what: "hello",
            source,
        })?;
    let theirs = hello.config.clone().unwrap_or_default();
    if let Some(m) = theirs.mismatch(expect) {
        return Err(refuse(&mut ctl, format!("VM configuration differs: {m}")));
    }
    let unix = matches!(listener, Listener::Unix(..));
    if hello.zero_copy && !unix {
        return Err(refuse(&mut ctl, "zero-copy needs a UNIX socket".into()));
    }
    if !hello.zero_copy && (hello.channels == 0 || hello.channels > 256) {
        return Err(refuse(
            &mut ctl,
            format!("{} data channels", hello.channels),
        ));
    }
    // Mirrored disks are created (unnamed) before the source is told
    // yes: a refusal costs it nothing.
    let disks =
        match (&hello.disks[..], &opts.dest_dir) {
            ([], _) => None,
            (_, _) if hello.zero_copy => {
                return Err(refuse(
                    &mut ctl,
                    "disks cannot move over a UNIX socket".into(),
                ))
            }
            (_, None) => return Err(refuse(
                &mut ctl,
                "this destination takes no disks (start it with a directory for them, --dest-dir)"
                    .into(),
            )),
            (offers, Some(dir)) => match DiskTargets::create(dir, offers, expect.disks) {
                Ok(t) => Some(t),
                Err(e) => return Err(refuse(&mut ctl, crate::sender::error_chain(&e))),
            },
        };
    let codecs = if hello.zero_copy {
        None
    } else {
        crate::stream_codec::accept(hello.codecs.as_ref(), hello.channels, expect.memory)
    };
    wire::write_msg(
        &mut ctl,
        Kind::Welcome,
        &wire::Welcome {
            accepted: true,
            error: String::new(),
            disks: disks.as_ref().map(DiskTargets::acceptance),
            codecs: codecs.clone(),
        },
    )?;
    log(&format!(
        "migration from Tern {} accepted (protocol {version}): {}",
        hello.product,
        if hello.zero_copy {
            "same-host memfd hand-over".to_string()
        } else {
            format!("{} channels", hello.channels)
        }
    ));
    if !hello.disks.is_empty() {
        let bytes: u64 = hello.disks.iter().map(|d| d.allocated).sum();
        log(&format!(
            "mirroring {} disks here ({} MiB allocated at the source): {}",
            hello.disks.len(),
            bytes >> 20,
            disks
                .as_ref()
                .map(|d| d.acceptance().paths.join(", "))
                .unwrap_or_default()
        ));
    }
    if let Some(c) = &codecs {
        log(&format!(
            "migration codecs: zstd stream window 2^{} (0: off), delta {}",
            c.stream_window_log, c.delta
        ));
    }
    if hello.zero_copy {
        return receive_memfd(ctl, expect);
    }
    let memory = match memory {
        Some(m) if m.ram.size() == expect.memory => m,
        _ => IncomingMemory::new(expect.memory, Backing::Memfd, false)?,
    };
    let agreed = Agreed {
        version,
        disks,
        codecs: codecs.unwrap_or_default(),
    };
    receive_stream(listener, ctl, &hello, agreed, memory, log)
}

fn receive_memfd(mut ctl: Stream, expect: &ConfigCheck) -> Result<Received, ReceiveError> {
    // The source pauses first, then hands over; wait as long as a round.
    ctl.set_timeouts(Some(DATA_TIMEOUT))?;
    let memory = transport::recv_fd(ctl.as_unix().expect("checked: UNIX listener"))?;
    let have = memory.metadata()?.len();
    if have < expect.memory {
        return Err(ReceiveError::MemfdSize {
            have,
            need: expect.memory,
        });
    }
    let sw = read_switchover(&mut ctl)?;
    Ok(Received {
        state: decode_state(&sw)?,
        memory: MemorySource::Memfd(std::sync::Arc::new(memory)),
        paused: sw.paused,
        zero_copy: true,
        rounds: 0,
        pages: 0,
        disks: None,
        ctl,
    })
}

fn read_switchover(ctl: &mut Stream) -> Result<wire::Switchover, ReceiveError> {
    let mut buf = Vec::new();
    match wire::read_frame(ctl, &mut buf)? {
        Kind::Switchover => prost::Message::decode(buf.as_slice()).map_err(|source| {
            ReceiveError::Wire(WireError::Decode {
                what: "switchover",
                source,
            })
        }),
        Kind::Abort => Err(aborted(&buf)),
        got => Err(WireError::Unexpected {
            expected: "switchover",
            got,
        }
        .into()),
    }
}

/// The source's `Abort` (a payload that does not decode still means it
/// gave up).
fn aborted(payload: &[u8]) -> ReceiveError {
    let a: wire::Abort = prost::Message::decode(payload).unwrap_or_default();
    ReceiveError::Aborted(a.reason)
}

fn decode_state(sw: &wire::Switchover) -> Result<VmState, ReceiveError> {
    prost::Message::decode(sw.vm_state.as_slice()).map_err(ReceiveError::State)
}

/// Accepts the data channels of `hello`'s session.
fn accept_channels(
    listener: &Listener,
    hello: &wire::Hello,
    version: Version,
) -> Result<Vec<Option<Stream>>, ReceiveError> {
    let mut chans: Vec<Option<Stream>> = (0..hello.channels).map(|_| None).collect();
    let deadline = Instant::now() + SETUP_TIMEOUT;
    set_nonblocking(listener, true)?;
    let r = (|| {
        while chans.iter().any(Option::is_none) {
            let mut s = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(ReceiveError::Wire(WireError::Io(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "data channels did not connect",
                        ))));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            set_stream_blocking(&s)?;
            s.set_timeouts(Some(SETUP_TIMEOUT))?;
            version::check_channel(version, wire::read_preamble(&mut s)?)?;
            let dh: wire::DataHello = wire::read_msg(&mut s, Kind::DataHello, "data hello")?;
            match chans.get_mut(dh.index as usize) {
                Some(slot @ None) if dh.session == hello.session => *slot = Some(s),
                // A channel of another session, or a duplicate: drop it.
                _ => {}
            }
        }
        Ok(())
    })();
    set_nonblocking(listener, false)?;
    r.map(|()| chans)
}

fn set_nonblocking(l: &Listener, on: bool) -> io::Result<()> {
    match l {
        Listener::Tcp(t) => t.set_nonblocking(on),
        Listener::Unix(u, _) => u.set_nonblocking(on),
    }
}

fn set_stream_blocking(s: &Stream) -> io::Result<()> {
    match s {
        Stream::Tcp(t) => t.set_nonblocking(false),
        Stream::Unix(u) => u.set_nonblocking(false),
    }
}

/// Stops the background allocation of [`prefault_in_background`] when
/// dropped.
struct Prefault(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for Prefault {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Bytes the background allocation takes at a time.
const PREFAULT_STEP: u64 = 32 << 20;

/// Allocates the pages of memfd-backed `ram` in a background thread while
/// the worker waits for the source, until the returned guard is dropped
/// (when the data starts: from then on the receiving threads allocate
/// what they write, and a second allocator would only compete with them
/// for the CPU and the file's locks).
fn prefault_in_background(ram: &GuestRam, size: u64) -> Option<Prefault> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = ram.memfd.as_ref().and_then(|f| f.try_clone().ok())?;
    let guard = Prefault(stop.clone());
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let mut off = 0;
        while off < size && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let len = PREFAULT_STEP.min(size - off);
            // SAFETY: plain syscall on an fd we own; allocating pages
            // of a memfd never changes data already written.
            unsafe { libc::fallocate(f.as_raw_fd(), 0, off as libc::off_t, len as libc::off_t) };
            off += len;
        }
    });
    Some(guard)
}

/// What the handshake agreed beyond the memory itself.
struct Agreed {
    version: Version,
    disks: Option<DiskTargets>,
    codecs: wire::Codecs,
}

fn receive_stream(
    listener: &Listener,
    mut ctl: Stream,
    hello: &wire::Hello,
    agreed: Agreed,
    memory: IncomingMemory,
    log: &dyn Fn(&str),
) -> Result<Received, ReceiveError> {
    let Agreed {
        version,
        disks,
        codecs,
    } = agreed;
    let chans = accept_channels(listener, hello, version)?;
    let IncomingMemory { ram, prefault } = memory;
    drop(prefault);
    let mem = HostMem::of(&ram.mem);
    let wakers: Vec<Stream> = chans
        .iter()
        .flatten()
        .filter_map(|s| s.try_clone().ok())
        .collect();
    // The control connection is quiet until switchover.
    ctl.set_timeouts(None)?;
    let result = std::thread::scope(|sc| {
        let handles: Vec<_> = chans
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let (mem, codecs) = (&mem, &codecs);
                let disks = disks.as_ref();
                let s = s.expect("every channel connected");
                sc.spawn(move || -> Result<(u64, u64), ReceiveError> {
                    s.set_timeouts(Some(DATA_TIMEOUT))?;
                    let mut applier =
                        ChunkApplier::with_codecs(codecs.stream_window_log, codecs.delta)?;
                    let mut disk_applier = DiskApplier::default();
                    let mut pages = 0;
                    let mut reply = s.try_clone()?;
                    let fd = std::os::fd::AsFd::as_fd(&s);
                    loop {
                        match applier.next(mem, fd) {
                            Ok(DataFrame::Chunk(p)) => pages += p,
                            Ok(DataFrame::Disk(len)) => {
                                let disk_err = |source| ReceiveError::Disk {
                                    index: i as u32,
                                    source,
                                };
                                let t = disks.ok_or_else(|| {
                                    disk_err(DiskReceiveError::Offer(
                                        "disk data, but no disks were offered".into(),
                                    ))
                                })?;
                                t.apply(fd, len, &mut disk_applier).map_err(disk_err)?;
                            }
                            Ok(DataFrame::Done) => return Ok((pages, applier.delta_pages())),
                            Ok(DataFrame::Sync) => {
                                // Disk data so far made durable now, not
                                // inside the pause.
                                if let Some(t) = disks {
                                    t.flush().map_err(|source| ReceiveError::Disk {
                                        index: i as u32,
                                        source,
                                    })?;
                                }
                                wire::write_frame(&mut reply, Kind::Sync, &[]).map_err(|e| {
                                    ReceiveError::Channel {
                                        index: i as u32,
                                        source: WireError::Io(e).into(),
                                    }
                                })?
                            }
                            Err(source) => {
                                return Err(ReceiveError::Channel {
                                    index: i as u32,
                                    source,
                                })
                            }
                        }
                    }
                })
            })
            .collect();
        let sw = read_switchover(&mut ctl);
        if sw.is_err() {
            // Wake the channels: the source is gone or gave up.
            for w in &wakers {
                w.shutdown();
            }
        }
        let (mut pages, mut deltas) = (0, 0);
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok((p, d))) => {
                    pages += p;
                    deltas += d;
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err
                        .get_or_insert(ReceiveError::Aborted("receiver thread panicked".into()));
                }
            }
        }
        let sw = sw?;
        match first_err {
            Some(e) => Err(e),
            None => Ok((sw, pages, deltas)),
        }
    });
    let (sw, pages, deltas) = result?;
    log(&format!(
        "received {pages} pages in {} rounds, {deltas} of them as deltas",
        sw.rounds
    ));
    let state = decode_state(&sw)?;
    Ok(Received {
        state,
        // The VM takes this very mapping: nothing is mapped or unmapped
        // again during the switchover.
        memory: MemorySource::Prepared(PreparedRam::new(ram)),
        paused: sw.paused,
        zero_copy: false,
        rounds: sw.rounds,
        pages,
        disks,
        ctl,
    })
}
