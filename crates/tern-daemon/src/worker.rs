//! VM workers seen from the daemon: what a worker binary can do (its
//! `hello`), spawning `tern run --launch` with a typed [`LaunchSpec`], its
//! control socket (the typed [`AsyncClient`]), its console, and waiting for
//! it to end.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_worker_proto::requests::{ConsoleInput, MAX_CONSOLE_INPUT};
use tern_worker_proto::wire::{decode_reply, ReplyError};
use tern_worker_proto::{
    AsyncClient, Call, Capability, ClientError, HelloReply, LaunchSpec, Request, VersionError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

/// Errors driving a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker binary could not be started.
    #[error("cannot start the worker {exe}")]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker's log file could not be opened.
    #[error("cannot open the worker log {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The launch spec could not be written.
    #[error("cannot write the launch spec {path}")]
    Launch {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A control request got no typed reply, or a refusal.
    #[error("worker request {request}")]
    Call {
        /// The request's wire name.
        request: &'static str,
        /// What happened.
        #[source]
        source: ClientError,
    },
    /// The worker binary cannot run VMs for this daemon.
    #[error(transparent)]
    Unusable(#[from] HelloError),
}

impl WorkerError {
    /// The worker's refusal, when the request got one (not a transport
    /// failure).
    pub fn refusal(&self) -> Option<&tern_worker_proto::WorkerError> {
        match self {
            WorkerError::Call { source, .. } => source.worker_error(),
            _ => None,
        }
    }
}

/// Why a worker binary's `hello` gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HelloError {
    /// `tern worker hello` could not be run.
    #[error("cannot run {exe} worker hello: {why}")]
    Run {
        /// The binary.
        exe: PathBuf,
        /// Why (the error or its standard error).
        why: String,
    },
    /// It printed something that is not a hello reply.
    #[error("{exe} worker hello printed no hello reply: {why}")]
    Reply {
        /// The binary.
        exe: PathBuf,
        /// What was wrong with it.
        why: String,
    },
    /// It speaks a protocol version this daemon does not know.
    #[error("{exe} cannot run VMs for this daemon")]
    Version {
        /// The binary.
        exe: PathBuf,
        /// The versions.
        #[source]
        source: VersionError,
    },
    /// It lacks something every VM the daemon runs needs.
    #[error("{exe} cannot run VMs for this daemon: it lacks '{missing}' (too old a tern)")]
    Lacks {
        /// The binary.
        exe: PathBuf,
        /// The capability's wire name.
        missing: &'static str,
    },
}

/// What a worker binary can do, from its `hello`, or why it cannot be used.
#[derive(Debug, Clone)]
pub struct Capabilities {
    hello: Result<HelloReply, HelloError>,
}

impl Capabilities {
    /// Asks `exe worker hello` (the same reply a running worker gives on its
    /// control socket). A binary that is missing, fails, or speaks an unknown
    /// protocol version can do nothing; the daemon still serves its registry.
    pub fn ask(exe: &Path) -> Capabilities {
        Capabilities {
            hello: hello_of(exe),
        }
    }

    /// Capabilities from a reply already in hand (tests).
    pub fn from_hello(exe: &Path, reply: HelloReply) -> Capabilities {
        Capabilities {
            hello: check_hello(exe, reply),
        }
    }

    /// The worker's hello, or why the binary cannot run VMs.
    pub fn hello(&self) -> Result<&HelloReply, &HelloError> {
        self.hello.as_ref()
    }

    /// Whether the worker has `cap` (never, if it cannot be used).
    pub fn has(&self, cap: Capability) -> bool {
        self.hello.as_ref().is_ok_and(|h| h.has(cap))
    }
}

fn hello_of(exe: &Path) -> Result<HelloReply, HelloError> {
    let out = std::process::Command::new(exe)
        .args(["worker", "hello"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HelloError::Run {
            exe: exe.into(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(HelloError::Run {
            exe: exe.into(),
            why: format!(
                "{}: {}",
                describe_exit(&out.status),
                err.trim().lines().last().unwrap_or("no message")
            ),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    check_hello(
        exe,
        parse_hello(&text).map_err(|why| HelloError::Reply {
            exe: exe.into(),
            why,
        })?,
    )
}

/// A hello as `tern worker hello` prints it: the reply itself, or the
/// control socket's `{"ok":true,...}` line.
fn parse_hello(text: &str) -> Result<HelloReply, String> {
    match serde_json::from_str::<HelloReply>(text) {
        Ok(h) => Ok(h),
        Err(plain) => match decode_reply::<HelloReply>(text) {
            Ok(Ok(h)) => Ok(h),
            Ok(Err(refused)) => Err(refused.message),
            Err(ReplyError::NoOk { .. }) => Err(plain.to_string()),
            Err(e) => Err(crate::error::chain(&e)),
        },
    }
}

fn check_hello(exe: &Path, reply: HelloReply) -> Result<HelloReply, HelloError> {
    reply.check().map_err(|source| HelloError::Version {
        exe: exe.into(),
        source,
    })?;
    // Without launch specs the daemon would have to format `--disk`
    // strings again.
    if !reply.has(Capability::LaunchSpec) {
        return Err(HelloError::Lacks {
            exe: exe.into(),
            missing: "launch-spec",
        });
    }
    Ok(reply)
}

/// What a worker is started with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `tern` binary.
    pub exe: PathBuf,
    /// The VM: written to `spec_path`, read by `tern run --launch`.
    pub spec: LaunchSpec,
    /// Where the spec is written.
    pub spec_path: PathBuf,
    /// The worker's stdout and stderr go here (appended).
    pub log: PathBuf,
}

/// Starts a worker on `l.spec`. It runs in its own process group, so that a
/// signal to the daemon's group (Ctrl-C) does not reach it and it outlives a
/// daemon restart.
pub fn spawn(l: &Launch) -> Result<tokio::process::Child, WorkerError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.log)
        .map_err(|source| WorkerError::Log {
            path: l.log.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| WorkerError::Log {
        path: l.log.clone(),
        source,
    })?;
    std::fs::write(&l.spec_path, l.spec.to_json()).map_err(|source| WorkerError::Launch {
        path: l.spec_path.clone(),
        source,
    })?;
    let mut cmd = tokio::process::Command::new(&l.exe);
    cmd.arg("run")
        .arg("--launch")
        .arg(&l.spec_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn().map_err(|source| WorkerError::Spawn {
        exe: l.exe.clone(),
        source,
    })
}

/// Sends `req` to the worker serving `client`, waiting at most `timeout`.
pub async fn call<R: Call + Clone>(
    client: &AsyncClient,
    req: R,
    timeout: Duration,
) -> Result<R::Reply, WorkerError> {
    let request = {
        let r: Request = req.clone().into();
        r.name()
    };
    client
        .call_timeout(req, timeout)
        .await
        .map_err(|source| WorkerError::Call { request, source })
}

/// The worker's `hello` on its control socket; a protocol version this
/// daemon does not know is an error.
pub async fn hello(client: &AsyncClient, timeout: Duration) -> Result<HelloReply, WorkerError> {
    let reply = call(client, tern_worker_proto::hello::Hello {}, timeout).await?;
    reply.check().map_err(|e| WorkerError::Call {
        request: "hello",
        source: ClientError::Version(e),
    })?;
    Ok(reply)
}

/// The start time of process `pid` (clock ticks since boot), if it exists.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: fields after it are
    // counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3 (state); start time is field 22.
    let f = rest.split_whitespace().nth(22 - 3)?;
    // A zombie has exited: it is not a live worker.
    if rest.starts_with('Z') {
        return None;
    }
    f.parse().ok()
}

/// The last non-empty line of a log file, for failure reasons.
pub fn last_log_line(path: &Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let tail = &text[text.len().saturating_sub(4096)..];
    String::from_utf8_lossy(tail)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("[probe]"))
        .map(|l| l.chars().take(300).collect())
}

/// Describes how a worker ended.
pub fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit status {code}")
    } else if let Some(sig) = status.signal() {
        let name = match sig {
            9 => " (SIGKILL)",
            15 => " (SIGTERM)",
            6 => " (SIGABRT)",
            11 => " (SIGSEGV)",
            2 => " (SIGINT)",
            _ => "",
        };
        format!("killed by signal {sig}{name}")
    } else {
        "ended".into()
    }
}

/// Scrollback kept for consoles that attach later.
const SCROLLBACK: usize = 64 * 1024;

/// Creates the FIFO the worker writes its serial output to (`--serial
/// file:FIFO`) and opens its reading end.
///
/// Why a FIFO and not the worker's console socket: the socket keeps no
/// scrollback, so whatever the guest prints before a client connects is
/// lost, and the probe prints within microseconds of starting. The FIFO
/// is open before the worker starts, so nothing is lost; it also outlives a
/// daemon restart (the next daemon opens it again). Input goes the other
/// way, through the worker's control socket (see [`ConsoleHub::input`]).
pub fn open_serial_fifo(
    path: &Path,
    create: bool,
) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    if create {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from(0o600))?;
    }
    // Read-write so that the pipe never reads as ended while no worker has
    // it open (before the worker starts, or if it reopens).
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
}

