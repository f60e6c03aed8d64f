//! The daemon's settings and where it keeps its files.

use std::path::PathBuf;
use std::time::Duration;

/// The daemon's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `tern.db`, `run/` (worker sockets) and `logs/`.
    pub state_dir: PathBuf,
    /// The `tern` binary that runs workers (`tern run`).
    pub worker_exe: PathBuf,
    /// The probe image, if not the one beside `worker_exe`.
    pub probe_image: Option<PathBuf>,
    /// Directories where disk images may live (the first is the default).
    pub disk_dirs: Vec<PathBuf>,
    /// Of those, the ones on storage every cluster node reaches (the same
    /// path on each): only disks there can belong to a clustered VM.
    pub shared_dirs: Vec<PathBuf>,
    /// Where incoming TCP migrations listen: the IP of the API's TCP
    /// listener (unspecified when it has none or it is a name).
    pub migration_ip: std::net::IpAddr,
    /// How long a worker may take to answer its control socket.
    pub start_timeout: Duration,
    /// How long a stop may take before the worker is killed.
    pub stop_timeout: Duration,
}

impl Config {
    /// Settings with defaults for everything but the state directory and
    /// the worker binary.
    pub fn new(state_dir: PathBuf, worker_exe: PathBuf) -> Config {
        Config {
            disk_dirs: vec![state_dir.join("disks")],
            state_dir,
            worker_exe,
            probe_image: None,
            shared_dirs: Vec::new(),
            migration_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(20),
        }
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("tern.db")
    }

    /// Worker sockets live here.
    pub fn run_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }

    /// Worker logs live here.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    pub(crate) fn control_path(&self, id: &str) -> PathBuf {
        self.run_dir().join(format!("{id}.ctl"))
    }

    pub(crate) fn serial_path(&self, id: &str) -> PathBuf {
        self.run_dir().join(format!("{id}.serial"))
    }

    /// The launch spec of VM `id`'s worker.
    pub(crate) fn launch_path(&self, id: &str) -> PathBuf {
        self.run_dir().join(format!("{id}.launch.json"))
    }

    /// VM `id`'s checkpoints (its worker keeps them there).
    pub(crate) fn checkpoint_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("checkpoints").join(id)
    }

    /// The worker's stdout and stderr.
    pub fn worker_log(&self, id: &str) -> PathBuf {
        self.log_dir().join(format!("{id}.log"))
    }

    /// Everything the guest printed on its serial port.
    pub fn serial_log(&self, id: &str) -> PathBuf {
        self.log_dir().join(format!("{id}.serial.log"))
    }
}
