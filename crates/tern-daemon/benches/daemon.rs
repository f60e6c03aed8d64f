//! Benchmarks of the daemon through its REST API; prints JSON lines.
//!
//! - `api_create_start`: latency of create + start of a 64 MiB probe VM
//!   (until its worker answers), median and p99 over `--runs` (100).
//! - `density`: how many 64 MiB probe VMs one daemon keeps at once before
//!   the first failure (up to `--max`, default 128). Each VM is paused once
//!   started unless `--running`: the probe spins its vCPU, and a few
//!   hundred spinning VMs would measure the CPU, not the host's capacity
//!   for VMs (and starve everything else on a shared machine).
//!
//! Needs `tern` and `probe-guest` built in the same profile:
//! `cargo build --release -p tern -p probe-guest && cargo bench -p
//! tern-daemon --bench daemon -- [--runs N] [--max N] [--running]`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use tern_api::{Client, CreateVm, Endpoint, Size};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn worker() -> PathBuf {
    if let Some(p) = std::env::var_os("TERN_WORKER") {
        return p.into();
    }
    // target/<profile>/deps/daemon-HASH -> target/<profile>/tern
    let exe = std::env::current_exe().expect("bench path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps")
        .join("tern")
}

fn spec(name: String) -> CreateVm {
    CreateVm {
        name,
        vcpus: Some(1),
        memory: Some(Size(64 << 20)),
        guest: "probe:touch".into(),
        disks: vec![],
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn mem_available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; plain runs may not.
    let runs: usize = arg("--runs", 100);
    let max: usize = arg("--max", 128);
    let running = std::env::args().any(|a| a == "--running");
    let worker = worker();
    if !worker.is_file() {
        eprintln!(
            "bench: {} missing: cargo build --release -p tern -p probe-guest",
            worker.display()
        );
        std::process::exit(2);
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!(
            "{}",
            json!({"bench": "daemon", "skipped": "/dev/kvm not usable"})
        );
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ternd-bench")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("d.sock");
    let cfg = tern_daemon::Config::new(dir.path().join("state"), worker);
    let (_daemon, _server) = tern_daemon::server::spawn_in_process(cfg, &socket)
        .await
        .unwrap();
    let c = Client::new(Endpoint::Unix(socket));

    // Latency of create + start.
    let (mut total, mut create, mut start) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("lat{i}");
        let t0 = Instant::now();
        c.create_vm(&spec(name.clone())).await.unwrap();
        let t1 = Instant::now();
        let vm = c.vm_action(&name, "start").await.unwrap();
        let t2 = Instant::now();
        assert_eq!(vm.state, tern_api::VmState::Running);
        total.push((t2 - t0).as_secs_f64() * 1e3);
        create.push((t1 - t0).as_secs_f64() * 1e3);
        start.push((t2 - t1).as_secs_f64() * 1e3);
        c.vm_action(&name, "stop").await.unwrap();
        c.delete_vm(&name).await.unwrap();
    }
    for v in [&mut total, &mut create, &mut start] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "{}",
        json!({
            "bench": "api_create_start",
            "memory_mib": 64,
            "guest": "probe:touch",
            "runs": runs,
            "median_ms": percentile(&total, 0.5),
            "p99_ms": percentile(&total, 0.99),
            "min_ms": total[0],
            "max_ms": total[total.len() - 1],
            "create_median_ms": percentile(&create, 0.5),
            "start_median_ms": percentile(&start, 0.5),
            "start_p99_ms": percentile(&start, 0.99),
        })
    );

    // Density: start VMs until the first failure (or `max`).
    let before = mem_available_mib();
    let t0 = Instant::now();
    let mut up = 0;
    let mut failure = None;
    for i in 0..max {
        let name = format!("d{i}");
        let r = async {
            c.create_vm(&spec(name.clone())).await?;
            c.vm_action(&name, "start").await?;
            if !running {
                c.vm_action(&name, "pause").await?;
            }
            Ok::<_, tern_api::ClientError>(())
        }
        .await;
        match r {
            Ok(()) => up += 1,
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let after = mem_available_mib();
    let elapsed = t0.elapsed();
    // Everything still runs at the end?
    let vms = c.list_vms().await.unwrap();
    let alive = vms.iter().filter(|v| v.state.has_worker()).count();
    println!(
        "{}",
        json!({
            "bench": "density",
            "memory_mib": 64,
            "paused_after_start": !running,
            "limit": max,
            "vms_up": up,
            "vms_alive_at_end": alive,
            "first_failure": failure,
            "mem_available_mib_before": before,
            "mem_available_mib_after": after,
            "seconds": elapsed.as_secs_f64(),
        })
    );
    let stops = vms.iter().map(|v| {
        let c = c.clone();
        let name = v.name.clone();
        async move {
            let _ = c.vm_action(&name, "force-stop").await;
            let _ = c.delete_vm(&name).await;
        }
    });
    futures_util::future::join_all(stops).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
}