/// The daemon's end of a worker's serial output: it records it (scrollback
/// and a log file) and fans it out to console clients.
pub struct ConsoleHub {
    /// The worker's control socket (console input goes there).
    control: AsyncClient,
    scrollback: Mutex<VecDeque<u8>>,
    tx: broadcast::Sender<Vec<u8>>,
    closed: watch::Sender<bool>,
}

impl ConsoleHub {
    /// Records what arrives on `serial` into `log` and the scrollback until
    /// [`ConsoleHub::close`].
    pub fn start(
        mut serial: tokio::net::unix::pipe::Receiver,
        log: PathBuf,
        control: AsyncClient,
    ) -> Arc<ConsoleHub> {
        let (tx, _) = broadcast::channel(256);
        // A hub made again after a daemon restart starts from what the log
        // kept.
        let mut scrollback = VecDeque::with_capacity(SCROLLBACK);
        if let Ok(old) = std::fs::read(&log) {
            scrollback.extend(&old[old.len().saturating_sub(SCROLLBACK)..]);
        }
        let hub = Arc::new(ConsoleHub {
            control,
            scrollback: Mutex::new(scrollback),
            tx,
            closed: watch::channel(false).0,
        });
        let h = hub.clone();
        let mut closed = hub.closed();
        tokio::spawn(async move {
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .await
                .ok();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = tokio::select! {
                    r = serial.read(&mut buf) => match r {
                        Ok(n @ 1..) => n,
                        _ => break,
                    },
                    // Drain what the worker wrote before it ended, then stop.
                    _ = closed.wait_for(|c| *c) => match serial.try_read(&mut buf) {
                        Ok(n @ 1..) => n,
                        _ => break,
                    },
                };
                let chunk = buf[..n].to_vec();
                {
                    let mut sb = h.scrollback.lock().unwrap_or_else(|p| p.into_inner());
                    sb.extend(&chunk);
                    let excess = sb.len().saturating_sub(SCROLLBACK);
                    sb.drain(..excess);
                    // Sent under the lock so a subscriber that took the
                    // scrollback under it sees each byte exactly once.
                    let _ = h.tx.send(chunk.clone());
                }
                if let Some(f) = file.as_mut() {
                    let _ = f.write_all(&chunk).await;
                }
            }
            h.closed.send_replace(true);
        });
        hub
    }

    /// Tells the hub (and its consoles) that the worker ended.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The recent output and a receiver of what follows.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<Vec<u8>>) {
        let sb = self.scrollback.lock().unwrap_or_else(|p| p.into_inner());
        (sb.iter().copied().collect(), self.tx.subscribe())
    }

    /// The recent output.
    pub fn scrollback(&self) -> Vec<u8> {
        let sb = self.scrollback.lock().unwrap_or_else(|p| p.into_inner());
        sb.iter().copied().collect()
    }

    /// Becomes true when the worker ended.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Types `bytes` on the guest's serial port (the worker waits up to a
    /// second for the guest to take them).
    pub async fn input(&self, bytes: &[u8]) -> Result<(), WorkerError> {
        for part in bytes.chunks(MAX_CONSOLE_INPUT) {
            let req = ConsoleInput {
                bytes: part.to_vec(),
            };
            call(&self.control, req, Duration::from_secs(5)).await?;
        }
        Ok(())
    }
}

