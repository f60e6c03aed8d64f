//! Live migration in the worker and on the command line:
//!
//! - `tern run --incoming tcp:HOST:PORT|unix:PATH`: wait for a migration,
//!   then run the VM it brings ([`incoming`], [`confirm`]);
//! - control requests `migrate`, `migrate-status`, `migrate-cancel`
//!   ([`start`], [`status`], [`cancel`]);
//! - `tern migrate --control SOCK --to ENDPOINT`: drive a worker's
//!   migration with a progress bar ([`run`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tern_migrate::{
    Compression, Endpoint, IncomingMemory, Listener, MigrateOptions, Progress, Received,
    TimeoutAction,
};
use tern_vmm::{Vm, VmConfig, VmHooks};

use crate::exit_code;
use crate::run::chain;
use crate::size::parse_size;

/// Waits on `ep` until a migration of a VM like `cfg` arrives, builds the
/// VM around it (disks opened) and waits for the source's commit. Returns
/// the VM, not started: the caller starts it and [`confirm`]s. Failed or
/// uncommitted attempts are logged, their VM discarded (it never ran), and
/// the worker waits for the next one. Returns the exit code on a fatal
/// error.
pub fn incoming(
    ep: &Endpoint,
    cfg: VmConfig,
    hooks: impl Fn() -> VmHooks,
) -> Result<(Vm, Received), i32> {
    let listener = match Listener::bind(ep) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tern: error: cannot listen on {ep}: {e}");
            return Err(exit_code::USAGE);
        }
    };
    let local = listener
        .local()
        .map_or_else(|_| ep.to_string(), |l| l.to_string());
    let expect = tern_migrate::config_check(&cfg);
    // Memory for a stream is made before each wait (an attempt that
    // fails takes its memory with it), backed as the VM asks; so with
    // --prealloc the source never waits for the allocation.
    let memory = || -> Result<Option<IncomingMemory>, i32> {
        if !matches!(listener, Listener::Tcp(_)) {
            return Ok(None);
        }
        let t = Instant::now();
        let m = IncomingMemory::new(cfg.memory, cfg.backing, cfg.prealloc).map_err(|e| {
            eprintln!("tern: error: {}", chain(&e));
            exit_code::UNAVAILABLE
        })?;
        if cfg.prealloc {
            eprintln!(
                "tern: {} MiB of guest memory preallocated in {:.0} ms",
                cfg.memory >> 20,
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        Ok(Some(m))
    };
    let mut ready = memory()?;
    eprintln!("tern: waiting for a migration on {local}");
    let log = |m: &str| eprintln!("tern: {m}");
    loop {
        let attempt = tern_migrate::receive(&listener, &expect, ready.take(), &log);
        let mut received = match attempt {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "tern: incoming migration failed: {}; waiting for another",
                    chain(&e)
                );
                ready = memory()?;
                continue;
            }
        };
        let mut cfg = cfg.clone();
        // Prealloc'd memory came in `received`; mapping it again here
        // would only add to the downtime.
        cfg.prealloc = false;
        cfg.memory_source = received.memory.clone();
        let t = std::time::Instant::now();
        let vm = match Vm::restore(cfg, hooks(), &received.state) {
            Ok(vm) => {
                eprintln!(
                    "tern: the migrated VM is built here ({:.1} ms, {} disks opened); waiting for the source's commit",
                    t.elapsed().as_secs_f64() * 1e3,
                    vm.disks().len()
                );
                vm
            }
            Err(e) => {
                let msg = chain(&e);
                received.fail(&msg);
                eprintln!("tern: error: cannot restore the migrated VM: {msg}");
                return Err(exit_code::SOFTWARE);
            }
        };
        match received.await_commit() {
            Ok(()) => return Ok((vm, received)),
            Err(e) => {
                eprintln!(
                    "tern: the source did not commit the migration ({}); discarding the VM built here and waiting for another",
                    chain(&e)
                );
                for (i, e) in vm.disks().close() {
                    eprintln!("tern: error: closing disk {i}: {}", chain(&e));
                }
                drop(vm);
                drop(received);
                ready = memory()?;
            }
        }
    }
}

/// After the migrated VM started: tells the source (which committed
/// already, so the VM runs here whether or not the word arrives).
pub fn confirm(r: Received) {
    let (zero_copy, rounds, pages) = (r.zero_copy, r.rounds, r.pages);
    if let Err(e) = r.confirm() {
        eprintln!("tern: warning: cannot tell the source the VM runs here ({e}); it runs on");
    }
    eprintln!(
        "tern: migration complete ({}, {rounds} rounds, {pages} pages received); VM running",
        if zero_copy {
            "memfd hand-over"
        } else {
            "streamed"
        }
    );
}

