//! A `tern run` worker started by a test: its stderr collected line by
//! line, its control socket, the probe guest's progress and verdicts.
//! Dropping it kills it and everything it started (see [`crate::procs`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_worker_proto::requests::{ProbeStatus, ProbeStop, Status, StatusReply};
use tern_worker_proto::{Call, Client, ClientError, WorkerError};

use crate::procs::{Spawned, Tag};

/// How long a request waits for the control socket to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

use tern_error::chain;

/// A `tern run` command line to add arguments to: `tern run`.
pub fn tern_run() -> Command {
    let mut c = Command::new(crate::tern_exe());
    c.arg("run");
    c
}

/// Stderr lines so far, and whether the pipe reached its end.
#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    eof: bool,
}

/// A running (or finished) worker.
pub struct Worker {
    name: String,
    proc: Mutex<Spawned>,
    sock: Option<PathBuf>,
    lines: Arc<(Mutex<Lines>, Condvar)>,
    status: Mutex<Option<ExitStatus>>,
    /// A directory that must outlive the process (its control socket).
    _dir: Option<tempfile::TempDir>,
}

impl Worker {
    /// Starts `cmd` (a [`tern_run`] command line) under a tag of its own.
    /// Its stderr is collected (and echoed as `[name] ...`); its stdin and
    /// stdout are null.
    pub fn spawn(name: &str, cmd: Command) -> Worker {
        Worker::spawn_under(name, cmd, None, &Tag::new())
    }

    /// Like [`Worker::spawn`], with `--control SOCK` added.
    pub fn with_control(name: &str, cmd: Command, sock: &Path) -> Worker {
        Worker::spawn_under(name, cmd, Some(sock), &Tag::new())
    }

    /// Like [`Worker::with_control`], then waits until the control socket
    /// accepts (panics, with the worker's stderr, if it exits first).
    pub fn start(name: &str, cmd: Command, sock: &Path) -> Worker {
        let w = Worker::with_control(name, cmd, sock);
        w.wait_socket(Duration::from_secs(20));
        w
    }

    /// Like [`Worker::start`], with the control socket in a temporary
    /// directory the worker owns.
    pub fn start_temp(name: &str, cmd: Command) -> Worker {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut w = Worker::with_control(name, cmd, &dir.path().join("ctl.sock"));
        w._dir = Some(dir);
        w.wait_socket(Duration::from_secs(20));
        w
    }

    /// Starts `cmd` under `tag` (shared with other processes of the test),
    /// with `--control SOCK` when given.
    pub fn spawn_under(
        name: &str,
        mut cmd: Command,
        sock: Option<&Path>,
        tag: &Arc<Tag>,
    ) -> Worker {
        if let Some(s) = sock {
            cmd.arg("--control").arg(s);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Spawned::spawn(&mut cmd, tag)
            .unwrap_or_else(|e| panic!("{name}: cannot start {:?}: {e}", cmd.get_program()));
        let lines: Arc<(Mutex<Lines>, Condvar)> = Arc::default();
        let err = proc.child().stderr.take().expect("stderr is piped");
        let (l, n) = (lines.clone(), name.to_string());
        std::thread::spawn(move || {
            // Bytes, not `lines()`: a line that is not UTF-8 must neither end
            // the reading (the worker would block on a full pipe) nor be lost.
            let mut r = BufReader::new(err);
            let mut buf = Vec::new();
            while matches!(r.read_until(b'\n', &mut buf), Ok(1..)) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                buf.clear();
                eprintln!("[{n}] {line}");
                l.0.lock().unwrap().lines.push(line);
                l.1.notify_all();
            }
            l.0.lock().unwrap().eof = true;
            l.1.notify_all();
        });
        Worker {
            name: name.into(),
            proc: Mutex::new(proc),
            sock: sock.map(Path::to_path_buf),
            lines,
            status: Mutex::new(None),
            _dir: None,
        }
    }

