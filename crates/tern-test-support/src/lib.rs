//! Helpers shared by Tern's tests.
//!
//! A test that cannot run here (no `/dev/kvm`, a host tool missing) must not
//! pass silently: [`skip`] prints a loud line and appends it to the file named
//! by `TERN_SKIP_LOG`, which the test script counts and prints at the end.
//!
//! Processes a test starts go through [`worker::Worker`] (`tern run`),
//! [`ternd::Ternd`] (the daemon and the CLI) or [`procs`]: each is killed
//! with everything it started when its value is dropped, by a panic too.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod netns;
pub mod prev_release;
pub mod procs;
pub mod ternd;
pub mod worker;

/// The worker protocol the harness speaks, for tests to name requests.
pub use tern_worker_proto as proto;

pub use procs::{alive, Tag};
pub use ternd::Ternd;
pub use worker::{tern_run, Worker};

/// Records that `test` was skipped for `reason`. Call it, then `return`.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIP {test}: {reason}");
    eprintln!("\n*** {line} ***\n");
    if let Some(path) = std::env::var_os("TERN_SKIP_LOG") {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// True when `/dev/kvm` can be opened read-write; otherwise records a skip.
pub fn kvm_available(test: &str) -> bool {
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            skip(test, &format!("/dev/kvm not usable: {e}"));
            false
        }
    }
}

/// Finds `tool` on PATH; otherwise records a skip.
pub fn tool(test: &str, tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip(test, &format!("host tool '{tool}' not installed"));
    }
    found
}

/// The workspace's target directory for the current profile (where
/// `tern` and `probe-guest` are built), derived from the test executable.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// A binary of the workspace built beside the tests; panics naming the
/// build command when it is missing.
fn built(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.is_file(),
        "{} missing: build it first (cargo build -p tern)",
        p.display()
    );
    p
}

/// The `tern` binary (CLI and `tern run` worker).
pub fn tern_exe() -> PathBuf {
    built("tern")
}

/// The `ternd` daemon binary.
pub fn ternd_exe() -> PathBuf {
    built("ternd")
}

/// Polls `f` every 20 ms until it returns `Some`; panics naming `what`
/// after `timeout`.
pub fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of the probe guest image built beside the tests.
pub fn probe_guest() -> PathBuf {
    let p = target_dir().join("probe-guest");
    assert!(
        p.is_file(),
        "{} missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// The distribution kernel the Linux tests boot (`TERN_TEST_KERNEL`, else
/// the newest `/boot/vmlinuz-*` from Debian's linux-image-amd64); otherwise
/// records a skip.
pub fn debian_kernel(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TERN_TEST_KERNEL") {
        return Some(p.into());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    let k = found.pop();
    if k.is_none() {
        skip(
            test,
            "no /boot/vmlinuz-* (apt-get install linux-image-amd64)",
        );
    }
    k
}