/// Parameters of the `migrate` control request.
#[derive(Debug, Default, Deserialize, Serialize, PartialEq, Eq, Clone)]
pub struct MigrateParams {
    /// tcp:HOST:PORT or unix:PATH.
    pub to: String,
    /// Data channels (0 or absent: one per CPU).
    #[serde(default)]
    pub channels: u32,
    /// auto (default), off, lz4, zstd.
    #[serde(default)]
    pub compression: Option<String>,
    /// Downtime target in ms (default 50).
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Bandwidth cap, bytes/s.
    #[serde(default)]
    pub bandwidth: Option<u64>,
    /// Timeout in seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// cancel (default) or switchover.
    #[serde(default)]
    pub timeout_action: Option<String>,
    /// Throttle vCPUs when not converging (default true).
    #[serde(default)]
    pub auto_converge: Option<bool>,
}

impl MigrateParams {
    fn options(&self) -> Result<MigrateOptions, String> {
        let mut o = MigrateOptions::new(self.to.parse()?);
        o.channels = self.channels;
        if let Some(c) = &self.compression {
            o.compression = c.parse::<Compression>()?;
        }
        if let Some(d) = self.downtime_ms {
            o.downtime = Duration::from_millis(d);
        }
        o.bandwidth = self.bandwidth.filter(|&b| b > 0);
        o.timeout = self.timeout_s.map(Duration::from_secs);
        if let Some(a) = &self.timeout_action {
            o.on_timeout = a.parse::<TimeoutAction>()?;
        }
        o.auto_converge = self.auto_converge.unwrap_or(true);
        Ok(o)
    }
}

/// The worker's current (or last) migration.
struct Job {
    progress: Arc<Progress>,
    /// A status reply has shown the final phase (the worker may exit).
    final_seen: AtomicBool,
}

static JOB: Mutex<Option<Arc<Job>>> = Mutex::new(None);

fn job() -> Option<Arc<Job>> {
    JOB.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// `migrate`: starts a migration in the background.
pub fn start(vm: &Arc<Vm>, params: MigrateParams) -> Value {
    let opts = match params.options() {
        Ok(o) => o,
        Err(e) => return json!({"ok": false, "error": e}),
    };
    let mut slot = JOB.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(j) = slot.as_ref() {
        if !j.progress.snapshot().phase.done() {
            return json!({"ok": false, "error": "a migration is already running"});
        }
    }
    let job = Arc::new(Job {
        progress: Arc::new(Progress::default()),
        final_seen: AtomicBool::new(false),
    });
    *slot = Some(job.clone());
    drop(slot);
    let vm = vm.clone();
    let spawned = std::thread::Builder::new()
        .name("migrate".into())
        .spawn(move || {
            match tern_migrate::migrate(&vm, &opts, &job.progress) {
                Ok(()) => {
                    let s = job.progress.snapshot();
                    eprintln!(
                        "tern: migrated to {} in {:.0} ms (downtime {:.1} ms, {} rounds); stopping here",
                        opts.to,
                        s.elapsed_ms,
                        s.downtime_ms.unwrap_or(0.0),
                        s.rounds
                    );
                    // Let a watcher see the result before the socket goes.
                    let t = Instant::now();
                    while !job.final_seen.load(Ordering::SeqCst)
                        && t.elapsed() < Duration::from_secs(3)
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    vm.request_stop();
                }
                Err(e) => eprintln!(
                    "tern: migration to {} failed: {}{}",
                    opts.to,
                    tern_migrate::sender::error_chain(&e),
                    if vm.state() == tern_vmm::RunState::Paused {
                        ""
                    } else {
                        "; the VM keeps running here"
                    }
                ),
            }
        });
    match spawned {
        Ok(_) => json!({"ok": true, "phase": "setup"}),
        Err(e) => json!({"ok": false, "error": format!("cannot start the migration thread: {e}")}),
    }
}

/// `migrate-status`.
pub fn status() -> Value {
    let Some(j) = job() else {
        return json!({"ok": true, "phase": "none"});
    };
    let s = j.progress.snapshot();
    let mut v = serde_json::to_value(&s).unwrap_or_else(|_| json!({}));
    v["ok"] = json!(true);
    v
}

/// Called once a `migrate-status` reply is written: when it reported the
/// migration's end, the worker may stop (its watcher has the result).
pub fn status_delivered(reply: &Value) {
    let ended =
        ["completed", "failed", "cancelled"].contains(&reply["phase"].as_str().unwrap_or(""));
    if let (true, Some(j)) = (ended, job()) {
        j.final_seen.store(true, Ordering::SeqCst);
    }
}

/// `migrate-cancel`.
pub fn cancel() -> Value {
    match job() {
        Some(j) if !j.progress.snapshot().phase.done() => {
            j.progress.cancel();
            json!({"ok": true})
        }
        _ => json!({"ok": false, "error": "no migration is running"}),
    }
}

/// Arguments of `tern migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The source worker's control socket.
    #[arg(long)]
    control: PathBuf,
    /// Destination: tcp:HOST:PORT (a worker started with --incoming) or
    /// unix:PATH (same host: memory handed over, not copied).
    #[arg(long, required_unless_present = "cancel")]
    to: Option<String>,
    /// Data channels (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    channels: u32,
    /// auto, off, lz4 or zstd.
    #[arg(long, default_value = "auto")]
    compression: String,
    /// Downtime target, ms.
    #[arg(long, default_value_t = 50)]
    downtime_ms: u64,
    /// Bandwidth cap per second, e.g. 100M.
    #[arg(long, value_parser = parse_size)]
    bandwidth: Option<u64>,
    /// Give up (or switch over, see --on-timeout) after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// cancel or switchover.
    #[arg(long, default_value = "cancel")]
    on_timeout: String,
    /// Never throttle the vCPUs.
    #[arg(long)]
    no_auto_converge: bool,
    /// Print JSON status lines instead of a progress bar.
    #[arg(long)]
    json: bool,
    /// Cancel the worker's running migration instead.
    #[arg(long)]
    cancel: bool,
}