/// Worker exit codes below this are the guest's own reported status (the
/// probe guest: 0 pass, 1 fail, 2 bad workload, 3 guest panic); the
/// worker's own failures use 64 and above (README's exit-code table).
pub const GUEST_STATUS_END: i32 = 64;

/// The worker's exit code when the guest rebooted
/// (`tern_worker::exit_code::REBOOT`): the VM ran to its end.
pub const GUEST_REBOOTED: i32 = 80;

/// A running worker, as the daemon tracks it.
pub struct Worker {
    /// Process id.
    pub pid: u32,
    /// Process start time (see [`process_start`]).
    pub pid_start: u64,
    /// Its control socket.
    pub control: AsyncClient,
    /// Console.
    pub console: Arc<ConsoleHub>,
    /// Set when the daemon asked it to stop (a clean exit is expected).
    pub stop_requested: AtomicBool,
    /// Set when the daemon killed it on request.
    pub kill_requested: AtomicBool,
    /// Set while a save runs (the worker ends once saved).
    pub save_requested: AtomicBool,
    /// Set while the worker waits for an incoming migration (the VM is not
    /// this host's until it arrives).
    pub incoming: AtomicBool,
    /// Disks registered for an incoming VM: forgotten again if it never
    /// arrives.
    pub incoming_disks: std::sync::Mutex<Vec<String>>,
    /// Set when the VM left this host by migration (its exit is expected).
    pub migrated_away: AtomicBool,
    /// Becomes true once the process has ended and the registry says so.
    pub gone: watch::Receiver<bool>,
    /// Sets `gone`.
    pub gone_tx: watch::Sender<bool>,
    /// Set when it ended with a status its guest reported (an exit code
    /// below [`GUEST_STATUS_END`]): the VM ran, whatever the status says.
    pub guest_ended: AtomicBool,
}

