//! `tern-bench failover`: node loss to VM running elsewhere. Three real etcd
//! members and three `ternd` nodes on loopback share one directory as shared
//! storage; a clustered VM with a disk runs on one node; each run SIGKILLs
//! that node's daemon and worker and times until a survivor runs the VM
//! (its worker answered), then starts the killed node again for the next
//! run. One JSON line per run and a summary with the anchors beside it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use tern_cluster::testing::EtcdCluster;
use tern_worker::exit_code;

use crate::Res;

/// `tern-bench failover`.
#[derive(Args, Debug)]
pub struct FailoverBench {
    /// Node losses to take the median and worst of.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The nodes' lease TTL in seconds (the cluster's default: 10).
    #[arg(long, default_value_t = 10)]
    ttl: u64,
}

/// One `ternd` node.
struct Node {
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.join("d.sock")
    }

    fn start(&mut self, tern: &Path) -> Res<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ternd.log"))
            .map_err(|e| format!("ternd log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("ternd log: {e}"))?;
        let child = Command::new(tern.with_file_name("ternd"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--worker")
            .arg(tern)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start ternd: {e}"))?;
        self.child = Some(child);
        let t = Instant::now();
        while cli(tern, self, &["host"]).is_err() {
            if t.elapsed() > Duration::from_secs(20) {
                return Err(format!("node {} did not come up", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `tern ARGS --json` against `node`.
fn cli(tern: &Path, node: &Node, args: &[&str]) -> Res<Value> {
    let out = Command::new(tern)
        .args(args)
        .arg("--json")
        .env("TERN_HOST", format!("unix:{}", node.socket().display()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run tern: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tern {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("tern {}: {e}", args.join(" ")))
}

fn kill_pid(pid: u64) {
    // SAFETY: kill(2) with a pid and a signal number touches no memory.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `tern-bench failover`; returns the exit code.
pub fn run(args: FailoverBench) -> i32 {
    let dir = std::env::temp_dir().join(format!("tern-bench-failover-{}", std::process::id()));
    let code = match bench(&args, &dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tern-bench: error: {e}");
            exit_code::SOFTWARE
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    code
}

fn bench(args: &FailoverBench, dir: &Path) -> Res<()> {
    let tern = crate::tern_exe()?;
    let etcd = EtcdCluster::start("tern-bench failover", &dir.join("etcd"), 3)
        .ok_or("etcd is not installed (apt-get install etcd-server)")?;
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).map_err(|e| format!("{}: {e}", shared.display()))?;
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let name = format!("n{i}");
            Node {
                dir: dir.join(&name),
                args: vec![
                    "--cluster".into(),
                    etcd.endpoints_arg(),
                    "--node".into(),
                    name.clone(),
                    "--cluster-ttl".into(),
                    args.ttl.to_string(),
                    "--shared-dir".into(),
                    shared.display().to_string(),
                ],
                name,
                child: None,
            }
        })
        .collect();
    for n in &mut nodes {
        std::fs::create_dir_all(&n.dir).map_err(|e| format!("{}: {e}", n.dir.display()))?;
        n.start(&tern)?;
    }
    let img = shared.join("vm.raw");
    let img = img.to_str().ok_or("temporary path is not UTF-8")?;
    cli(
        &tern,
        &nodes[0],
        &[
            "volume", "create", "vm", "--size", "4M", "--format", "raw", "--path", img,
        ],
    )?;
    cli(
        &tern,
        &nodes[0],
        &[
            "vm",
            "create",
            "vm",
            "--memory",
            "64M",
            "--disk",
            "vm",
            "--guest",
            "probe:blk-verify,mib=4+dirty,mib=4,rate=16",
        ],
    )?;
    cli(
        &tern,
        &nodes[0],
        &["cluster", "add-vm", "vm", "--priority", "high"],
    )?;
    cli(&tern, &nodes[0], &["vm", "start", "vm"])?;
    let mut owner = 0usize;
    let mut times = Vec::new();
    let result = (|| -> Res<()> {
        for run in 0..args.runs.max(1) {
            let pid = cli(&tern, &nodes[owner], &["vm", "show", "vm"])?["pid"]
                .as_u64()
                .ok_or("the VM has no worker")?;
            let t0 = Instant::now();
            nodes[owner].kill();
            kill_pid(pid);
            let (new, secs) = loop {
                if t0.elapsed() > Duration::from_secs(args.ttl * 6 + 30) {
                    return Err(format!("run {run}: the VM did not run elsewhere"));
                }
                std::thread::sleep(Duration::from_millis(50));
                let found = (0..3).filter(|&i| i != owner).find(|&i| {
                    cli(&tern, &nodes[i], &["vm", "show", "vm"])
                        .is_ok_and(|v| v["state"] == "running")
                });
                if let Some(i) = found {
                    break (i, t0.elapsed().as_secs_f64());
                }
            };
            println!(
                "{}",
                json!({"bench": "failover", "run": run, "ttl_s": args.ttl,
                       "lost": nodes[owner].name, "to": nodes[new].name,
                       "node_loss_to_running_s": secs})
            );
            times.push(secs);
            nodes[owner].start(&tern)?;
            owner = new;
        }
        Ok(())
    })();
    if let Ok(v) = cli(&tern, &nodes[owner], &["vm", "show", "vm"]) {
        if let Some(pid) = v["pid"].as_u64() {
            kill_pid(pid);
        }
    }
    result?;
    let worst = times.iter().copied().fold(0.0, f64::max);
    println!(
        "{}",
        json!({"bench": "failover", "summary": true, "runs": times.len(), "ttl_s": args.ttl,
               "node_loss_to_running_median_s": median(&mut times), "worst_s": worst,
               "goal_median_s": 15,
               "anchors": {"wsfc_s": "about 10 (10 missed 1 s heartbeats) + the VM's boot",
                           "proxmox_ha_s": 120}})
    );
    Ok(())
}
