//! iSCSI read throughput of `tern iscsi serve` against Debian's `tgt` on
//! the same kind of image, same run, measured by libiscsi's `iscsi-perf`
//! (which only reads: write throughput is not measured here).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tern_api::parse_size;

use crate::{tern_exe, Res};

/// `tern-bench iscsi`.
#[derive(clap::Args, Debug)]
pub struct IscsiBench {
    /// Seconds per workload and target.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Image size (filled with data, so reads hit the page cache rather
    /// than holes).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    size: u64,
}

/// A child killed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// tgtd on its own control port; its targets are deleted when dropped.
struct Tgt {
    _daemon: Proc,
    control: String,
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = Command::new("tgtadm")
            .args(["-C", &self.control, "--op", "delete", "--mode", "system"])
            .stderr(Stdio::null())
            .status();
    }
}

/// One workload: iscsi-perf's blocks per request, requests in flight and
/// access pattern.
struct Workload {
    name: &'static str,
    blocks: u32,
    in_flight: u32,
    random: bool,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "seq_read_128k_qd16",
        blocks: 256,
        in_flight: 16,
        random: false,
    },
    Workload {
        name: "rand_read_4k_qd32",
        blocks: 8,
        in_flight: 32,
        random: true,
    },
];

pub fn run(args: IscsiBench) -> i32 {
    match bench(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tern-bench: error: {e}");
            1
        }
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Res<T> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(v) = f() {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("timed out waiting for {what}"))
}

fn image(path: &Path, size: u64) -> Res<()> {
    let chunk = vec![0xA5u8; 1 << 20];
    let mut left = size;
    let mut out = Vec::with_capacity(size as usize);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.extend_from_slice(&chunk[..n]);
        left -= n as u64;
    }
    std::fs::write(path, out).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn free_port() -> Res<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

fn tgtadm(control: &str, args: &[&str]) -> Res<()> {
    let st = Command::new("tgtadm")
        .args(["-C", control, "--lld", "iscsi"])
        .args(args)
        .status()
        .map_err(|e| format!("cannot run tgtadm (Debian package tgt): {e}"))?;
    st.success()
        .then_some(())
        .ok_or_else(|| format!("tgtadm {args:?} failed: {st}"))
}

fn start_tgt(image: &Path, port: u16, iqn: &str) -> Res<Tgt> {
    let control = (31000 + std::process::id() % 30000).to_string();
    let child = Command::new("tgtd")
        .args(["-f", "-C", &control, "--iscsi"])
        .arg(format!("portal=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start tgtd (Debian package tgt; needs root): {e}"))?;
    let t = Tgt {
        _daemon: Proc(child),
        control,
    };
    let sock = format!("/var/run/tgtd/socket.{}", t.control);
    wait_for("tgtd's control socket", || {
        Path::new(&sock).exists().then_some(())
    })?;
    tgtadm(
        &t.control,
        &["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn],
    )?;
    let img = image.to_str().ok_or("image path is not UTF-8")?;
    tgtadm(
        &t.control,
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            img,
        ],
    )?;
    tgtadm(
        &t.control,
        &[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ],
    )?;
    Ok(t)
}

/// Runs iscsi-perf; returns (IOPS, MB/s) of its final average.
fn perf(url: &str, w: &Workload, seconds: u64) -> Res<(u64, u64)> {
    let mut cmd = Command::new("iscsi-perf");
    cmd.args(["-t", &seconds.to_string()])
        .args(["-b", &w.blocks.to_string()])
        .args(["-m", &w.in_flight.to_string()]);
    if w.random {
        cmd.arg("-r");
    }
    let out = cmd
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run iscsi-perf (Debian package libiscsi-bin): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "... iops average 1309 (163 MB/s)" — the last one is the run's.
    let tail = text
        .rsplit("iops average ")
        .next()
        .filter(|_| text.contains("iops average "))
        .ok_or_else(|| format!("iscsi-perf printed no average: {}", text.trim()))?;
    let mut words = tail.split_whitespace();
    let iops = words.next().and_then(|w| w.parse().ok());
    let mbs = words
        .next()
        .and_then(|w| w.trim_start_matches('(').parse().ok());
    match (iops, mbs) {
        (Some(i), Some(m)) => Ok((i, m)),
        _ => Err(format!("cannot read iscsi-perf's average: {}", tail.trim())),
    }
}

fn bench(args: &IscsiBench) -> Res<()> {
    let dir = std::env::temp_dir().join(format!("tern-bench-iscsi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let scratch = Scratch(dir);
    let tern_img = scratch.0.join("tern.img");
    let tgt_img = scratch.0.join("tgt.img");
    image(&tern_img, args.size)?;
    image(&tgt_img, args.size)?;
    let lf = scratch.0.join("listening.json");
    let tern_iqn = "iqn.2026-12.org.tern:bench";
    let child = Command::new(tern_exe()?)
        .args(["iscsi", "serve"])
        .arg(&tern_img)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--iqn",
            tern_iqn,
            "--listening-file",
        ])
        .arg(&lf)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start tern iscsi serve: {e}"))?;
    let _tern = Proc(child);
    let addr: String = wait_for("tern iscsi serve to listen", || {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&lf).ok()?).ok()?;
        v.get("address")?.as_str().map(str::to_string)
    })?;
    let tgt_port = free_port()?;
    let tgt_iqn = "iqn.2026-12.org.tern:bench-tgt";
    let _tgt = start_tgt(&tgt_img, tgt_port, tgt_iqn)?;
    let targets = [
        ("tern", format!("iscsi://{addr}/{tern_iqn}/0")),
        ("tgt", format!("iscsi://127.0.0.1:{tgt_port}/{tgt_iqn}/1")),
    ];
    for w in WORKLOADS {
        let mut iops_of = Vec::new();
        for (name, url) in &targets {
            let (iops, mb) = perf(url, w, args.seconds)?;
            println!(
                "{}",
                json!({"bench": "iscsi", "target": name, "workload": w.name,
                       "seconds": args.seconds, "iops": iops, "mb_per_s": mb})
            );
            iops_of.push(iops);
        }
        // Same request size on both: the IOPS ratio is the throughput ratio.
        let ratio = if iops_of[1] > 0 {
            iops_of[0] as f64 / iops_of[1] as f64
        } else {
            0.0
        };
        println!(
            "{}",
            json!({"bench": "iscsi", "workload": w.name, "tern_vs_tgt": (ratio * 100.0).round() / 100.0})
        );
    }
    Ok(())
}
