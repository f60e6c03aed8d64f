//! A daemon in the test process, serving on a UNIX socket in a temporary
//! directory. The workers it starts run under a tag of the harness
//! (`tern_test_support::procs`): dropping the `TestDaemon` kills them, by a
//! panic too, though each runs in a process group of its own.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use tern_api::{Client, Endpoint};
use tern_daemon::{Config, Daemon};
use tern_test_support::Tag;

pub struct TestDaemon {
    pub daemon: Arc<Daemon>,
    pub client: Client,
    pub socket: PathBuf,
    pub server: tokio::task::JoinHandle<()>,
    /// Carried by every worker the daemon starts; dropped before `dir`.
    pub tag: Arc<Tag>,
    pub dir: tempfile::TempDir,
}

/// The `tern` binary built beside the tests (`cargo build -p tern`).
pub fn tern_exe() -> PathBuf {
    tern_test_support::tern_exe()
}

pub async fn start(worker: PathBuf) -> TestDaemon {
    start_with(worker, |_| {}).await
}

/// A daemon whose configuration `configure` adjusts first.
pub async fn start_with(worker: PathBuf, configure: impl FnOnce(&mut Config)) -> TestDaemon {
    let dir = tempfile::Builder::new().prefix("ternd").tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let tag = Tag::new();
    // A worker binary that does not exist stays as it is: tests of the
    // daemon's refusals name it.
    let worker = if worker.is_file() {
        tag.wrap_exe(&worker, dir.path())
    } else {
        worker
    };
    let mut cfg = Config::new(dir.path().join("state"), worker);
    configure(&mut cfg);
    let (daemon, server) = tern_daemon::server::spawn_in_process(cfg, &socket)
        .await
        .unwrap();
    let client = Client::new(Endpoint::Unix(socket.clone()));
    TestDaemon {
        daemon,
        client,
        socket,
        server,
        tag,
        dir,
    }
}

/// Everything the registry holds, as text, to check nothing changed.
pub fn snapshot(d: &Daemon) -> String {
    let vms = d.reg.vms().unwrap();
    let disks = d.reg.disks().unwrap();
    let events = d.reg.events(0, None, u32::MAX).unwrap();
    format!("{vms:?}\n{disks:?}\n{events:?}")
}
