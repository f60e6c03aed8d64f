//! VM workers seen from the daemon: spawning `tern run`, its control socket,
//! its console, and waiting for it to end.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};

/// Errors talking to a worker.
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
    /// The control socket could not be used.
    #[error("worker control socket {path}")]
    Control {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker answered with an error.
    #[error("the worker refused: {0}")]
    Refused(String),
    /// The worker did not answer in time.
    #[error("the worker did not answer within {0:?}")]
    Timeout(Duration),
}

/// What a worker is started with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `tern` binary.
    pub exe: PathBuf,
    /// Probe image, if not the default beside `exe`.
    pub probe_image: Option<PathBuf>,
    /// What to run: `--vcpus N --memory B --guest G [--disk ...]` or
    /// `--restore DIR` or `--incoming EP ...`.
    pub vm_args: Vec<String>,
    /// Control socket path.
    pub control: PathBuf,
    /// Serial output FIFO (see [`open_serial_fifo`]).
    pub serial: PathBuf,
    /// The worker's stdout and stderr go here (appended).
    pub log: PathBuf,
}

/// What this worker binary can do, from `tern run --help`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    /// `--restore DIR` and the `save` request.
    pub save_restore: bool,
    /// `--incoming EP` and the `migrate` request.
    pub migration: bool,
    /// `--checkpoint-dir DIR` and the `checkpoint-*` requests.
    pub checkpoints: bool,
    /// `--disk SPEC`.
    pub disks: bool,
    /// `--memfd`.
    pub memfd: bool,
}

impl Capabilities {
    /// Asks `exe run --help`.
    pub fn probe(exe: &Path) -> Capabilities {
        let help = std::process::Command::new(exe)
            .args(["run", "--help"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Capabilities {
            save_restore: help.contains("--restore"),
            migration: help.contains("--incoming"),
            checkpoints: help.contains("--checkpoint-dir"),
            disks: help.contains("--disk"),
            memfd: help.contains("--memfd"),
        }
    }
}

/// Starts a worker. It runs in its own process group, so that a signal to
/// the daemon's group (Ctrl-C) does not reach it and it outlives a daemon
/// restart.
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
    let mut cmd = tokio::process::Command::new(&l.exe);
    cmd.arg("run")
        .args(&l.vm_args)
        .arg("--serial")
        .arg(format!("file:{}", l.serial.display()))
        .arg("--control")
        .arg(&l.control)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(false);
    if let Some(p) = &l.probe_image {
        cmd.env("TERN_PROBE_IMAGE", p);
    }
    cmd.spawn().map_err(|source| WorkerError::Spawn {
        exe: l.exe.clone(),
        source,
    })
}

/// Sends one control request and returns the reply (`ok` must be true).
pub async fn control(path: &Path, req: &Value, timeout: Duration) -> Result<Value, WorkerError> {
    let err = |source| WorkerError::Control {
        path: path.into(),
        source,
    };
    let fut = async {
        let mut s = UnixStream::connect(path).await.map_err(err)?;
        let mut line = req.to_string();
        line.push('\n');
        s.write_all(line.as_bytes()).await.map_err(err)?;
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).await.map_err(err)?;
        if reply.is_empty() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed without a reply",
            )));
        }
        let v: Value = serde_json::from_str(&reply).map_err(|e| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad reply: {e}"),
            ))
        })?;
        if v["ok"] == Value::Bool(true) {
            Ok(v)
        } else {
            Err(WorkerError::Refused(
                v["error"].as_str().unwrap_or("no reason given").to_string(),
            ))
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| WorkerError::Timeout(timeout))?
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
    control: PathBuf,
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
        control: PathBuf,
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
        for part in bytes.chunks(4096) {
            control(
                &self.control,
                &serde_json::json!({"cmd": "console-input", "bytes": part}),
                Duration::from_secs(5),
            )
            .await?;
        }
        Ok(())
    }
}

/// A running worker, as the daemon tracks it.
pub struct Worker {
    /// Process id.
    pub pid: u32,
    /// Process start time (see [`process_start`]).
    pub pid_start: u64,
    /// Control socket.
    pub control: PathBuf,
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
