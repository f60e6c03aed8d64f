//! The OpenAPI document against the daemon that serves it: schemathesis
//! (PyPI, installed by `scripts/setup-test-deps.sh`) runs every check,
//! stateful phase included (it follows the document's links from the
//! operations that create VMs, disks, checkpoints and migrations), against a
//! real `ternd` on TCP with a bearer token, with real workers (`/dev/kvm`).
//! Any failure fails the test with schemathesis's report.
//!
//! Needs `cargo build -p tern -p probe-guest` first (`ternd`, `tern` and the
//! probe guest beside the test binary). `TERN_SCHEMATHESIS_EXAMPLES` sets the
//! examples per operation (default 20: about a minute on two cores),
//! `TERN_SCHEMATHESIS_SEED` the seed (default 1).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TEST: &str = "schemathesis_finds_nothing";

/// Settings the run needs beyond the command line, each with its reason.
const CONFIG: &str = r#"
# A long poll of GET /v1/events waits up to 60 s for an event that never
# comes: generated waits would make the run take hours.
[parameters]
"query.wait" = 0

# What no schema can know, refused with 400 naming it: a disk path outside
# this host's allowed directories (create_disk, incoming_migration), a
# min_iops above max_iops, shrinking a disk.
[[operations]]
include-operation-id = ["create_disk", "incoming_migration", "set_disk_qos", "resize_disk"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "5xx"]

# Switches and NICs: whether an uplink or address fits the switch's type,
# whether the uplink interface exists on this host, and whether a MAC is
# unicast are refused with 400 naming them.
[[operations]]
include-operation-id = ["create_switch", "add_nic"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "5xx"]

# The console is a WebSocket, which schemathesis does not speak: its plain
# GET is refused with 400 (documented) asking for the upgrade.
[[operations]]
include-operation-id = "console"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409", "5xx"]

# A generated destination is not a daemon: 502 (documented) says the peer
# cannot be reached.
[[operations]]
include-operation-id = "migrate_vm"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502"]
"#;

/// A `ternd` on a temporary state directory, TCP on 127.0.0.1 with a token.
/// Dropping it kills the daemon and every worker it started (workers run in
/// process groups of their own and outlive a daemon by design).
struct Ternd {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    token: String,
}

impl Ternd {
    fn start(bin: &Path) -> Ternd {
        let dir = tempfile::Builder::new()
            .prefix("ternd-schemathesis")
            .tempdir()
            .unwrap();
        let token = "schemathesis-token".to_string();
        std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
        let mut child = Command::new(bin.join("ternd"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("d.sock"))
            .args(["--tcp", "127.0.0.1:0", "--token-file"])
            .arg(dir.path().join("token"))
            .arg("--worker")
            .arg(bin.join("tern"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // "ternd: listening on unix:PATH and http://ADDR"; the rest of its
        // log goes on to our stderr.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(url) = line.split(" and ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
                eprint!("ternd: {line}");
                line.clear();
            }
        });
        let mut d = Ternd {
            child,
            dir,
            url: String::new(),
            token,
        };
        d.url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ternd did not say where it listens");
        d
    }

    /// Processes whose command line names our state directory: the daemon
    /// and its workers.
    fn ours(&self) -> Vec<(i32, String)> {
        let needle = self.dir.path().to_string_lossy().into_owned();
        let me = std::process::id() as i32;
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if pid != me && cmd.contains(&needle) {
                found.push((pid, cmd));
            }
        }
        found
    }

    /// Kills the daemon and its workers; returns what was still alive.
    fn stop(&mut self) -> Vec<(i32, String)> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let left = self.ours();
        for (pid, _) in &left {
            if let Some(p) = rustix::process::Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        let t = Instant::now();
        while !self.ours().is_empty() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        left
    }
}

impl Drop for Ternd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn built(bin: &Path) -> bool {
    ["ternd", "tern", "probe-guest"]
        .iter()
        .all(|b| bin.join(b).is_file())
}

#[test]
fn schemathesis_finds_nothing() {
    let Some(st) = tern_test_support::tool(TEST, "schemathesis") else {
        return;
    };
    if !tern_test_support::kvm_available(TEST) {
        return;
    }
    let bin: PathBuf = tern_test_support::target_dir();
    assert!(
        built(&bin),
        "ternd, tern or probe-guest missing in {}: cargo build -p tern -p probe-guest first",
        bin.display()
    );
    let examples = std::env::var("TERN_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "20".into());
    let seed = std::env::var("TERN_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let mut d = Ternd::start(&bin);
    let config = d.dir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let t = Instant::now();
    let out = Command::new(st)
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{}/openapi.json", d.url))
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", d.token))
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", &examples])
        .args(["--seed", &seed])
        .args(["--request-timeout", "30"])
        .args(["--generation-database", "none"])
        .arg("--report-dir")
        .arg(d.dir.path().join("report"))
        .current_dir(d.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "schemathesis ran {:.0} s, exit {:?}",
        t.elapsed().as_secs_f64(),
        out.status.code()
    );
    let killed = d.stop();
    eprintln!("stopped ternd and {} worker(s) still running", killed.len());
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    // The run must have reached every operation, not just the document
    // (all but `GET /openapi.json`, which takes no input to generate).
    let tested = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let documented = tern_api::openapi::operations().len();
    assert!(
        tested + 1 >= documented,
        "schemathesis tested {tested} of {documented} operations:\n{report}"
    );
    let left = d.ours();
    assert!(left.is_empty(), "processes outlived the test: {left:?}");
}
