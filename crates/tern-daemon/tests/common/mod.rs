//! A daemon in the test process, serving on a UNIX socket in a temporary
//! directory.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use tern_api::{Client, Endpoint};
use tern_daemon::{Config, Daemon};

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub daemon: Arc<Daemon>,
    pub client: Client,
    pub socket: PathBuf,
    pub server: tokio::task::JoinHandle<()>,
}

/// The `tern` binary built beside the tests (`cargo build -p tern`).
pub fn tern_exe() -> PathBuf {
    tern_test_support::target_dir().join("tern")
}

pub async fn start(worker: PathBuf) -> TestDaemon {
    let dir = tempfile::Builder::new().prefix("ternd").tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let cfg = Config::new(dir.path().join("state"), worker);
    let (daemon, server) = tern_daemon::server::spawn_in_process(cfg, &socket)
        .await
        .unwrap();
    let client = Client::new(Endpoint::Unix(socket.clone()));
    TestDaemon {
        dir,
        daemon,
        client,
        socket,
        server,
    }
}

/// Everything the registry holds, as text, to check nothing changed.
pub fn snapshot(d: &Daemon) -> String {
    let vms = d.reg.vms().unwrap();
    let disks = d.reg.disks().unwrap();
    let events = d.reg.events(0, None, u32::MAX).unwrap();
    format!("{vms:?}\n{disks:?}\n{events:?}")
}
