//! Processes a test starts, and their end when the test ends, by panic too.
//!
//! Killing a child's process group is not enough: the daemon starts each
//! worker in a process group of its own (workers outlive daemon restarts),
//! and `ip netns exec` or a daemon may start more processes under a child.
//! So everything a harness starts carries a [`Tag`], an environment variable
//! no other process has, which every descendant inherits; dropping the tag
//! kills every live process that carries it (found in `/proc/PID/environ`).
//! Variables accumulate: a process started under a tag by a process that
//! itself carries another tag carries both, so an outer test can check what
//! an inner one left behind.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};

/// Prefix of every tag's variable name.
const PREFIX: &str = "TERN_TEST_SCOPE_";

/// How long [`Tag::kill_all`] keeps finding tagged processes before it
/// gives up (a process in uninterruptible sleep outlives SIGKILL a while).
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// A mark inherited by every process started under it; dropping it kills
/// every live process that carries it.
#[derive(Debug)]
pub struct Tag {
    var: String,
}

/// A live process, as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its process id.
    pub pid: u32,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}: {}", self.pid, self.cmdline)
    }
}

impl Tag {
    /// A tag no other process carries yet.
    pub fn new() -> Arc<Tag> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Arc::new(Tag {
            var: format!(
                "{PREFIX}{}_{}_{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        })
    }

    /// The environment variable that marks this tag's processes (its value
    /// is `1`).
    pub fn var(&self) -> &str {
        &self.var
    }

    /// Marks what `cmd` starts with this tag, in a process group of its own
    /// (so that a terminal's Ctrl-C reaches the test alone, and the group
    /// can be killed at once).
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env(&self.var, "1").process_group(0)
    }

    /// Writes an executable script into `dir` that runs `exe` under this
    /// tag: for processes the test does not start itself, such as the
    /// workers of a daemon running inside the test process.
    pub fn wrap_exe(&self, exe: &Path, dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join(format!(
            "tagged-{}",
            exe.file_name().and_then(OsStr::to_str).unwrap_or("exe")
        ));
        // Single quotes keep every character of the path but the quote.
        let quoted = exe.to_string_lossy().replace('\'', r"'\''");
        let text = format!(
            "#!/bin/sh\n# Runs {} under a test tag.\n{}=1\nexport {}\nexec '{quoted}' \"$@\"\n",
            exe.display(),
            self.var,
            self.var
        );
        // Written here but put in place by a child process: a file this
        // (multithreaded) process held open for writing could be inherited
        // by a child another test thread forks at that moment, and then
        // exec of the wrapper fails with ETXTBSY until that child execs.
        let draft = dir.join(format!(
            ".{}.draft",
            script
                .file_name()
                .and_then(OsStr::to_str)
                .unwrap_or("tagged")
        ));
        std::fs::write(&draft, text).expect("write the tagged wrapper");
        std::fs::set_permissions(&draft, std::fs::Permissions::from_mode(0o755))
            .expect("make the tagged wrapper executable");
        let installed = Command::new("install")
            .args(["-m", "755"])
            .arg(&draft)
            .arg(&script)
            .status()
            .expect("run install for the tagged wrapper");
        assert!(installed.success(), "install of the tagged wrapper failed");
        let _ = std::fs::remove_file(&draft);
        script
    }

    /// Every live process (not a zombie) that carries this tag, but the
    /// calling process.
    pub fn live(&self) -> Vec<Proc> {
        let needle = format!("{}=1", self.var);
        live_with_env(needle.as_bytes())
    }

    /// SIGKILLs every process that carries this tag until none is left (a
    /// daemon may start a worker between two scans). Returns what is still
    /// alive after [`KILL_PATIENCE`]; empty when all are gone.
    pub fn kill_all(&self) -> Vec<Proc> {
        let deadline = Instant::now() + KILL_PATIENCE;
        loop {
            let live = self.live();
            if live.is_empty() || Instant::now() > deadline {
                return live;
            }
            for p in &live {
                kill(p.pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Tag {
    fn drop(&mut self) {
        let left = self.kill_all();
        for p in left {
            eprintln!("tern-test-support: {p} survived SIGKILL");
        }
    }
}

/// Live processes whose environment holds the entry `needle` (`NAME=VALUE`).
pub fn live_with_env(needle: &[u8]) -> Vec<Proc> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || !alive(pid) {
            continue;
        }
        // Unreadable (another user's, or gone): not ours.
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|entry| entry == needle) {
            found.push(Proc {
                pid,
                cmdline: cmdline(pid),
            });
        }
    }
    found
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// True while process `pid` exists and has not exited (a zombie has).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        // The command name may hold spaces and parentheses: the state
        // follows the last ')'.
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// SIGKILLs process `pid`; one already gone is no error.
pub fn kill(pid: u32) {
    if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(p, Signal::KILL);
    }
}

/// A child process the test started under a [`Tag`], in its own process
/// group. Dropping it SIGKILLs the group and every process carrying the
/// tag, then reaps the child.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    tag: Arc<Tag>,
    /// Whether dropping it kills its group and tag (see [`Spawned::release`]).
    armed: bool,
    /// Whether the child was reaped: its pid (and so its group id) may then
    /// belong to another process, and only the tag is used.
    reaped: bool,
}

impl Spawned {
    /// Starts `cmd` under `tag`.
    pub fn spawn(cmd: &mut Command, tag: &Arc<Tag>) -> io::Result<Spawned> {
        let child = tag.apply(cmd).spawn()?;
        Ok(Spawned {
            child,
            tag: tag.clone(),
            armed: true,
            reaped: false,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tag it runs under.
    pub fn tag(&self) -> &Arc<Tag> {
        &self.tag
    }

    /// The child itself (its pipes, `try_wait`).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status, if it has exited (and is then reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let st = self.child.try_wait().ok().flatten();
        self.reaped |= st.is_some();
        st
    }

    /// Reads its piped stdout and stderr to their ends and waits for it
    /// (as [`Command::output`] does).
    pub fn wait_output(&mut self) -> io::Result<Output> {
        let out = self.child.stdout.take();
        let err = self.child.stderr.take();
        let errs = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut e) = err {
                let _ = e.read_to_end(&mut v);
            }
            v
        });
        let mut stdout = Vec::new();
        if let Some(mut o) = out {
            o.read_to_end(&mut stdout)?;
        }
        let stderr = errs.join().unwrap_or_default();
        let status = self.child.wait()?;
        self.reaped = true;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the child alone (not its group or tag) and reaps it: what
    /// it started lives on until the tag goes.
    pub fn kill_child(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Kills and reaps the child alone and lets go of it: its group and
    /// the rest of its tag live on (the tag's last holder kills them).
    pub fn release(mut self) {
        self.kill_child();
        self.armed = false;
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if !self.reaped {
            if let Some(g) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
                let _ = kill_process_group(g, Signal::KILL);
            }
            let _ = self.child.kill();
        }
        let left = self.tag.kill_all();
        for p in left {
            eprintln!("tern-test-support: {p} survived SIGKILL");
        }
        let _ = self.child.wait();
    }
}

/// A command run to its end under a fresh tag; whatever it left running is
/// killed when it returns.
pub fn output(cmd: &mut Command) -> io::Result<std::process::Output> {
    let tag = Tag::new();
    tag.apply(cmd).output()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pids(tag: &Tag) -> Vec<u32> {
        let mut v: Vec<u32> = tag.live().iter().map(|p| p.pid).collect();
        v.sort();
        v
    }

    /// Waits until `n` processes carry `tag` (a forked child shows its
    /// parent's environment until it executes).
    fn wait_for(tag: &Tag, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let p = pids(tag);
            if p.len() == n {
                return p;
            }
            assert!(Instant::now() < deadline, "{n} tagged processes: {p:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn dropping_a_spawned_child_kills_what_it_started_in_other_groups() {
        let tag = Tag::new();
        // A grandchild in a session and process group of its own, as the
        // daemon starts its workers.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "setsid sleep 60 & exec sleep 60"]);
        let child = Spawned::spawn(&mut cmd, &tag).unwrap();
        let found = wait_for(&tag, 2);
        assert!(found.contains(&child.pid()), "{found:?}");
        drop(child);
        assert_eq!(pids(&tag), Vec::<u32>::new());
        for p in found {
            assert!(!alive(p), "pid {p} survived");
        }
    }

    #[test]
    fn release_keeps_the_rest_of_the_tag_until_the_tag_goes() {
        let tag = Tag::new();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "setsid sleep 60 & exec sleep 60"]);
        let child = Spawned::spawn(&mut cmd, &tag).unwrap();
        wait_for(&tag, 2);
        let leader = child.pid();
        child.release();
        let left = wait_for(&tag, 1);
        assert!(!left.contains(&leader));
        let var = tag.var().to_string();
        drop(tag);
        assert!(live_with_env(format!("{var}=1").as_bytes()).is_empty());
    }

    #[test]
    fn a_wrapped_executable_runs_under_the_tag() {
        let tag = Tag::new();
        let dir = tempfile::tempdir().unwrap();
        let exe = tag.wrap_exe(Path::new("/bin/sleep"), dir.path());
        let mut child = Command::new(&exe).arg("60").spawn().unwrap();
        let found = wait_for(&tag, 1);
        assert_eq!(found, [child.id()]);
        assert!(cmdline(child.id()).starts_with("/bin/sleep 60"));
        assert!(tag.kill_all().is_empty());
        assert!(!child.wait().unwrap().success());
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not reaped yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(Instant::now() < deadline, "true did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "reaped already"
        );
        child.wait().unwrap();
    }
}
