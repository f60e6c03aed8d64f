//! Benchmark: 4 KiB strided-random read and write IOPS and 1 MiB sequential
//! MB/s on a dynamic VHDX through `vhdx`, the same on a raw file, and
//! `qemu-img bench` (-f vhdx and -f raw, queue depth 1, same access
//! pattern) on the same files in the same run. Prints JSON lines, then
//! ratios. Usage: `bench [dir] [size_mib]` (default /tmp, 1024).
//!
//! Every access is buffered (page cache), for all three: this measures the
//! software path, which is what differs between them. As in `qemu-img
//! bench`, the final flush is not timed. Read figures are the best of three
//! runs; the sequential write to the VHDX includes block allocation.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use vhdx::{CreateOptions, Disk};

const K4: u64 = 4096;
const M1: u64 = 1 << 20;
/// Stride of the "random" pattern: a prime number of 4 KiB pages, so the
/// offsets (mod the size) visit pages in a scattered order.
const STRIDE: u64 = 7919 * K4;
const OPS: u64 = 50_000;

trait Target {
    fn read(&mut self, buf: &mut [u8], off: u64);
    fn write(&mut self, buf: &[u8], off: u64);
    fn flush(&mut self);
}

impl Target for Disk {
    fn read(&mut self, buf: &mut [u8], off: u64) {
        self.read_at(buf, off).unwrap()
    }
    fn write(&mut self, buf: &[u8], off: u64) {
        self.write_at(buf, off).unwrap()
    }
    fn flush(&mut self) {
        Disk::flush(self).unwrap()
    }
}

impl Target for std::fs::File {
    fn read(&mut self, buf: &mut [u8], off: u64) {
        self.read_exact_at(buf, off).unwrap()
    }
    fn write(&mut self, buf: &[u8], off: u64) {
        self.write_all_at(buf, off).unwrap()
    }
    fn flush(&mut self) {
        self.sync_data().unwrap()
    }
}

fn line(bench: &str, target: &str, value: f64, unit: &str) {
    println!("{{\"bench\":\"{bench}\",\"target\":\"{target}\",\"value\":{value:.1},\"unit\":\"{unit}\"}}");
}

fn pattern() -> Vec<u8> {
    (0..M1 as usize).map(|i| (i * 7 + 1) as u8).collect()
}

/// Writes: [first (allocating) sequential pass MB/s, sequential overwrite
/// MB/s, 4 KiB strided overwrite IOPS].
fn writes(t: &mut dyn Target, size: u64) -> [f64; 3] {
    let mut buf = pattern();
    let mut seq = [0.0; 2];
    for s in &mut seq {
        let start = Instant::now();
        for i in 0..size / M1 {
            buf[0] = i as u8;
            t.write(&buf, i * M1);
        }
        *s = size as f64 / 1e6 / start.elapsed().as_secs_f64();
        t.flush();
    }
    let small = vec![0x33u8; K4 as usize];
    let start = Instant::now();
    let mut off = 0;
    for _ in 0..OPS {
        t.write(&small, off);
        off = (off + STRIDE) % size;
    }
    let rand_w = OPS as f64 / start.elapsed().as_secs_f64();
    t.flush();
    [seq[0], seq[1], rand_w]
}

/// Reads: [sequential MB/s, 4 KiB strided IOPS], one pass.
fn reads(t: &mut dyn Target, size: u64) -> [f64; 2] {
    let mut buf = vec![0u8; M1 as usize];
    let start = Instant::now();
    for i in 0..size / M1 {
        t.read(&mut buf, i * M1);
    }
    let seq_r = size as f64 / 1e6 / start.elapsed().as_secs_f64();
    let mut small = vec![0u8; K4 as usize];
    let start = Instant::now();
    let mut off = 0;
    for _ in 0..OPS {
        t.read(&mut small, off);
        off = (off + STRIDE) % size;
    }
    [seq_r, OPS as f64 / start.elapsed().as_secs_f64()]
}

fn report(name: &str, v: &[f64; 5]) {
    line("seq_alloc_write_1m", name, v[0], "MB/s");
    line("seq_write_1m", name, v[1], "MB/s");
    line("rand_write_4k", name, v[2], "IOPS");
    line("seq_read_1m", name, v[3], "MB/s");
    line("rand_read_4k", name, v[4], "IOPS");
}

