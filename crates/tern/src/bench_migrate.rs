//! `tern bench migrate`: Tern against QEMU on the same memory image, over
//! loopback and over a 1 Gbit/s veth between two network namespaces.
//!
//! Both VMs start paused with the same memory image, loaded copy-on-write
//! from a file (QEMU: `memory-backend-file,share=off` with `-S`; Tern:
//! `--memory-file IMG,lazy --paused`), and migrate to a second process of
//! their own kind. With `--prealloc` all memory is resident before the
//! clock starts, as in a VM that has been running: the sources load the
//! image in (QEMU `prealloc=on` on the file backend, which copies every
//! page; Tern `--memory-file IMG`) and the destinations allocate theirs
//! (QEMU `prealloc=on`, Tern `--prealloc`). Figures are each side's own:
//! QEMU's `total-time` and `downtime` from `query-migrate`, Tern's
//! `elapsed_ms` and `downtime_ms` from `migrate-status`.
//!
//! The memory image (built once, kept): 256 KiB pieces in rotation: zeros,
//! text (files under /usr/share and /usr/lib/python3*), program binaries
//! (/usr/bin, /usr/lib/x86_64-linux-gnu), /dev/urandom.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use tern_worker_proto::migration::{Migrate, MigrateStatus, MigrationOutcome};
use tern_worker_proto::requests::Shutdown;
use tern_worker_proto::{Client, EndpointError};

use crate::exit_code;
use crate::size::parse_size;

/// Arguments of `tern bench migrate`.
#[derive(Args, Debug)]
pub struct MigrateBench {
    /// Guest memory (and image size).
    #[arg(long, default_value = "2G", value_parser = parse_size)]
    memory: u64,
    /// The memory image (built if missing).
    #[arg(long, default_value = "/var/tmp/tern-bench-mem.img")]
    image: PathBuf,
    /// Skip QEMU.
    #[arg(long)]
    no_qemu: bool,
    /// Skip the 1 Gbit/s namespace runs.
    #[arg(long)]
    no_netns: bool,
    /// Skip the dirtying-guest downtime runs.
    #[arg(long)]
    no_dirty: bool,
    /// Runs per case (the best is reported).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// All memory resident before the clock starts, on both VMMs: the
    /// sources load the image in, the destinations allocate their RAM
    /// (Tern `--memory-file IMG` / `--prealloc`, QEMU `prealloc=on`);
    /// otherwise the sources map the image lazily and the destinations
    /// allocate as data arrives.
    #[arg(long)]
    prealloc: bool,
}

type Res<T> = Result<T, String>;

