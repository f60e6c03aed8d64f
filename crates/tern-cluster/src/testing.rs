//! Real etcd members on loopback ports for tests and demos (feature
//! `testing`). Each member runs under a test-support [`Tag`], so it dies with
//! the value that started it, by a panic too.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_test_support::procs::Spawned;
use tern_test_support::Tag;

/// A member as started.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    dir: PathBuf,
    proc: Option<Spawned>,
}

/// An etcd cluster of real `etcd` processes; dropping it kills them.
pub struct EtcdCluster {
    members: Vec<Member>,
    tag: Arc<Tag>,
}

fn free_port() -> u16 {
    // The port is free when it is asked for; etcd binds it a moment later.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl EtcdCluster {
    /// Starts `n` members with data dirs under `dir`, and waits until a
    /// client can read. Returns `None` (after a counted skip) when `etcd` is
    /// not installed.
    pub fn start(test: &str, dir: &Path, n: usize) -> Option<EtcdCluster> {
        let exe = tern_test_support::tool(test, "etcd")?;
        let tag = Tag::new();
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("etcd{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                dir: dir.join(format!("etcd{i}")),
                proc: None,
            })
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect();
        let initial = initial.join(",");
        for m in &mut members {
            std::fs::create_dir_all(&m.dir).expect("etcd data dir");
            let log = std::fs::File::create(m.dir.join("etcd.log")).expect("etcd log");
            let mut cmd = Command::new(&exe);
            cmd.arg("--name")
                .arg(&m.name)
                .arg("--data-dir")
                .arg(m.dir.join("data"))
                .arg("--listen-client-urls")
                .arg(&m.client_url)
                .arg("--advertise-client-urls")
                .arg(&m.client_url)
                .arg("--listen-peer-urls")
                .arg(&m.peer_url)
                .arg("--initial-advertise-peer-urls")
                .arg(&m.peer_url)
                .arg("--initial-cluster")
                .arg(&initial)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg("tern-test")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("etcd log"))
                .stderr(log);
            m.proc = Some(Spawned::spawn(&mut cmd, &tag).expect("start etcd"));
        }
        let cluster = EtcdCluster { members, tag };
        cluster.wait_ready(Duration::from_secs(30));
        Some(cluster)
    }

    /// The client URLs of every member (those killed too).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The endpoints joined by commas, as `ternd --cluster` takes them.
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        // `release`, not a drop: dropping a Spawned kills its whole tag,
        // the other members too.
        if let Some(p) = self.members[i].proc.take() {
            p.release();
        }
    }

    /// The tag the members run under.
    pub fn tag(&self) -> &Arc<Tag> {
        &self.tag
    }

    fn wait_ready(&self, timeout: Duration) {
        let start = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let endpoints = self.endpoints();
        loop {
            let ok = rt.block_on(async {
                crate::connect(&endpoints, Duration::from_secs(1))
                    .await
                    .is_ok()
            });
            if ok {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "etcd did not answer within {timeout:?}; logs under {}",
                self.members[0].dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