fn request(sock: &std::path::Path, req: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(sock)
        .map_err(|e| format!("cannot connect to {}: {e}", sock.display()))?;
    writeln!(s, "{req}").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("bad reply {line:?}: {e}"))
}

/// `tern migrate`.
pub fn run(args: MigrateArgs) -> i32 {
    if args.cancel {
        return match request(&args.control, &json!({"cmd": "migrate-cancel"})) {
            Ok(v) if v["ok"] == true => exit_code::OK,
            Ok(v) => {
                eprintln!(
                    "tern: error: {}",
                    v["error"].as_str().unwrap_or("cancel failed")
                );
                exit_code::SOFTWARE
            }
            Err(e) => {
                eprintln!("tern: error: {e}");
                exit_code::UNAVAILABLE
            }
        };
    }
    let params = MigrateParams {
        to: args.to.clone().unwrap_or_default(),
        channels: args.channels,
        compression: Some(args.compression.clone()),
        downtime_ms: Some(args.downtime_ms),
        bandwidth: args.bandwidth,
        timeout_s: args.timeout,
        timeout_action: Some(args.on_timeout.clone()),
        auto_converge: Some(!args.no_auto_converge),
    };
    if let Err(e) = params.options() {
        eprintln!("tern: error: {e}");
        return exit_code::USAGE;
    }
    let mut req = serde_json::to_value(&params).expect("params serialize");
    req["cmd"] = json!("migrate");
    match request(&args.control, &req) {
        Ok(v) if v["ok"] == true => {}
        Ok(v) => {
            eprintln!(
                "tern: error: {}",
                v["error"].as_str().unwrap_or("migrate failed")
            );
            return exit_code::SOFTWARE;
        }
        Err(e) => {
            eprintln!("tern: error: {e}");
            return exit_code::UNAVAILABLE;
        }
    }
    let bar = (!args.json).then(|| {
        let b = indicatif::ProgressBar::new(1);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {bytes}/{total_bytes} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    });
    let last = loop {
        std::thread::sleep(Duration::from_millis(100));
        let v = match request(&args.control, &json!({"cmd": "migrate-status"})) {
            Ok(v) => v,
            Err(e) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                eprintln!("tern: error: lost the worker: {e}");
                return exit_code::SOFTWARE;
            }
        };
        if args.json {
            println!("{v}");
        }
        if let Some(b) = &bar {
            let total = v["memory_bytes"].as_u64().unwrap_or(0).max(1);
            b.set_length(total);
            let pages = v["pages_sent"].as_u64().unwrap_or(0);
            b.set_position((pages * 4096).min(total));
            b.set_message(format!(
                "{} round {} | {}/s | dirty {}/s | left {} | downtime ~{:.0} ms | {}{}",
                v["phase"].as_str().unwrap_or("?"),
                v["rounds"].as_u64().unwrap_or(0) + 1,
                indicatif::HumanBytes(v["bandwidth"].as_f64().unwrap_or(0.0) as u64),
                indicatif::HumanBytes(v["dirty_rate"].as_f64().unwrap_or(0.0) as u64),
                indicatif::HumanBytes(v["remaining_bytes"].as_u64().unwrap_or(0)),
                v["expected_downtime_ms"].as_f64().unwrap_or(0.0),
                v["compression"].as_str().unwrap_or(""),
                match v["throttle_percent"].as_u64() {
                    Some(t) if t > 0 => format!(" | throttle {t}%"),
                    _ => String::new(),
                },
            ));
        }
        let phase = v["phase"].as_str().unwrap_or("").to_string();
        if ["completed", "failed", "cancelled"].contains(&phase.as_str()) {
            break v;
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match last["phase"].as_str() {
        Some("completed") => {
            println!(
                "migrated in {:.0} ms, downtime {:.1} ms, {} rounds, {} sent ({} zero pages), {}",
                last["elapsed_ms"].as_f64().unwrap_or(0.0),
                last["downtime_ms"].as_f64().unwrap_or(0.0),
                last["rounds"],
                indicatif::HumanBytes(last["bytes_sent"].as_u64().unwrap_or(0)),
                last["zero_pages"],
                last["compression"].as_str().unwrap_or(""),
            );
            exit_code::OK
        }
        _ => {
            let error = last["error"].as_str().unwrap_or("unknown error");
            eprintln!(
                "tern: error: migration {}: {error}{}",
                last["phase"].as_str().unwrap_or("failed"),
                // The worker says so itself when the VM cannot run on.
                if error.contains("stays paused") {
                    ""
                } else {
                    "; the VM keeps running on the source"
                }
            );
            exit_code::SOFTWARE
        }
    }
}
