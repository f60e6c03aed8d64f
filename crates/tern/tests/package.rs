//! The Debian package, end to end: `scripts/build-deb.sh` (cargo-deb) packs
//! this build's binaries; `dpkg -i` installs it for real, with its
//! maintainer scripts, into a copy-on-write view of this machine (a private
//! mount namespace with overlays on /usr, /etc and /var, so the host is left
//! as it was); then the installed unit's `ExecStart`, run exactly as
//! written, serves the API, and a VM it starts runs the installed worker
//! and probe image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tern_test_support::procs::{Spawned, Tag};
use tern_test_support::{poll, skip};

const TEST: &str = "debian_package_installs_and_its_unit_serves_the_api";

/// Files the package must install.
const INSTALLED: &[&str] = &[
    "/usr/bin/tern",
    "/usr/bin/ternd",
    "/usr/lib/tern/probe-guest",
    "/usr/share/bash-completion/completions/tern",
    "/usr/share/bash-completion/completions/ternd",
    "/usr/share/zsh/vendor-completions/_tern",
    "/usr/share/fish/vendor_completions.d/tern.fish",
    "/usr/share/man/man1/tern.1.gz",
    "/usr/share/man/man1/tern-vm-create.1.gz",
    "/usr/share/man/man8/ternd.8.gz",
];

/// Runs in the private mount namespace: overlays, `dpkg -i`, the package's
/// file list into `$2/files`, the unit into `$2/unit`, then the unit's
/// ExecStart as written (it replaces this shell, so the test's child is
/// the daemon). `$1`: the .deb; `$2`: the scratch directory.
const IN_NAMESPACE: &str = r#"set -eu
deb=$1 t=$2
for d in usr etc var; do
  mkdir -p "$t/up/$d" "$t/work/$d"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$t/up/$d,workdir=$t/work/$d" "/$d"
done
dpkg -i "$deb" >"$t/dpkg.log" 2>&1 || { cat "$t/dpkg.log"; exit 70; }
dpkg -L tern >"$t/files"
unit=$(dpkg -L tern | grep '/systemd/system/ternd.service$')
cp "$unit" "$t/unit"
# What systemd does for StateDirectory=tern before ExecStart.
install -d -m 0750 /var/lib/tern
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
exec $exec_start
"#;

fn cargo_deb_available() -> bool {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let in_home = home.is_some_and(|h| h.join("bin/cargo-deb").is_file());
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("cargo-deb").is_file()));
    in_home || on_path
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

