//! QEMU as the peer: its QMP control socket, the migration variants
//! measured, and finding a QEMU that runs here.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::migrate::MigrateBench;
use crate::migrate::{wait_path, Proc};
use crate::netns::{in_ns, NetPair};
use crate::Res;

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
pub const QEMU_VARIANTS: [(&str, u32, &str); 3] = [
    ("plain", 0, "none"),
    ("multifd-2", 2, "none"),
    ("multifd-2-zstd", 2, "zstd"),
];

/// One QEMU migration; returns (total ms, downtime ms, query-migrate).
pub fn qemu_case(
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
pub fn find_qemu(dir: &Path) -> Res<(PathBuf, &'static str)> {
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
