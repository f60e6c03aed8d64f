//! `tern-bench save`: save and restore times of probe VMs whose memory is
//! in use, lazy and eager, and the resume latency after a restore.
//!
//! Per memory size: a probe VM runs `dirty` over 64 MiB, the rest of its
//! data area is filled with non-zero pages from the host (a VM that uses
//! all its memory; zero pages would be holes and cost nothing). Then, per
//! run and mode: pause, save into a fresh directory (the measured save:
//! state, memory, fsync, rename), and restore it into a new VM in this
//! process: `restore_ms` is from the start of loading the state file to
//! the vCPUs running (resume latency; Firecracker's former target for it
//! was 8 ms), `first_progress_ms` until the guest's `dirty` step has
//! written another page (lazy restore pays its page faults here).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tern_devices::serial::SerialMode;
use tern_probe_abi::DATA_BASE;
use tern_vmm::{Guest, Vm, VmConfig, VmHooks};
use vm_memory::{Bytes, GuestAddress};

use tern_api::parse_size;
use tern_worker::exit_code;

/// Arguments of `tern-bench save`.
#[derive(Args, Debug)]
pub struct SaveBench {
    /// Guest memory sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "512M,4G", value_parser = parse_size)]
    memory: Vec<u64>,
    /// Runs per size and mode.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// vCPUs.
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// Where to write the saved states (default: /var/tmp, a disk).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Drop the page cache before each restore (needs root): the memory
    /// image is read from disk, not from cache.
    #[arg(long)]
    drop_caches: bool,
    /// Probe guest image (default: `probe-guest` beside this executable).
    #[arg(long, env = "TERN_PROBE_IMAGE")]
    probe_image: Option<PathBuf>,
}

const WORKING_SET_MIB: u64 = 64;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > limit {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

fn config(args: &SaveBench, memory: u64) -> VmConfig {
    let image = args.probe_image.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("probe-guest")))
            .unwrap_or_else(|| "probe-guest".into())
    });
    let mut cfg = VmConfig::new(
        args.vcpus,
        memory,
        Guest::Probe {
            image,
            workload: format!("dirty,mib={WORKING_SET_MIB},rate=100+verify"),
        },
    );
    cfg.serial = SerialMode::Null;
    cfg
}

/// Fills guest RAM the probe does not use with non-zero pages.
fn fill(vm: &Vm) -> Result<u64, String> {
    let start = DATA_BASE + ((WORKING_SET_MIB + 1) << 20);
    let mut page = vec![0u8; 1 << 20];
    let mut filled = 0;
    for r in &vm.ram().regions {
        let mut at = r.start.max(start);
        while at < r.start + r.len {
            let n = (r.start + r.len - at).min(page.len() as u64) as usize;
            for (i, c) in page[..n].chunks_exact_mut(8).enumerate() {
                c.copy_from_slice(&(at + i as u64 * 8 + 1).to_le_bytes());
            }
            vm.ram()
                .mem
                .write_slice(&page[..n], GuestAddress(at))
                .map_err(|e| format!("fill: {e}"))?;
            at += n as u64;
            filled += n as u64;
        }
    }
    Ok(filled)
}

fn drop_caches() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
        eprintln!("tern: warning: cannot drop the page cache (not root?)");
    }
}

fn one_size(args: &SaveBench, memory: u64, base: &Path) -> Result<(), String> {
    let vm = Vm::create(config(args, memory), VmHooks::default()).map_err(|e| e.to_string())?;
    vm.start().map_err(|e| e.to_string())?;
    wait_until("the first dirty pass", Duration::from_secs(120), || {
        vm.probe_status()
            .map(|s| s.generation >= 2)
            .unwrap_or(false)
    })?;
    vm.pause().map_err(|e| e.to_string())?;
    let filled = fill(&vm)?;
    let mut results: Vec<(bool, f64, f64, f64, f64)> = Vec::new();
    for run in 0..args.runs.max(1) {
        for lazy in [true, false] {
            let dir = base.join(format!("save-{memory}-{run}-{lazy}"));
            let _ = std::fs::remove_dir_all(&dir);
            // Paused already: the save is what a `save` request does after
            // its pause.
            let t0 = Instant::now();
            let info = tern_snapshot::save_into(&vm, &dir, true).map_err(|e| e.to_string())?;
            let save_ms = ms(t0.elapsed());
            let saved = vm.probe_status().map_err(|e| e.to_string())?;
            if args.drop_caches {
                drop_caches();
            }
            let t1 = Instant::now();
            let l = tern_snapshot::load(&dir, lazy).map_err(|e| e.to_string())?;
            let mut cfg = l.config;
            cfg.serial = SerialMode::Null;
            let restored =
                Vm::restore(cfg, VmHooks::default(), &l.state).map_err(|e| e.to_string())?;
            restored.start().map_err(|e| e.to_string())?;
            let restore_ms = ms(t1.elapsed());
            wait_until("progress after restore", Duration::from_secs(60), || {
                restored
                    .probe_status()
                    .map(|s| (s.generation, s.cursor) != (saved.generation, saved.cursor))
                    .unwrap_or(false)
            })?;
            let progress_ms = ms(t1.elapsed());
            restored.request_stop();
            restored.wait();
            drop(restored);
            let _ = std::fs::remove_dir_all(&dir);
            let mode = if lazy { "lazy" } else { "eager" };
            println!(
                "{}",
                json!({"bench": "save", "memory": memory, "mode": mode, "run": run,
                       "vcpus": args.vcpus, "filled": filled,
                       "memory_written": info.memory_written,
                       "save_ms": save_ms,
                       "save_mib_s": info.memory_written as f64 / (1 << 20) as f64 / (save_ms / 1e3),
                       "restore_ms": restore_ms, "first_progress_ms": progress_ms,
                       "page_cache": if args.drop_caches { "dropped" } else { "warm" }})
            );
            results.push((lazy, save_ms, restore_ms, progress_ms, 0.0));
        }
    }
    vm.request_stop();
    vm.wait();
    for lazy in [true, false] {
        let pick = |f: fn(&(bool, f64, f64, f64, f64)) -> f64| {
            median(results.iter().filter(|r| r.0 == lazy).map(f).collect())
        };
        let restore = pick(|r| r.2);
        println!(
            "{}",
            json!({"bench": "save", "summary": true, "memory": memory,
                   "mode": if lazy { "lazy" } else { "eager" }, "runs": args.runs,
                   "median_save_ms": pick(|r| r.1), "median_restore_ms": restore,
                   "median_first_progress_ms": pick(|r| r.3),
                   "firecracker_resume_target_ms": 8.0,
                   "page_cache": if args.drop_caches { "dropped" } else { "warm" }})
        );
    }
    Ok(())
}

/// Runs `tern-bench save`; returns the exit code.
pub fn run(args: SaveBench) -> i32 {
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
        .join(format!("tern-bench-save-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&base) {
        eprintln!("tern-bench: error: {}: {e}", base.display());
        return exit_code::USAGE;
    }
    let mut code = exit_code::OK;
    for &m in &args.memory {
        if let Err(e) = one_size(&args, m, &base) {
            eprintln!("tern-bench: error: bench save, {} MiB: {e}", m >> 20);
            code = exit_code::SOFTWARE;
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    code
}
