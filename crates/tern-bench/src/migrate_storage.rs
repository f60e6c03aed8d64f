//! `tern-bench migrate-storage`: shared-nothing live migration of a probe
//! VM with a dynamic VHDX holding data, between two network namespaces
//! joined by a 1 Gbit/s veth (or over loopback with `--no-netns`): the
//! destination creates the image in its own directory. Prints the total
//! time, the downtime, the bytes on the wire and the link's utilisation
//! (wire bits per second over the link's rate) as JSON lines.
//!
//! The data is the migration benchmark's image content (256 KiB pieces in
//! rotation: zeros, text, binaries, random), written over the first
//! `--data` bytes of a `--disk-size` dynamic VHDX (1 MiB blocks).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tern_api::parse_size;
use tern_worker::exit_code;
use tern_worker_proto::migration::{Compression, Migrate, MigrateStatus, MigrationOutcome};
use tern_worker_proto::requests::Shutdown;
use tern_worker_proto::Client;

use crate::image::build_image;
use crate::migrate::{wait_path, Proc};
use crate::netns::{in_ns, NetPair};
use crate::Res;

/// The veth's rate (netns.rs's tbf).
const LINK_BITS: f64 = 1e9;

/// Arguments of `tern-bench migrate-storage`.
#[derive(Args, Debug)]
pub struct MigrateStorageBench {
    /// The VHDX's size.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub disk_size: u64,
    /// Bytes of data written into it (from its start).
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub data: u64,
    /// Guest memory.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub memory: u64,
    /// Where the data's content is kept between runs (built if missing).
    #[arg(long, default_value = "/var/tmp/tern-bench-disk-data.img")]
    pub image: PathBuf,
    /// auto, off, lz4 or zstd (repeatable: one run each).
    #[arg(long, default_values = ["auto", "off"])]
    pub compression: Vec<Compression>,
    /// Over loopback instead of the 1 Gbit/s namespaces.
    #[arg(long)]
    pub no_netns: bool,
}

/// Runs the benchmark; returns the exit code.
pub fn run(args: MigrateStorageBench) -> i32 {
    match run_inner(&args) {
        Ok(()) => exit_code::OK,
        Err(e) => {
            eprintln!("tern-bench: error: bench migrate-storage: {e}");
            exit_code::SOFTWARE
        }
    }
}

