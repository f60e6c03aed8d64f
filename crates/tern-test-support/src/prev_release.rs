//! The previous release, built from git history: the commit named in
//! `release/previous-release.toml`, extracted with `git archive` under
//! `target/prev-release/src` and built there (`tern`, `ternd` and the
//! probe guest only, offline, with its own `Cargo.lock`) into
//! `target/prev-release/target`, which later runs reuse. When the release
//! file names another commit, its sources replace the old ones and are
//! stamped with the current time, so cargo rebuilds every workspace crate
//! and reuses the dependencies that did not change.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// A built previous release.
#[derive(Clone, Debug)]
pub struct PrevRelease {
    /// Its commit.
    pub commit: String,
    /// The migration protocol version it speaks (from the release file).
    pub protocol: u32,
    /// Where its binaries are (`tern`, `ternd`, `probe-guest`).
    pub bin_dir: PathBuf,
}

impl PrevRelease {
    /// Its `tern` binary (CLI and worker).
    pub fn tern(&self) -> PathBuf {
        self.bin_dir.join("tern")
    }

    /// Its `ternd` binary.
    pub fn ternd(&self) -> PathBuf {
        self.bin_dir.join("ternd")
    }

    /// `tern run` of the previous release.
    pub fn tern_run(&self) -> Command {
        let mut c = Command::new(self.tern());
        c.arg("run");
        c
    }
}

/// The repository this test build comes from.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/tern-test-support lies two levels down")
        .to_path_buf()
}

/// The release file.
pub fn release_file() -> PathBuf {
    repo_root().join("release/previous-release.toml")
}

/// Reads `release.KEY` from the release file (`git config` reads it: see
/// the file's comment).
fn release_value(key: &str) -> Result<String, String> {
    let out = Command::new("git")
        .arg("config")
        .arg("-f")
        .arg(release_file())
        .arg(format!("release.{key}"))
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!("{} has no release.{key}", release_file().display()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The previous release, built (once per test process; a later process
/// finds the build done). `None` after a loud skip when git or the commit
/// is missing (a shallow clone, an unpacked tarball). A build that fails
/// panics with its log: that is a real failure.
pub fn build(test: &str) -> Option<PrevRelease> {
    static BUILT: OnceLock<Result<PrevRelease, String>> = OnceLock::new();
    match BUILT.get_or_init(build_once) {
        Ok(p) => Some(p.clone()),
        Err(why) => {
            crate::skip(test, why);
            None
        }
    }
}

fn build_once() -> Result<PrevRelease, String> {
    let commit = release_value("commit")?;
    let protocol = release_value("protocol")?
        .parse()
        .map_err(|e| format!("release.protocol in the release file: {e}"))?;
    let root = repo_root();
    let known = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !known.success() {
        return Err(format!(
            "the previous release {commit} is not in the git history of {} (a shallow clone? \
             git fetch --unshallow)",
            root.display()
        ));
    }
    let base = crate::target_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .join("prev-release");
    let src = base.join("src");
    let stamp = base.join("commit");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(commit.as_str()) {
        extract(&root, &commit, &base, &src);
        std::fs::write(&stamp, &commit).unwrap();
    }
    let target = base.join("target");
    seed(&target.join("debug"));
    let t = Instant::now();
    // The probe guest builds only with the dev profile's panic = "abort";
    // `tern` is built with the strategy this build's dependencies were
    // built with (TERN_CARGO_PANIC, set by scripts/test.sh), so the
    // dependencies seeded from this build are reused, not rebuilt.
    let mut log = cargo_build(&commit, &src, &target, &["-p", "probe-guest"]);
    let mut args = vec!["-p", "tern"];
    let unwind = std::env::var("TERN_CARGO_PANIC").is_ok_and(|p| p == "unwind");
    if unwind {
        args.extend(["--config", "profile.dev.panic=\"unwind\""]);
    }
    log.push_str(&cargo_build(&commit, &src, &target, &args));
    eprintln!(
        "previous release {commit} (protocol {protocol}): built in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        if log.contains("Compiling") {
            "compiled"
        } else {
            "up to date"
        }
    );
    Ok(PrevRelease {
        commit,
        protocol,
        bin_dir: target.join("debug"),
    })
}

/// Hard-links this build's dependency artifacts into the previous
/// release's empty target directory: cargo finds the crates both releases
/// use at the same versions, features and profile up to date there and
/// builds only the rest (minutes less on a fresh CI machine). Best effort:
/// without it everything is compiled.
fn seed(prev_debug: &Path) {
    if prev_debug.join(".fingerprint").exists() {
        return;
    }
    let ours = crate::target_dir();
    let _ = std::fs::create_dir_all(prev_debug);
    for dir in ["deps", "build", ".fingerprint"] {
        let from = ours.join(dir);
        if from.is_dir() {
            let _ = Command::new("cp")
                .arg("-al")
                .arg(&from)
                .arg(prev_debug)
                .status();
        }
    }
}

/// `cargo build ARGS` of the previous release; its log, or a panic with
/// it when the build fails.
fn cargo_build(commit: &str, src: &Path, target: &Path, args: &[&str]) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(src)
        .env("CARGO_TARGET_DIR", target)
        // Its sources never change: incremental state would only cost
        // time and disk.
        .env("CARGO_INCREMENTAL", "0")
        .args(["build", "--offline", "--locked"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "building the previous release {commit} in {} failed:\n{log}",
        src.display()
    );
    log
}

/// `git archive` of `commit` into `src`, replacing what was there, every
/// file stamped now (archived files carry the commit's time, older than
/// artifacts built from another commit, which cargo would then reuse).
fn extract(root: &Path, commit: &str, base: &Path, src: &Path) {
    std::fs::create_dir_all(base).unwrap();
    if src.exists() {
        std::fs::remove_dir_all(src).unwrap();
    }
    let tmp = tempfile::tempdir_in(base).unwrap();
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run git archive");
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(tmp.path())
        .stdin(archive.stdout.take().expect("piped"))
        .status()
        .expect("run tar");
    assert!(archive.wait().unwrap().success(), "git archive {commit}");
    assert!(tar.success(), "tar -x of {commit}");
    let touched = Command::new("find")
        .arg(tmp.path())
        .args(["-type", "f", "-exec", "touch", "{}", "+"])
        .status()
        .expect("run find");
    assert!(touched.success(), "touching the sources of {commit}");
    std::fs::rename(tmp.keep(), src).unwrap();
}