#[test]
fn debian_package_installs_and_its_unit_serves_the_api() {
    if !cargo_deb_available() {
        skip(
            TEST,
            "cargo-deb is not installed (scripts/setup-test-deps.sh installs it)",
        );
        return;
    }
    if !is_root() {
        skip(
            TEST,
            "installing a package (even into an overlay) needs root",
        );
        return;
    }
    for tool in ["dpkg", "unshare", "nsenter"] {
        if tern_test_support::tool(TEST, tool).is_none() {
            return;
        }
    }
    if !tern_test_support::kvm_available(TEST) {
        return;
    }
    // The binaries the package takes (target/debug for this profile).
    tern_test_support::tern_exe();
    tern_test_support::ternd_exe();
    tern_test_support::probe_guest();

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("deb");
    let built = Command::new(workspace_root().join("scripts/build-deb.sh"))
        .args(["--profile", "dev", "--no-build", "--out"])
        .arg(&out)
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build-deb.sh failed: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("build-deb.sh made no .deb");

    // The control file: a real package with its dependencies worked out.
    let info = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Package: tern"), "{info}");
    assert!(
        info.contains("Depends:") && info.contains("libc6"),
        "{info}"
    );

    let host_had_package = Path::new("/usr/lib/tern/probe-guest").exists();
    let scratch = tmp.path().join("root");
    std::fs::create_dir_all(&scratch).unwrap();
    let tag = Tag::new();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        IN_NAMESPACE,
        "sh",
    ])
    .arg(&deb)
    .arg(&scratch)
    .stdin(Stdio::null())
    .stdout(Stdio::from(
        std::fs::File::create(tmp.path().join("ternd.log")).unwrap(),
    ))
    .stderr(Stdio::from(
        std::fs::File::create(tmp.path().join("ternd.err")).unwrap(),
    ));
    let mut daemon = Spawned::spawn(&mut cmd, &tag).unwrap();

    // The installed CLI, run inside the daemon's mount namespace (a UNIX
    // socket bound on an overlay cannot be reached through its upper
    // directory from outside).
    let state = scratch.join("up/var/lib/tern");
    let ns_pid = daemon.pid().to_string();
    let tern = |args: &[&str]| {
        let mut c = Command::new("nsenter");
        c.args(["--mount", "--target", &ns_pid, "--", "/usr/bin/tern"])
            .args(args)
            .env("TERN_HOST", "unix:/var/lib/tern/ternd.sock")
            .stdin(Stdio::null());
        tag.apply(&mut c);
        c.output().unwrap()
    };
    poll(Duration::from_secs(60), "the installed ternd's API", || {
        if let Some(status) = daemon.try_wait() {
            panic!(
                "the unit's ExecStart ended with {status}: {}{}",
                std::fs::read_to_string(tmp.path().join("ternd.log")).unwrap_or_default(),
                std::fs::read_to_string(tmp.path().join("ternd.err")).unwrap_or_default()
            );
        }
        tern(&["host", "--json"]).status.success().then_some(())
    });

    let files = std::fs::read_to_string(scratch.join("files")).unwrap();
    for f in INSTALLED {
        assert!(
            files.lines().any(|l| l == *f),
            "the package does not install {f}; it has:\n{files}"
        );
    }
    let unit = std::fs::read_to_string(scratch.join("unit")).unwrap();
    assert!(unit.contains("KillMode=process"), "{unit}");
    // The package's postinst enabled the unit, as a Debian service does.
    let wants = scratch.join("up/etc/systemd/system/multi-user.target.wants/ternd.service");
    assert!(
        wants.symlink_metadata().is_ok(),
        "dpkg -i did not enable ternd.service ({} missing)",
        wants.display()
    );
    // And the host is as it was: the install went to the overlays only.
    assert_eq!(
        Path::new("/usr/lib/tern/probe-guest").exists(),
        host_had_package,
        "dpkg -i in the namespace changed the host's /usr"
    );

    // A VM from the installed daemon runs the installed worker and probe.
    let created = tern(&[
        "vm",
        "create",
        "pkg",
        "--memory",
        "64M",
        "--guest",
        "probe:touch",
    ]);
    assert!(
        created.status.success(),
        "vm create: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let started = tern(&["vm", "start", "pkg", "--json"]);
    assert!(
        started.status.success(),
        "vm start: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let vm: serde_json::Value = serde_json::from_slice(&started.stdout).unwrap();
    let pid = vm["pid"].as_u64().expect("a running VM has a worker pid") as u32;
    let worker = tern_test_support::procs::cmdline(pid);
    assert!(worker.starts_with("/usr/bin/tern run"), "worker: {worker}");
    let serial_logs = state.join("logs");
    poll(Duration::from_secs(30), "the guest's greeting", || {
        std::fs::read_dir(&serial_logs)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".serial.log"))
            .any(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|s| {
                    s.contains("tern probe guest: 1 vCPUs, 64 MiB, workload 'touch'")
                })
            })
            .then_some(())
    });
    let stopped = tern(&["vm", "stop", "pkg", "--json"]);
    assert!(
        stopped.status.success(),
        "vm stop: {}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    assert!(!tern_test_support::alive(pid), "the worker ended");

    // systemd stops the unit with SIGTERM (KillSignal=); the daemon exits 0.
    let term = Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = daemon
        .wait_timeout(Duration::from_secs(30))
        .expect("ternd ends on SIGTERM");
    assert!(status.success(), "ternd exited with {status}");
}