/// A dynamic VHDX at `path` holding `args.data` bytes of `content`.
fn make_disk(path: &Path, args: &MigrateStorageBench, content: &Path) -> Res<()> {
    vhdx::create(
        path,
        &vhdx::CreateOptions::dynamic(args.disk_size).block_size(1 << 20),
    )
    .and_then(vhdx::Disk::close)
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let disk = tern_block::open(&tern_block::OpenOptions::new(path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let src = std::fs::File::open(content).map_err(|e| format!("{}: {e}", content.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < args.data {
        let n = (args.data - off).min(buf.len() as u64) as usize;
        std::os::unix::fs::FileExt::read_exact_at(&src, &mut buf[..n], off)
            .map_err(|e| format!("{}: {e}", content.display()))?;
        disk.write_at(&buf[..n], off)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        off += n as u64;
    }
    disk.flush()
        .and_then(|()| disk.close())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn run_inner(args: &MigrateStorageBench) -> Res<()> {
    if args.data > args.disk_size {
        return Err(format!(
            "--data {} is more than --disk-size {}",
            args.data, args.disk_size
        ));
    }
    let exe = crate::tern_exe()?;
    let dir = std::env::temp_dir().join(format!("tern-bench-storage-{}", std::process::id()));
    let (src_dir, dst_dir) = (dir.join("src"), dir.join("dst"));
    for d in [&src_dir, &dst_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let content = build_image(&args.image, args.data)?;
    let net = if args.no_netns {
        None
    } else {
        Some(NetPair::new("s").map_err(|e| format!("no namespaces ({e}); try --no-netns"))?)
    };
    let link = if net.is_some() {
        "veth-1gbit"
    } else {
        "loopback"
    };
    println!(
        "{}",
        json!({"bench": "migrate-storage", "link": link, "disk_size": args.disk_size,
        "data": args.data, "memory": args.memory, "data_content": content})
    );
    let disk = src_dir.join("data.vhdx");
    for comp in &args.compression {
        let _ = std::fs::remove_file(&disk);
        let _ = std::fs::remove_file(dst_dir.join("data.vhdx"));
        let t = Instant::now();
        make_disk(&disk, args, &args.image)?;
        let setup_ms = t.elapsed().as_secs_f64() * 1e3;
        match one_run(&exe, &dir, net.as_ref(), args, &disk, &dst_dir, *comp) {
            Ok(v) => println!(
                "{}",
                json!({"setup_ms": setup_ms, "link": link, "result": v})
            ),
            Err(e) => println!(
                "{}",
                json!({"bench": "migrate-storage", "link": link, "compression": comp, "error": e})
            ),
        }
    }
    drop(net);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One migration; returns its figures.
fn one_run(
    exe: &Path,
    dir: &Path,
    net: Option<&NetPair>,
    args: &MigrateStorageBench,
    disk: &Path,
    dst_dir: &Path,
    comp: Compression,
) -> Res<serde_json::Value> {
    let (src_sock, dst_sock) = (dir.join("src.sock"), dir.join("dst.sock"));
    let listening = dir.join("dst.listening");
    for p in [&src_sock, &dst_sock, &listening] {
        let _ = std::fs::remove_file(p);
    }
    let mem = args.memory.to_string();
    let guest = "probe:dirty,mib=64,rate=10+verify";
    let disk_arg = format!("path={}", disk.display());
    let listen = match net {
        Some(n) => format!("tcp:{}:0", n.addr_b),
        None => "tcp:127.0.0.1:0".into(),
    };
    let mut dst = in_ns(net.map(|n| n.b.as_str()), exe);
    dst.args(["run", "--vcpus", "1", "--memory", &mem, "--guest", guest])
        .args([
            "--disk",
            &disk_arg,
            "--serial",
            "null",
            "--incoming",
            &listen,
        ])
        .arg("--listening-file")
        .arg(&listening)
        .arg("--dest-dir")
        .arg(dst_dir)
        .arg("--control")
        .arg(&dst_sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut dst = Proc(dst.spawn().map_err(|e| e.to_string())?);
    let t = Instant::now();
    let to = loop {
        if let Some(l) =
            tern_worker_proto::Listening::read(&listening).map_err(|e| e.to_string())?
        {
            break l.endpoint;
        }
        if dst.0.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Err("destination worker ended before listening".into());
        }
        if t.elapsed() > Duration::from_secs(60) {
            return Err("destination worker did not listen within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut src = in_ns(net.map(|n| n.a.as_str()), exe);
    src.args(["run", "--vcpus", "1", "--memory", &mem, "--guest", guest])
        .args(["--disk", &disk_arg, "--serial", "null", "--control"])
        .arg(&src_sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut src = Proc(src.spawn().map_err(|e| e.to_string())?);
    wait_path(&src_sock, "the source worker")?;
    // Let the guest reach its working set.
    std::thread::sleep(Duration::from_secs(2));
    let ctl = Client::new(&src_sock).with_timeout(Duration::from_secs(30));
    ctl.call(Migrate {
        compression: Some(comp),
        with_storage: true,
        ..Migrate::to(to)
    })
    .map_err(|e| format!("migrate: {}", tern_worker::error_chain(&e)))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let s = loop {
        std::thread::sleep(Duration::from_millis(20));
        let s = ctl
            .call(MigrateStatus {})
            .map_err(|e| tern_worker::error_chain(&e))?;
        match s.outcome {
            Some(MigrationOutcome::Completed) => break s,
            Some(_) => return Err(format!("migration: {s:?}")),
            None if Instant::now() > deadline => return Err(format!("migration hangs: {s:?}")),
            None => {}
        }
    };
    let _ = src.0.wait();
    let _ = wait_path(&dst_sock, "the destination worker").and_then(|()| {
        Client::new(&dst_sock)
            .call(Shutdown {})
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let _ = dst.0.wait();
    let secs = s.elapsed_ms / 1e3;
    let wire_bits_per_s = s.bytes_sent as f64 * 8.0 / secs.max(1e-3);
    let moved = dst_dir.join("data.vhdx");
    Ok(json!({
        "bench": "migrate-storage",
        "compression": comp,
        "codec": s.compression,
        "total_ms": s.elapsed_ms,
        "downtime_ms": s.downtime_ms,
        "rounds": s.rounds,
        "channels": s.channels,
        "bytes_sent": s.bytes_sent,
        "disk_total": s.disk_total,
        "disk_sent": s.disk_sent,
        "memory_pages_sent": s.pages_sent,
        "wire_gbit_per_s": wire_bits_per_s / 1e9,
        "link_utilisation": net.map(|_| wire_bits_per_s / LINK_BITS),
        "source_image_bytes": std::fs::metadata(disk).map(|m| m.len()).ok(),
        "destination_image_bytes": std::fs::metadata(&moved).map(|m| m.len()).ok(),
    }))
}
