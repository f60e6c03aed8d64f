//! Disk benchmark: the probe guest's virtio-blk I/O against `fio` on the
//! host, on the same file in the same run. Prints one JSON line per
//! measurement and a ratio line per pair.
//!
//! ```text
//! cargo build --release -p tern -p probe-guest
//! cargo run --release -p tern-block --example disk_bench -- [--secs 10] [--size-mib 512] [--dir DIR] [--tern PATH]
//! ```
//!
//! Cases (both on a raw file and a dynamic VHDX, unthrottled, after the
//! file was filled so reads hit allocated data): 4 KiB random reads at
//! queue depth 1 and 32, and 1 MiB sequential reads (MB/s). Both sides use
//! buffered I/O (Tern's backends use pread through the page cache), fio
//! with `psync` at depth 1 and `io_uring` at 32. fio reads the file as it
//! is: for VHDX that is the container, the same bytes Tern reads under it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tern_block::BlockBackend;

struct Case {
    name: &'static str,
    mix: &'static str,
    fio_rw: &'static str,
    bs: u64,
    qd: u64,
}

const CASES: [Case; 3] = [
    Case {
        name: "randread-4k-qd1",
        mix: "randread",
        fio_rw: "randread",
        bs: 4096,
        qd: 1,
    },
    Case {
        name: "randread-4k-qd32",
        mix: "randread",
        fio_rw: "randread",
        bs: 4096,
        qd: 32,
    },
    Case {
        name: "seqread-1m-qd1",
        mix: "read",
        fio_rw: "read",
        bs: 1 << 20,
        qd: 1,
    },
];

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = arg(&args, "--secs").map_or(10, |s| s.parse().expect("--secs N"));
    let size_mib: u64 = arg(&args, "--size-mib").map_or(512, |s| s.parse().expect("--size-mib N"));
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/examples/disk_bench -> target/<profile>/tern
    let tern = arg(&args, "--tern").map(PathBuf::from).unwrap_or_else(|| {
        exe.parent()
            .and_then(Path::parent)
            .map(|d| d.join("tern"))
            .expect("target dir")
    });
    assert!(
        tern.is_file(),
        "{} missing: cargo build --release -p tern -p probe-guest",
        tern.display()
    );
    let fio = which("fio").expect("fio not installed (apt-get install fio)");
    let tmp = tempfile::Builder::new()
        .prefix("tern-disk-bench")
        .tempdir_in(
            arg(&args, "--dir").unwrap_or_else(|| std::env::temp_dir().display().to_string()),
        )
        .expect("temp dir");
    let size = size_mib << 20;
    let raw = tmp.path().join("bench.img");
    let vhdx_path = tmp.path().join("bench.vhdx");
    fill(&raw, size);
    {
        let d = vhdx::create(&vhdx_path, &vhdx::CreateOptions::dynamic(size)).expect("create VHDX");
        d.close().expect("close VHDX");
        let b = tern_block::vhdx_disk::VhdxDisk::open(&vhdx_path, false).expect("open VHDX");
        let chunk = vec![0x5au8; 1 << 20];
        for off in (0..size).step_by(1 << 20) {
            b.write_at(&chunk, off).expect("fill VHDX");
        }
        b.close().expect("close VHDX");
    }
    for (fmt, file) in [("raw", &raw), ("vhdx", &vhdx_path)] {
        // Warm the page cache for both sides alike.
        let _ = std::fs::read(file);
        for c in &CASES {
            let guest = guest_run(&tern, file, c, secs);
            let host = fio_run(&fio, file, c, secs);
            let (unit, g, h) = if c.mix == "read" {
                ("MB/s", guest.1 / 1e6, host.1 / 1e6)
            } else {
                ("IOPS", guest.0, host.0)
            };
            println!(
                "{{\"bench\":\"disk\",\"format\":\"{fmt}\",\"case\":\"{}\",\"unit\":\"{unit}\",\"guest\":{g:.1},\"fio\":{h:.1},\"ratio\":{:.3},\"secs\":{secs}}}",
                c.name,
                if h > 0.0 { g / h } else { 0.0 }
            );
        }
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|p| p.join(tool))
        .find(|p| p.is_file())
}

fn fill(path: &Path, size: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create raw image");
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..size >> 20 {
        f.write_all(&chunk).expect("fill raw image");
    }
    f.sync_all().expect("sync raw image");
}

/// (IOPS, bytes/s) the guest measured.
fn guest_run(tern: &Path, file: &Path, c: &Case, secs: u64) -> (f64, f64) {
    let wl = format!(
        "probe:blk-iops,bs={},qd={},secs={secs},mix={}",
        c.bs, c.qd, c.mix
    );
    let out = Command::new(tern)
        .args([
            "run", "--memory", "256M", "--serial", "null", "--guest", &wl,
        ])
        .arg("--disk")
        .arg(format!("path={}", file.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run tern");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tern run {wl} failed:\n{stderr}");
    let line = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("[probe] "))
        .find(|l| l.starts_with("blk-iops") && l.contains("result="))
        .unwrap_or_else(|| panic!("no blk-iops report:\n{stderr}"));
    let get = |k: &str| {
        line.split_whitespace()
            .filter_map(|t| t.split_once('='))
            .find(|(key, _)| *key == k)
            .and_then(|(_, v)| v.parse::<f64>().ok())
    };
    let iops = get("iops").unwrap_or_else(|| panic!("no iops= in '{line}'"));
    (iops, iops * c.bs as f64)
}

/// (IOPS, bytes/s) fio measured.
fn fio_run(fio: &Path, file: &Path, c: &Case, secs: u64) -> (f64, f64) {
    let engine = if c.qd > 1 { "io_uring" } else { "psync" };
    let out = Command::new(fio)
        .args([
            "--name=bench",
            "--output-format=json",
            "--time_based",
            "--direct=0",
            "--invalidate=0",
        ])
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--rw={}", c.fio_rw))
        .arg(format!("--bs={}", c.bs))
        .arg(format!("--iodepth={}", c.qd))
        .arg(format!("--ioengine={engine}"))
        .arg(format!("--runtime={secs}"))
        .output()
        .expect("run fio");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let find = |key: &str| -> f64 {
        // "read" : { ... "bw_bytes" : N, "iops" : N.N ...: the first of each
        // after the read section starts.
        let read = text.find("\"read\"").expect("fio json has read");
        let rest = &text[read..];
        let at = rest.find(&format!("\"{key}\"")).expect("key in fio json");
        let v = rest[at + key.len() + 2..]
            .trim_start_matches([' ', ':'])
            .split([',', '\n'])
            .next()
            .unwrap_or("0");
        v.trim().parse().unwrap_or(0.0)
    };
    (find("iops"), find("bw_bytes"))
}