    /// The name it was given (prefixes its stderr and messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.lock().unwrap().pid()
    }

    /// Its control socket.
    pub fn sock(&self) -> &Path {
        self.sock
            .as_deref()
            .unwrap_or_else(|| panic!("{}: started without a control socket", self.name))
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.lines.0.lock().unwrap().lines.join("\n")
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.0.lock().unwrap();
        loop {
            if let Some(l) = g.lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.checked_duration_since(Instant::now());
            let Some(left) = left.filter(|_| !g.eof) else {
                panic!("{}: no line with {needle:?}: {:#?}", self.name, g.lines);
            };
            g = self.lines.1.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Its exit status if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut st = self.status.lock().unwrap();
        if st.is_none() {
            *st = self.proc.lock().unwrap().try_wait();
        }
        *st
    }

    /// Waits up to `timeout` for it to exit; then for its stderr to be read
    /// to the end. `None` if it still runs.
    pub fn wait_status(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let st = loop {
            if let Some(st) = self.exited() {
                break st;
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.wait_eof(Duration::from_secs(5));
        Some(st)
    }

    /// Like [`Worker::wait_status`], the exit code (`None` also when a
    /// signal ended it).
    pub fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        self.wait_status(timeout).and_then(|s| s.code())
    }

    /// Waits for it to end and returns its exit code (-1 for a signal) and
    /// stderr; panics if it runs past `timeout`.
    pub fn finish(&self, timeout: Duration) -> (i32, String) {
        match self.wait_status(timeout) {
            Some(st) => (st.code().unwrap_or(-1), self.stderr()),
            None => panic!(
                "{}: did not exit within {timeout:?}: {}",
                self.name,
                self.stderr()
            ),
        }
    }

    fn wait_eof(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut g: MutexGuard<'_, Lines> = self.lines.0.lock().unwrap();
        while !g.eof {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            g = self.lines.1.wait_timeout(g, left).unwrap().0;
        }
    }

    /// SIGKILLs the worker itself and reaps it.
    pub fn kill(&self) {
        self.proc.lock().unwrap().kill_child();
    }

    /// Waits until the control socket accepts; panics if the worker exits
    /// first or `timeout` passes.
    pub fn wait_socket(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while UnixStream::connect(self.sock()).is_err() {
            if let Some(st) = self.exited() {
                self.wait_eof(Duration::from_secs(5));
                panic!(
                    "{}: exited ({st}) before serving: {}",
                    self.name,
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no control socket after {timeout:?}: {}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A client of its control socket (each call connects anew; a reply
    /// may take at most [`REPLY_TIMEOUT`]).
    pub fn client(&self) -> Client {
        Client::new(self.sock()).with_timeout(REPLY_TIMEOUT)
    }

    /// Sends `req` and returns the outcome as it is. While the socket does
    /// not accept yet (a migration destination serves it once the VM has
    /// arrived) it retries for [`CONNECT_TIMEOUT`], unless the worker exits.
    pub fn try_call<R: Call + Clone>(&self, req: R) -> Result<R::Reply, ClientError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let client = self.client();
        loop {
            match client.call(req.clone()) {
                Err(ClientError::Connect { .. })
                    if Instant::now() < deadline && self.exited().is_none() =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    /// Sends `req`, which must succeed; returns its typed reply.
    pub fn call<R: Call + Clone + std::fmt::Debug>(&self, req: R) -> R::Reply {
        self.try_call(req.clone()).unwrap_or_else(|e| {
            panic!(
                "{}: {req:?} failed: {}\n{}",
                self.name,
                chain(&e),
                self.stderr()
            )
        })
    }

    /// Sends `req`, which the worker must refuse; returns the refusal.
    pub fn refused<R: Call + Clone + std::fmt::Debug>(&self, req: R) -> WorkerError {
        match self.try_call(req.clone()) {
            Err(ClientError::Worker(e)) => e,
            Ok(_) => panic!("{}: {req:?} was accepted", self.name),
            Err(e) => panic!("{}: {req:?} got no answer: {}", self.name, chain(&e)),
        }
    }

    /// Sends one line as it is and returns the reply line as JSON: for
    /// input the protocol cannot express (a malformed or unknown request).
    pub fn raw_request(&self, line: &str) -> Value {
        let mut s = UnixStream::connect(self.sock())
            .unwrap_or_else(|e| panic!("{}: control socket: {e}", self.name));
        writeln!(s, "{line}").unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("{}: bad reply {reply:?}: {e}", self.name))
    }

    /// The worker's status.
    pub fn status(&self) -> StatusReply {
        self.call(Status {})
    }

    /// Waits until `pred` holds on the status (or panics after `timeout`);
    /// returns that status.
    pub fn wait_status_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&StatusReply) -> bool,
    ) -> StatusReply {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}: {s:?}\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The probe guest's status page (all zero before it is readable).
    pub fn probe(&self) -> ProbeStatus {
        self.status().probe.unwrap_or_default()
    }

    /// (generation, cursor) of the probe's dirty workload.
    pub fn progress(&self) -> (u64, u64) {
        let p = self.probe();
        (p.generation, p.cursor)
    }

    /// The dirty workload's generation (passes over its memory).
    pub fn generation(&self) -> u64 {
        self.progress().0
    }

    /// Waits until the dirty workload reaches generation `at_least`.
    pub fn wait_generation(&self, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.generation() < at_least {
            assert!(
                Instant::now() < deadline,
                "{}: dirty workload stuck: {}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the probe's current step (`probe-stop`).
    pub fn probe_stop(&self) {
        self.call(ProbeStop {});
    }

    /// Stops the dirty step; the guest's `verify` step checks every page,
    /// the worker must exit 0 with `bad=0 result=pass`. Returns the verify
    /// report line.
    pub fn finish_and_verify(&self) -> String {
        self.probe_stop();
        let (code, err) = self.finish(Duration::from_secs(120));
        assert_eq!(code, 0, "{}: verify did not pass: {err}", self.name);
        let verify = err
            .lines()
            .find(|l| l.contains("verify pages="))
            .unwrap_or_else(|| panic!("{}: no verify report: {err}", self.name));
        assert!(
            verify.contains("bad=0 result=pass"),
            "{}: {verify}",
            self.name
        );
        verify.to_string()
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("sock", &self.sock)
            .finish_non_exhaustive()
    }
}
