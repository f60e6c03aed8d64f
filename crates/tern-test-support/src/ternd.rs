//! A `ternd` process started by a test on a socket in a directory of its
//! own, and the `tern` CLI pointed at it. The daemon and every worker it
//! starts carry its tag: dropping it kills them all, workers in their own
//! process groups included.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::procs::{Spawned, Tag};

/// A running daemon.
#[derive(Debug)]
pub struct Ternd {
    dir: PathBuf,
    socket: PathBuf,
    extra: Vec<String>,
    /// `ternd` and `tern` (worker and CLI) of the release it runs.
    exes: (PathBuf, PathBuf),
    tag: Arc<Tag>,
    proc: Option<Spawned>,
}

impl Ternd {
    /// Starts `ternd` with its state, socket and log in `dir`.
    pub fn start(dir: &Path) -> Ternd {
        Ternd::start_with(dir, &[])
    }

    /// Starts `ternd` with extra arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Ternd {
        Ternd::start_release(dir, (crate::ternd_exe(), crate::tern_exe()), extra)
    }

    /// Starts the `ternd` of another build (`exes`: its `ternd` and its
    /// `tern`, which serves as its worker and CLI), e.g. the previous
    /// release's.
    pub fn start_release(dir: &Path, exes: (PathBuf, PathBuf), extra: &[&str]) -> Ternd {
        std::fs::create_dir_all(dir).unwrap();
        let mut d = Ternd {
            dir: dir.into(),
            socket: dir.join("d.sock"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            exes,
            tag: Tag::new(),
            proc: None,
        };
        d.launch();
        d
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ternd.log"))
            .unwrap();
        let mut cmd = Command::new(&self.exes.0);
        cmd.arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--worker")
            .arg(&self.exes.1)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.proc = Some(Spawned::spawn(&mut cmd, &self.tag).expect("start ternd"));
        let start = Instant::now();
        while self.tern(&["host"]).status.code() != Some(0) {
            if let Some(st) = self.proc.as_mut().and_then(Spawned::try_wait) {
                panic!("ternd exited ({st}): {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ternd did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the daemon alone: its workers run on (as they would after
    /// a daemon crash) until [`Ternd::restart`] finds them or this value
    /// is dropped.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill_child();
        }
    }

    /// Starts the daemon again on the same state, socket and arguments,
    /// under the same tag (it finds the workers the last one left).
    pub fn restart(&mut self) {
        // Only the daemon's own process goes; its workers stay for the
        // new daemon to find.
        if let Some(p) = self.proc.take() {
            p.release();
        }
        self.launch();
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Spawned::pid)
    }

    /// The tag its processes carry.
    pub fn tag(&self) -> &Arc<Tag> {
        &self.tag
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its state directory (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `unix:SOCKET`, for `TERN_HOST` and `--to`.
    pub fn host(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ternd.log")).unwrap_or_default()
    }

    /// A `tern ARGS` command line talking to this daemon, under its tag.
    pub fn tern_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exes.1);
        c.args(args).env("TERN_HOST", self.host());
        self.tag.apply(&mut c);
        c
    }

    /// Runs `tern ARGS` against this daemon to its end.
    pub fn tern(&self, args: &[&str]) -> Output {
        self.tern_command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tern")
    }

    /// Runs `tern ARGS --json`, expects exit 0, returns the JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.tern(&a);
        assert_eq!(
            out.status.code(),
            Some(0),
            "tern {}: {}",
            a.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tern {}: not JSON ({e}): {}",
                a.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs `tern ARGS`, expects exit `code` and `needle` on stderr.
    pub fn fails(&self, args: &[&str], code: i32, needle: &str) {
        let out = self.tern(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "tern {}: {err}",
            args.join(" ")
        );
        assert!(
            err.contains(needle),
            "tern {}: {err:?} lacks {needle:?}",
            args.join(" ")
        );
    }

    /// `tern vm show VM --json`.
    pub fn state(&self, vm: &str) -> Value {
        self.json(&["vm", "show", vm])
    }

    /// The daemon's `features` from `tern host`.
    pub fn features(&self) -> Value {
        self.json(&["host"])["features"].clone()
    }
}