/// `qemu-img bench` on `file`: returns seconds for the run.
fn qemu_bench(
    fmt: &str,
    file: &Path,
    count: u64,
    size: u64,
    step: u64,
    write: bool,
) -> Option<f64> {
    let mut c = Command::new("qemu-img");
    c.args(["bench", "-f", fmt, "-d", "1", "-t", "writeback", "-c"])
        .arg(count.to_string())
        .args(["-s", &size.to_string(), "-S", &step.to_string()]);
    if write {
        c.arg("-w");
    }
    let out = c.arg(file).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!(
            "qemu-img bench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    // "Run completed in 1.234 seconds."
    let secs = text
        .split("completed in ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(secs)
}

/// The same measurements by `qemu-img bench` (no allocating pass: the
/// files are already allocated).
fn qemu(name: &str, fmt: &str, file: &Path, size: u64) -> Option<[f64; 5]> {
    let n = size / M1;
    let seq_w = size as f64 / 1e6 / qemu_bench(fmt, file, n, M1, M1, true)?;
    let best = |count: u64, bs: u64, step: u64| -> Option<f64> {
        let mut t = f64::MAX;
        for _ in 0..3 {
            t = t.min(qemu_bench(fmt, file, count, bs, step, false)?);
        }
        Some(t)
    };
    let seq_r = size as f64 / 1e6 / best(n, M1, M1)?;
    let rand_r = OPS as f64 / best(OPS, K4, STRIDE)?;
    let rand_w = OPS as f64 / qemu_bench(fmt, file, OPS, K4, STRIDE, true)?;
    let v = [0.0, seq_w, rand_w, seq_r, rand_r];
    line("seq_write_1m", name, seq_w, "MB/s");
    line("rand_write_4k", name, rand_w, "IOPS");
    line("seq_read_1m", name, seq_r, "MB/s");
    line("rand_read_4k", name, rand_r, "IOPS");
    Some(v)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "/tmp".into());
    let size = args
        .next()
        .and_then(|a| a.parse::<u64>().ok())
        .unwrap_or(1024)
        * M1;
    let dir = Path::new(&dir).join(format!("vhdx-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vpath = dir.join("bench.vhdx");
    let rpath = dir.join("bench.raw");

    let mut d = vhdx::create(&vpath, &CreateOptions::dynamic(size)).unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&rpath)
        .unwrap();
    f.set_len(size).unwrap();
    let wv = writes(&mut d, size);
    let wr = writes(&mut f, size);
    // Reads alternate between the two, best of five: the machine is shared.
    let (mut rv, mut rr) = ([0.0f64; 2], [0.0f64; 2]);
    for _ in 0..5 {
        let a = reads(&mut d, size);
        let b = reads(&mut f, size);
        for i in 0..2 {
            rv[i] = rv[i].max(a[i]);
            rr[i] = rr[i].max(b[i]);
        }
    }
    d.close().unwrap();
    drop(f);
    let v = [wv[0], wv[1], wv[2], rv[0], rv[1]];
    let r = [wr[0], wr[1], wr[2], rr[0], rr[1]];
    report("vhdx", &v);
    report("raw", &r);
    // qemu-img bench on the same (now fully allocated) files.
    let qv = qemu("qemu-img-vhdx", "vhdx", &vpath, size);
    let qr = qemu("qemu-img-raw", "raw", &rpath, size);
    let names = [
        "seq_alloc_write_1m",
        "seq_write_1m",
        "rand_write_4k",
        "seq_read_1m",
        "rand_read_4k",
    ];
    let ratio = |what: &str, i: usize, a: f64, b: f64| {
        if a > 0.0 && b > 0.0 {
            println!(
                "{{\"ratio\":\"{what}\",\"bench\":\"{}\",\"value\":{:.3}}}",
                names[i],
                a / b
            );
        }
    };
    for i in 0..5 {
        ratio("vhdx/raw", i, v[i], r[i]);
        if let Some(q) = qv {
            ratio("vhdx/qemu-img-vhdx", i, v[i], q[i]);
            if let Some(qr) = qr {
                ratio("qemu-img-vhdx/qemu-img-raw", i, q[i], qr[i]);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