impl Worker {
    /// Sends SIGKILL to the worker (if it is still the process we started).
    pub fn kill(&self) -> std::io::Result<()> {
        if process_start(self.pid) != Some(self.pid_start) {
            return Ok(());
        }
        let pid = rustix::process::Pid::from_raw(self.pid as i32)
            .ok_or_else(|| std::io::Error::other("pid 0"))?;
        rustix::process::kill_process(pid, rustix::process::Signal::KILL)
            .map_err(std::io::Error::from)
    }

    /// Sends `req`, waiting at most `timeout`.
    pub async fn call<R: Call + Clone>(
        &self,
        req: R,
        timeout: Duration,
    ) -> Result<R::Reply, WorkerError> {
        call(&self.control, req, timeout).await
    }

    /// Waits until the worker is gone (its end recorded), up to `t`; true
    /// if it is.
    pub async fn wait_gone(&self, t: Duration) -> bool {
        let mut gone = self.gone.clone();
        let done = matches!(
            tokio::time::timeout(t, gone.wait_for(|g| *g)).await,
            Ok(Ok(_))
        );
        done
    }

    /// Whether a stop or kill was requested.
    pub fn ending_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst) || self.kill_requested.load(Ordering::SeqCst)
    }
}

/// Waits until process `pid` (not our child: a worker found again after a
/// daemon restart) has ended. Polls `/proc`: a pidfd would need an unsafe
/// registration with tokio, and 100 ms is quick enough for a rare case.
pub async fn wait_foreign(pid: u32, pid_start: u64) {
    while process_start(pid) == Some(pid_start) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_start_time_is_readable() {
        let me = std::process::id();
        let a = process_start(me).expect("own stat");
        assert_eq!(process_start(me), Some(a));
        assert_eq!(process_start(u32::MAX), None);
    }

    #[test]
    fn last_log_line_skips_probe_reports() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        std::fs::write(&p, "a\ntern: error: boom\n[probe] hello\n\n").unwrap();
        assert_eq!(last_log_line(&p).as_deref(), Some("tern: error: boom"));
        assert_eq!(last_log_line(&d.path().join("none")), None);
    }

    #[test]
    fn hellos_are_read_plain_or_as_replies_and_checked() {
        let exe = Path::new("/x/tern");
        let h = HelloReply::new("9.9", vec![Capability::LaunchSpec, Capability::Vhdx]);
        let plain = serde_json::to_string(&h).unwrap();
        assert_eq!(parse_hello(&plain).unwrap(), h);
        let line = tern_worker_proto::wire::encode_reply(&Ok::<_, tern_worker_proto::WorkerError>(
            h.clone(),
        ));
        assert_eq!(parse_hello(&line).unwrap(), h);
        assert!(parse_hello("Usage: tern run").is_err());
        let caps = Capabilities::from_hello(exe, h.clone());
        assert!(caps.has(Capability::Vhdx) && !caps.has(Capability::Migration));
        // A newer protocol is refused, with both versions in the message.
        let newer = HelloReply {
            protocol: tern_worker_proto::PROTOCOL_VERSION + 1,
            ..h.clone()
        };
        let caps = Capabilities::from_hello(exe, newer);
        let e = caps.hello().unwrap_err();
        assert!(matches!(e, HelloError::Version { .. }), "{e}");
        let text = crate::error::chain(e);
        assert!(
            text.contains(&format!(
                "protocol version {}",
                tern_worker_proto::PROTOCOL_VERSION + 1
            )),
            "{text}"
        );
        assert!(!caps.has(Capability::Vhdx));
        // A worker without launch specs cannot be driven.
        let old = HelloReply::new("0.1", vec![Capability::Disks]);
        let e = Capabilities::from_hello(exe, old)
            .hello()
            .unwrap_err()
            .clone();
        assert!(
            matches!(
                e,
                HelloError::Lacks {
                    missing: "launch-spec",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn exits_are_described() {
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(70 << 8)),
            "exit status 70"
        );
    }
}