/// Builds the memory image from files on this machine.
fn build_image(path: &Path, size: u64) -> Res<Value> {
    if path.metadata().is_ok_and(|m| m.len() == size) {
        return Ok(json!({"image": path, "reused": true}));
    }
    const PIECE: usize = 256 << 10;
    let collect = |dirs: &[&str], want: &dyn Fn(&Path) -> bool, limit: usize| -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            entries.sort();
            for p in entries {
                let Ok(m) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file() && m.len() > 4096 && want(&p) {
                    out.push(p);
                    if out.len() >= limit {
                        return out;
                    }
                }
            }
        }
        out
    };
    let is_text = |p: &Path| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("txt" | "py" | "pm" | "pl" | "html" | "css" | "js" | "xml" | "h" | "c" | "md")
        ) || p.to_string_lossy().contains("common-licenses")
    };
    let text = collect(
        &["/usr/share", "/usr/lib/python3", "/usr/include"],
        &is_text,
        20000,
    );
    let bins = collect(
        &["/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/sbin"],
        &|_| true,
        20000,
    );
    if text.is_empty() || bins.is_empty() {
        return Err("no text or binary files found to build the memory image".into());
    }
    // An endless reader over a list of files.
    struct Cycle {
        files: Vec<PathBuf>,
        i: usize,
        cur: Option<File>,
        bytes: u64,
    }
    impl Cycle {
        fn fill(&mut self, buf: &mut [u8]) {
            let mut at = 0;
            while at < buf.len() {
                if self.cur.is_none() {
                    self.cur = File::open(&self.files[self.i % self.files.len()]).ok();
                    self.i += 1;
                    continue;
                }
                match self.cur.as_mut().map(|f| f.read(&mut buf[at..])) {
                    Some(Ok(n)) if n > 0 => {
                        at += n;
                        self.bytes += n as u64;
                    }
                    _ => self.cur = None,
                }
            }
        }
    }
    let mut t = Cycle {
        files: text,
        i: 0,
        cur: None,
        bytes: 0,
    };
    let mut b = Cycle {
        files: bins,
        i: 0,
        cur: None,
        bytes: 0,
    };
    let mut rnd = File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?;
    let tmp = path.with_extension("tmp");
    let mut out =
        std::io::BufWriter::new(File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?);
    let mut buf = vec![0u8; PIECE];
    let mut counts = [0u64; 4];
    for i in 0..(size as usize).div_ceil(PIECE) {
        let kind = i % 4;
        match kind {
            0 => buf.fill(0),
            1 => t.fill(&mut buf),
            2 => b.fill(&mut buf),
            _ => rnd.read_exact(&mut buf).map_err(|e| e.to_string())?,
        }
        counts[kind] += PIECE as u64;
        let n = PIECE.min(size as usize - i * PIECE);
        out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    Ok(json!({"image": path, "reused": false,
        "piece_bytes": PIECE, "zero_bytes": counts[0], "text_bytes": counts[1],
        "binary_bytes": counts[2], "random_bytes": counts[3],
        "text_files_read": t.i, "binary_files_read": b.i}))
}

/// Two network namespaces joined by a veth limited to 1 Gbit/s; removed
/// on drop.
pub struct NetPair {
    /// Source namespace.
    pub a: String,
    /// Destination namespace.
    pub b: String,
    /// Destination address.
    pub addr_b: String,
}

fn sh(args: &[&str]) -> Res<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetPair {
    /// Creates the pair (root, iproute2 needed).
    pub fn new(tag: &str) -> Res<NetPair> {
        let id = std::process::id() % 100000;
        let p = NetPair {
            a: format!("tmA{tag}{id}"),
            b: format!("tmB{tag}{id}"),
            addr_b: "10.201.0.2".into(),
        };
        let (va, vb) = (format!("va{id}"), format!("vb{id}"));
        sh(&["ip", "netns", "add", &p.a])?;
        sh(&["ip", "netns", "add", &p.b])?;
        sh(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ])?;
        sh(&["ip", "link", "set", &va, "netns", &p.a])?;
        sh(&["ip", "link", "set", &vb, "netns", &p.b])?;
        for (ns, dev, addr) in [(&p.a, &va, "10.201.0.1/24"), (&p.b, &vb, "10.201.0.2/24")] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&[
                "tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", "1gbit",
                "burst", "1mb", "latency", "10ms",
            ])?;
        }
        Ok(p)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.a]);
        let _ = sh(&["ip", "netns", "del", &self.b]);
    }
}

/// A command run inside `ns` (None: here).
fn in_ns(ns: Option<&str>, prog: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(prog);
            c
        }
        None => Command::new(prog),
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_path(p: &Path, what: &str) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while UnixStream::connect(p).is_err() {
        if Instant::now() > deadline {
            return Err(format!("{what} never opened {}", p.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One Tern migration; returns (total ms, downtime ms, status).
#[allow(clippy::too_many_arguments)]
fn tern_case(
    exe: &Path,
    dir: &Path,
    net: Option<&NetPair>,
    args: &MigrateBench,
    guest: &str,
    image: Option<&Path>,
    compression: &str,
) -> Res<(f64, f64, Value)> {
    let memory = args.memory;
    let (src_sock, dst_sock) = (dir.join("tsrc.sock"), dir.join("tdst.sock"));
    let _ = std::fs::remove_file(&src_sock);
    let _ = std::fs::remove_file(&dst_sock);
    let mem = memory.to_string();
    let mut dst = in_ns(net.map(|n| n.b.as_str()), exe);
    let listen = match net {
        Some(n) => format!("tcp:{}:0", n.addr_b),
        None => "tcp:127.0.0.1:0".into(),
    };
    dst.args(["run", "--vcpus", "1", "--memory", &mem, "--guest", guest])
        .args(["--serial", "null", "--incoming", &listen, "--control"])
        .arg(&dst_sock)
        .args(args.prealloc.then_some("--prealloc"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut dst = Proc(dst.spawn().map_err(|e| e.to_string())?);
    let mut err = BufReader::new(dst.0.stderr.take().expect("piped"));
    let mut to = String::new();
    let mut line = String::new();
    while to.is_empty() {
        line.clear();
        if err.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("destination worker ended before listening".into());
        }
        if let Some(ep) = line
            .trim()
            .strip_prefix("tern: waiting for a migration on ")
        {
            to = ep.to_string();
        }
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    let mut src = in_ns(net.map(|n| n.a.as_str()), exe);
    src.args(["run", "--vcpus", "1", "--memory", &mem, "--guest", guest])
        .args(["--serial", "null", "--control"])
        .arg(&src_sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(img) = image {
        src.arg("--memory-file")
            .arg(if args.prealloc {
                img.display().to_string()
            } else {
                format!("{},lazy", img.display())
            })
            .arg("--paused");
    }
    let mut src = Proc(src.spawn().map_err(|e| e.to_string())?);
    wait_path(&src_sock, "the source worker")?;
    if image.is_none() {
        // A dirtying guest: let it reach its working set first.
        std::thread::sleep(Duration::from_secs(3));
    }
    let req = Migrate {
        compression: Some(compression.parse()?),
        ..Migrate::to(to.parse().map_err(|e: EndpointError| e.to_string())?)
    };
    let src_ctl = Client::new(&src_sock).with_timeout(Duration::from_secs(30));
    src_ctl
        .call(req)
        .map_err(|e| format!("migrate: {}", crate::run::chain(&e)))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let s = loop {
        std::thread::sleep(Duration::from_millis(20));
        let s = src_ctl
            .call(MigrateStatus {})
            .map_err(|e| crate::run::chain(&e))?;
        match s.outcome {
            Some(MigrationOutcome::Completed) => break s,
            Some(_) => return Err(format!("tern migration: {s:?}")),
            None if Instant::now() > deadline => {
                return Err(format!("tern migration hangs: {s:?}"))
            }
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
    Ok((
        s.elapsed_ms,
        s.downtime_ms.unwrap_or(0.0),
        serde_json::to_value(&s).map_err(|e| e.to_string())?,
    ))
}

/// A QMP connection.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn open(path: &Path) -> Res<Qmp> {
        wait_path(path, "QEMU")?;
        let s = UnixStream::connect(path).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut q = Qmp {
            r: BufReader::new(s.try_clone().map_err(|e| e.to_string())?),
            w: s,
        };
        q.read()?; // greeting
        q.cmd("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Res<Value> {
        let mut line = String::new();
        if self.r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("QMP closed".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("{line:?}: {e}"))
    }

    fn cmd(&mut self, name: &str, args: Value) -> Res<Value> {
        writeln!(self.w, "{}", json!({"execute": name, "arguments": args}))
            .map_err(|e| e.to_string())?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {name}: {e}"));
            }
            return Ok(v["return"].clone());
        }
    }
}

/// QEMU variants: (name, multifd channels, compression).
const QEMU_VARIANTS: [(&str, u32, &str); 3] = [
    ("plain", 0, "none"),
    ("multifd-2", 2, "none"),
    ("multifd-2-zstd", 2, "zstd"),
];

/// One QEMU migration; returns (total ms, downtime ms, query-migrate).
fn qemu_case(
    qemu: &Path,
    accel: &str,
    dir: &Path,
    net: Option<&NetPair>,
    args: &MigrateBench,
    variant: (&str, u32, &str),
) -> Res<(f64, f64, Value)> {
    let (mib, image) = (args.memory >> 20, &args.image);
    let (sq, dq) = (dir.join("qsrc.qmp"), dir.join("qdst.qmp"));
    let _ = std::fs::remove_file(&sq);
    let _ = std::fs::remove_file(&dq);
    let common = |c: &mut Command, qmp: &Path| {
        c.args([
            "-accel",
            accel,
            "-nodefaults",
            "-display",
            "none",
            "-nographic",
        ])
        .args(["-machine", "pc,memory-backend=mem", "-m"])
        .arg(format!("{mib}M"))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    };
    let mut s = in_ns(net.map(|n| n.a.as_str()), qemu);
    common(&mut s, &sq);
    s.arg("-S").arg("-object").arg(format!(
        "memory-backend-file,id=mem,size={mib}M,mem-path={},share=off{}",
        image.display(),
        if args.prealloc { ",prealloc=on" } else { "" }
    ));
    let mut d = in_ns(net.map(|n| n.b.as_str()), qemu);
    common(&mut d, &dq);
    d.args(["-incoming", "defer", "-object"]).arg(format!(
        "memory-backend-ram,id=mem,size={mib}M{}",
        if args.prealloc { ",prealloc=on" } else { "" }
    ));
    let _sp = Proc(s.spawn().map_err(|e| format!("{}: {e}", qemu.display()))?);
    let _dp = Proc(d.spawn().map_err(|e| format!("{}: {e}", qemu.display()))?);
    let mut sq = Qmp::open(&sq)?;
    let mut dq = Qmp::open(&dq)?;
    let (name, channels, comp) = variant;
    for q in [&mut sq, &mut dq] {
        if channels > 0 {
            q.cmd(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "multifd", "state": true}]}),
            )?;
            q.cmd(
                "migrate-set-parameters",
                json!({"multifd-channels": channels, "multifd-compression": comp}),
            )?;
        }
        // QEMU caps migration at 128 MiB/s by default: lift it.
        q.cmd(
            "migrate-set-parameters",
            json!({"max-bandwidth": 100u64 << 30}),
        )?;
    }
    let host = net.map_or("127.0.0.1".to_string(), |n| n.addr_b.clone());
    let port = 49152 + (std::process::id() % 10000) as u16;
    let uri = format!("tcp:{host}:{port}");
    dq.cmd("migrate-incoming", json!({"uri": uri}))?;
    sq.cmd("migrate", json!({"uri": uri}))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let v = sq.cmd("query-migrate", json!({}))?;
        match v["status"].as_str() {
            Some("completed") => {
                return Ok((
                    v["total-time"].as_f64().unwrap_or(0.0),
                    v["downtime"].as_f64().unwrap_or(0.0),
                    v,
                ))
            }
            Some("failed" | "cancelled") => return Err(format!("QEMU {name}: {v}")),
            _ if Instant::now() > deadline => return Err(format!("QEMU {name} hangs: {v}")),
            _ => {}
        }
    }
}

/// Finds a QEMU that can run here: KVM first, TCG if KVM refuses.
fn find_qemu(dir: &Path) -> Res<(PathBuf, &'static str)> {
    let qemu = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("qemu-system-x86_64"))
                .find(|p| p.is_file())
        })
        .ok_or("qemu-system-x86_64 not installed (apt-get install -y qemu-system-x86)")?;
    for accel in ["kvm", "tcg"] {
        let sock = dir.join("probe.qmp");
        let _ = std::fs::remove_file(&sock);
        let c = Command::new(&qemu)
            .args([
                "-accel",
                accel,
                "-nodefaults",
                "-display",
                "none",
                "-S",
                "-m",
                "64M",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(c) = c else { continue };
        let mut p = Proc(c);
        let ok = Qmp::open(&sock).is_ok() && p.0.try_wait().ok().flatten().is_none();
        drop(p);
        if ok {
            return Ok((qemu, accel));
        }
    }
    Err("QEMU starts with neither KVM nor TCG".into())
}

fn best(runs: usize, mut f: impl FnMut() -> Res<(f64, f64, Value)>) -> Res<(f64, f64, Value)> {
    let mut best: Option<(f64, f64, Value)> = None;
    for _ in 0..runs.max(1) {
        let r = f()?;
        if best.as_ref().is_none_or(|b| r.0 < b.0) {
            best = Some(r);
        }
    }
    Ok(best.expect("at least one run"))
}

/// Runs the benchmark; returns the exit code.
pub fn run(args: MigrateBench) -> i32 {
    match run_inner(&args) {
        Ok(()) => exit_code::OK,
        Err(e) => {
            eprintln!("tern: error: bench migrate: {e}");
            exit_code::SOFTWARE
        }
    }
}

fn run_inner(args: &MigrateBench) -> Res<()> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = tempfile_dir()?;
    let img = build_image(&args.image, args.memory)?;
    println!(
        "{}",
        json!({"bench": "migrate", "memory_image": img, "memory": args.memory, "prealloc": args.prealloc,
        "how": "256 KiB pieces in rotation: zeros, text (/usr/share, /usr/lib/python3, /usr/include), binaries (/usr/bin, /usr/lib/x86_64-linux-gnu, /usr/sbin), /dev/urandom"})
    );
    // Keep the image in the page cache so neither side reads the disk: a
    // warm-up read is not enough where the host reclaims idle page cache
    // within seconds (DAMON pageout, as on this project's test machines).
    let _pinned = PinnedFile::new(&args.image)?;
    let qemu = if args.no_qemu {
        None
    } else {
        match find_qemu(&dir) {
            Ok(q) => Some(q),
            Err(e) => {
                eprintln!("tern: bench migrate: {e}; QEMU figures left out");
                None
            }
        }
    };
    let mut links: Vec<(&str, Option<NetPair>)> = vec![("loopback", None)];
    if !args.no_netns {
        match NetPair::new("b") {
            Ok(n) => links.push(("veth-1gbit", Some(n))),
            Err(e) => eprintln!("tern: bench migrate: no namespaces ({e}); 1 Gbit runs left out"),
        }
    }
    let mut summary = serde_json::Map::new();
    for (link, net) in &links {
        let net = net.as_ref();
        // Tern on the memory image, paused, with compression `comp`.
        let image_case = |comp: &str| {
            tern_case(
                &exe,
                &dir,
                net,
                args,
                "probe:hello",
                Some(&args.image),
                comp,
            )
        };
        // One migration that is not counted: on this host whichever case
        // runs first in a process is 2-5x slower (host memory handed back
        // by free page reporting is faulted in again), which would make
        // the order of the cases decide the result.
        match image_case("off") {
            Ok((total, _, _)) => println!(
                "{}",
                json!({"bench": "migrate", "link": link, "warmup": true, "total_ms": total})
            ),
            Err(e) => eprintln!("tern: bench migrate: warm-up run failed: {e}"),
        }
        let mut qemu_best: Option<(String, f64)> = None;
        if let Some((q, accel)) = &qemu {
            for v in QEMU_VARIANTS {
                let r = best(args.runs, || qemu_case(q, accel, &dir, net, args, v));
                match r {
                    Ok((total, down, raw)) => {
                        println!(
                            "{}",
                            json!({"bench": "migrate", "link": link, "vmm": "qemu",
                            "qemu_accel": accel, "variant": v.0, "total_ms": total,
                            "downtime_ms": down, "transferred": raw["ram"]["transferred"]})
                        );
                        if qemu_best.as_ref().is_none_or(|b| total < b.1) {
                            qemu_best = Some((v.0.to_string(), total));
                        }
                    }
                    Err(e) => println!(
                        "{}",
                        json!({"bench": "migrate", "link": link,
                        "vmm": "qemu", "variant": v.0, "error": e})
                    ),
                }
            }
        }
        let mut tern_auto = None;
        let mut tern_off = None;
        for comp in ["auto", "off"] {
            let r = best(args.runs, || image_case(comp));
            match r {
                Ok((total, down, v)) => {
                    println!(
                        "{}",
                        json!({"bench": "migrate", "link": link, "vmm": "tern",
                        "variant": comp, "total_ms": total, "downtime_ms": down,
                        "bytes_sent": v["bytes_sent"], "zero_pages": v["zero_pages"],
                        "compression": v["compression"], "channels": v["channels"],
                        "rounds": v["rounds"]})
                    );
                    if comp == "auto" {
                        tern_auto = Some(total);
                    } else {
                        tern_off = Some(total);
                    }
                }
                Err(e) => println!(
                    "{}",
                    json!({"bench": "migrate", "link": link,
                    "vmm": "tern", "variant": comp, "error": e})
                ),
            }
        }
        let mut s = json!({"tern_auto_ms": tern_auto, "tern_uncompressed_ms": tern_off});
        if let (Some((name, q)), Some(t)) = (&qemu_best, tern_auto) {
            s["qemu_best_variant"] = json!(name);
            s["qemu_best_ms"] = json!(q);
            s["speedup_vs_qemu_best"] = json!(q / t);
        }
        if let (Some(o), Some(t)) = (tern_off, tern_auto) {
            s["speedup_vs_tern_uncompressed"] = json!(o / t);
        }
        if !args.no_dirty {
            // A running guest dirtying 100 MiB/s: downtime against the 50 ms target.
            let guest = "probe:dirty,mib=256,rate=100+verify";
            match tern_case(&exe, &dir, net, args, guest, None, "auto") {
                Ok((total, down, v)) => {
                    println!(
                        "{}",
                        json!({"bench": "migrate", "link": link, "vmm": "tern",
                        "variant": "auto, guest dirtying 100 MiB/s", "total_ms": total,
                        "downtime_ms": down, "rounds": v["rounds"],
                        "compression": v["compression"]})
                    );
                    s["dirty_100mib_downtime_ms"] = json!(down);
                }
                Err(e) => println!(
                    "{}",
                    json!({"bench": "migrate", "link": link,
                    "vmm": "tern", "variant": "dirty 100 MiB/s", "error": e})
                ),
            }
        }
        summary.insert(link.to_string(), s);
    }
    println!(
        "{}",
        json!({"bench": "migrate", "prealloc": args.prealloc, "summary": summary})
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A file mapped and locked in memory (its page cache stays resident)
/// until dropped.
struct PinnedFile {
    addr: *mut libc::c_void,
    len: usize,
}

impl PinnedFile {
    fn new(path: &Path) -> Res<PinnedFile> {
        use std::os::fd::AsRawFd;
        let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
        // SAFETY: a fresh read-only shared mapping of a file we opened;
        // nothing else refers to the address range.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                f.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(format!(
                "mmap {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the range is our mapping.
        if unsafe { libc::mlock(addr, len) } != 0 {
            eprintln!(
                "tern: bench migrate: cannot lock the memory image in memory ({}); \
                 it may be read from disk during the runs",
                std::io::Error::last_os_error()
            );
        }
        Ok(PinnedFile { addr, len })
    }
}

impl Drop for PinnedFile {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

fn tempfile_dir() -> Res<PathBuf> {
    let d = std::env::temp_dir().join(format!("tern-bench-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}
