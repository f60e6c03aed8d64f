//! The daemon's operations: VM lifecycle over the registry and the workers.
//!
//! Operations on one VM are serialized by a per-VM lock; the registry's
//! compare-and-set transitions keep it consistent against the supervisor,
//! which runs outside that lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tern_api::{CreateVm, HostInfo, Vm, VmState};
use tokio::sync::{watch, OwnedMutexGuard};

use crate::registry::{NewVm, Registry, RegistryError, Transition, VmRow};
use crate::validation::{check_guest, check_memory, check_name, check_vcpus};
use crate::worker::{self, ConsoleHub, Launch, Worker, WorkerError};

/// States in which a VM has a worker process.
pub const WORKER_STATES: &[VmState] = &[
    VmState::Starting,
    VmState::Running,
    VmState::Paused,
    VmState::Stopping,
    VmState::Saving,
    VmState::Restoring,
    VmState::Migrating,
];

/// States in which a VM has no worker.
pub const IDLE_STATES: &[VmState] = &[VmState::Stopped, VmState::Failed, VmState::Saved];

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

    fn control_path(&self, id: &str) -> PathBuf {
        self.run_dir().join(format!("{id}.ctl"))
    }

    fn serial_path(&self, id: &str) -> PathBuf {
        self.run_dir().join(format!("{id}.serial"))
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

/// Why an operation failed; the API maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// From the registry: not found (404), conflicts (409), database (500).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Something other than a VM or disk is not there (404).
    #[error("{0}")]
    NotFound(String),
    /// The feature does not exist yet (501).
    #[error("{0}")]
    NotImplemented(String),
    /// A worker could not be driven (500).
    #[error("{what}")]
    Worker {
        /// What was attempted.
        what: String,
        /// Why it failed.
        #[source]
        source: WorkerError,
    },
    /// The VM failed while the operation ran (500).
    #[error("{0}")]
    Failed(String),
    /// The other daemon of a migration refused or failed (502).
    #[error("{0}")]
    Peer(String),
    /// A filesystem operation failed (500).
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A directory could not be created.
    #[error("cannot create {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The registry could not be opened.
    #[error("cannot open the registry {path}")]
    Registry {
        /// The database.
        path: PathBuf,
        /// Why.
        #[source]
        source: RegistryError,
    },
}

/// The daemon.
pub struct Daemon {
    /// Settings.
    pub cfg: Config,
    /// The registry.
    pub reg: Registry,
    workers: Mutex<HashMap<String, Arc<Worker>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) caps: worker::Capabilities,
    pub(crate) migrations: Mutex<HashMap<String, crate::migration::Record>>,
}

fn mkdir(path: &Path) -> Result<(), StartError> {
    std::fs::create_dir_all(path).map_err(|source| StartError::Dir {
        path: path.into(),
        source,
    })
}

impl Daemon {
    /// Opens the registry under `cfg.state_dir`.
    pub fn open(cfg: Config) -> Result<Arc<Daemon>, StartError> {
        mkdir(&cfg.state_dir)?;
        mkdir(&cfg.run_dir())?;
        mkdir(&cfg.log_dir())?;
        for d in &cfg.disk_dirs {
            mkdir(d)?;
        }
        let db = cfg.db_path();
        let reg =
            Registry::open(&db).map_err(|source| StartError::Registry { path: db, source })?;
        let caps = worker::Capabilities::probe(&cfg.worker_exe);
        Ok(Arc::new(Daemon {
            cfg,
            reg,
            workers: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            caps,
            migrations: Mutex::new(HashMap::new()),
        }))
    }

    pub(crate) async fn op_lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    pub(crate) fn worker(&self, id: &str) -> Option<Arc<Worker>> {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The API view of a VM row.
    pub fn view(&self, row: &VmRow) -> Result<Vm, OpError> {
        Ok(row.to_api(self.reg.vm_disk_names(&row.id)?))
    }

    /// `GET /v1/vms/{vm}`.
    pub fn get(&self, key: &str) -> Result<Vm, OpError> {
        self.view(&self.reg.vm(key)?)
    }

    /// `GET /v1/vms`.
    pub fn list(&self) -> Result<Vec<Vm>, OpError> {
        self.reg.vms()?.iter().map(|r| self.view(r)).collect()
    }

    /// `GET /v1/host`.
    pub fn host(&self) -> Result<HostInfo, OpError> {
        let vms = self.reg.vms()?;
        Ok(HostInfo {
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: tern_api::API_VERSION.into(),
            pid: std::process::id(),
            vms: vms.len() as u32,
            running: vms.iter().filter(|v| v.state.has_worker()).count() as u32,
            disk_dirs: self
                .cfg
                .disk_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            features: self.features(),
        })
    }

    /// `POST /v1/vms`.
    pub fn create(&self, spec: &CreateVm) -> Result<Vm, OpError> {
        check_name("VM", &spec.name)?;
        let vcpus = spec.vcpus.unwrap_or(1);
        check_vcpus(vcpus)?;
        let memory = spec.memory.map(|m| m.0).unwrap_or(512 << 20);
        check_memory(memory)?;
        check_guest(&spec.guest)?;
        let mut disks = Vec::new();
        for d in &spec.disks {
            let (disk, vm) = self.reg.disk(d)?;
            if vm.is_some() {
                return Err(RegistryError::DiskBusy(format!(
                    "disk {} is attached to VM {}",
                    disk.name,
                    disk.vm.unwrap_or_default()
                ))
                .into());
            }
            disks.push(disk.id);
        }
        let row = self.reg.create_vm(&NewVm {
            name: spec.name.clone(),
            vcpus,
            memory,
            guest: spec.guest.clone(),
            disks,
        })?;
        self.view(&row)
    }

    /// Arguments that boot `row` afresh: its settings and its disks in
    /// attach order (the worker's disk index is this position).
    pub(crate) fn boot_args(&self, row: &VmRow) -> Result<Vec<String>, OpError> {
        let mut args = vec![
            "--vcpus".to_string(),
            row.vcpus.to_string(),
            "--memory".to_string(),
            row.memory.to_string(),
            "--guest".to_string(),
            row.guest.clone(),
        ];
        if self.caps.checkpoints {
            args.extend(self.checkpoint_args(&row.id));
        }
        if self.caps.memfd {
            // Guest memory in a memfd: a same-host migration hands it over
            // instead of copying it.
            args.push("--memfd".to_string());
        }
        for d in self.reg.vm_disks(&row.id)? {
            let mut spec = format!("path={}", d.path);
            if let Some(v) = d.qos.max_iops {
                spec.push_str(&format!(",max-iops={v}"));
            }
            if let Some(v) = d.qos.min_iops {
                spec.push_str(&format!(",min-iops={v}"));
            }
            args.push("--disk".to_string());
            args.push(spec);
        }
        Ok(args)
    }

    /// `--checkpoint-dir` for VM `id` (its worker keeps the checkpoints).
    fn checkpoint_args(&self, id: &str) -> Vec<String> {
        let dir = self.cfg.state_dir.join("checkpoints").join(id);
        vec!["--checkpoint-dir".into(), dir.display().to_string()]
    }

    pub(crate) fn launch(&self, row: &VmRow, vm_args: Vec<String>) -> Launch {
        Launch {
            exe: self.cfg.worker_exe.clone(),
            probe_image: self.cfg.probe_image.clone(),
            vm_args,
            control: self.cfg.control_path(&row.id),
            serial: self.cfg.serial_path(&row.id),
            log: self.cfg.worker_log(&row.id),
        }
    }

    /// Sends a control request to VM `id`'s worker, if one runs; `None`
    /// when the VM has no worker.
    pub async fn control_if_running(
        &self,
        id: &str,
        req: serde_json::Value,
    ) -> Result<Option<serde_json::Value>, OpError> {
        let Some(w) = self.worker(id) else {
            return Ok(None);
        };
        let what = format!("worker request {}", req["cmd"]);
        worker::control(&w.control, &req, Duration::from_secs(30))
            .await
            .map(Some)
            .map_err(|source| OpError::Worker { what, source })
    }

    /// Holds VM `id`'s operation lock (no start or stop meanwhile).
    pub async fn lock_vm(&self, id: &str) -> OwnedMutexGuard<()> {
        self.op_lock(id).await
    }

    /// `POST /v1/vms/{vm}/start`: returns once the worker answers on its
    /// control socket.
    pub async fn start(self: &Arc<Self>, key: &str) -> Result<Vm, OpError> {
        let id = self.reg.vm(key)?.id;
        let _g = self.op_lock(&id).await;
        let row = self.reg.transition(
            &id,
            Transition {
                from: &[VmState::Stopped, VmState::Failed],
                to: VmState::Starting,
                reason: None,
                pid: None,
                event: "starting",
                message: "starting a worker".into(),
                action: "start it",
            },
        )?;
        let args = match self.boot_args(&row) {
            Ok(a) => a,
            Err(e) => {
                self.fail(&id, &e.to_string())?;
                return Err(e);
            }
        };
        self.run_worker(&row, args, VmState::Starting, "started")
            .await
    }

    /// Spawns a worker for `row` (in state `via`), supervises it, and waits
    /// until it answers; then the VM is running and `event` recorded.
    async fn run_worker(
        self: &Arc<Self>,
        row: &VmRow,
        vm_args: Vec<String>,
        via: VmState,
        event: &str,
    ) -> Result<Vm, OpError> {
        let id = row.id.clone();
        let launch = self.launch(row, vm_args);
        let serial = match worker::open_serial_fifo(&launch.serial, true) {
            Ok(s) => s,
            Err(source) => {
                let e = OpError::Io {
                    what: format!("cannot create the serial FIFO {}", launch.serial.display()),
                    source,
                };
                self.fail(&id, &chain(&e))?;
                return Err(e);
            }
        };
        let child = match worker::spawn(&launch) {
            Ok(c) => c,
            Err(e) => {
                let msg = tern_chain(&e);
                self.fail(&id, &msg)?;
                return Err(OpError::Worker {
                    what: format!("cannot start VM {}", row.name),
                    source: e,
                });
            }
        };
        let pid = child.id().unwrap_or(0);
        // A worker that already exited is a zombie until waited for: its
        // start time reads as none, and the supervisor reports it.
        let pid_start = worker::process_start(pid).unwrap_or(0);
        self.reg.set_worker(&id, pid, pid_start)?;
        let w = self.track(row, pid, pid_start, serial);
        let gone = w.gone.clone();
        let this = self.clone();
        let wid = id.clone();
        tokio::spawn(async move {
            let mut child = child;
            let status = child.wait().await.ok();
            this.worker_ended(&wid, &w, status).await;
        });
        if let Some(ended) = self.wait_ready(&id, &launch.control, gone).await? {
            return self.view(&ended);
        }
        let row = self
            .reg
            .transition(
                &id,
                Transition {
                    from: &[via],
                    to: VmState::Running,
                    reason: None,
                    pid: None,
                    event,
                    message: format!("running (worker pid {pid})"),
                    action: "mark it running",
                },
            )
            .map_err(|e| self.failure_or(&id, e))?;
        self.view(&row)
    }

    /// Registers a worker and its console; `gone` becomes true once the
    /// supervisor has recorded its end.
    pub(crate) fn track(
        &self,
        row: &VmRow,
        pid: u32,
        pid_start: u64,
        serial: tokio::net::unix::pipe::Receiver,
    ) -> Arc<Worker> {
        let console = ConsoleHub::start(
            serial,
            self.cfg.serial_log(&row.id),
            self.cfg.control_path(&row.id),
        );
        let (gone_tx, gone) = watch::channel(false);
        let w = Arc::new(Worker {
            pid,
            pid_start,
            control: self.cfg.control_path(&row.id),
            console,
            stop_requested: false.into(),
            kill_requested: false.into(),
            save_requested: false.into(),
            incoming: false.into(),
            incoming_disks: Default::default(),
            migrated_away: false.into(),
            gone,
            gone_tx,
        });
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(row.id.clone(), w.clone());
        w
    }

    /// Polls the control socket until the worker answers, or fails if the
    /// worker ends first; a worker whose guest ran to its end before the
    /// first answer (the registry says `stopped`) started: its row comes
    /// back.
    async fn wait_ready(
        &self,
        id: &str,
        control: &Path,
        mut gone: watch::Receiver<bool>,
    ) -> Result<Option<VmRow>, OpError> {
        let start = Instant::now();
        loop {
            if *gone.borrow() {
                let row = self.reg.vm(id)?;
                if row.state == VmState::Stopped {
                    return Ok(Some(row));
                }
                return Err(OpError::Failed(format!(
                    "VM {} did not start: {}",
                    row.name,
                    row.reason.unwrap_or_else(|| "the worker ended".into())
                )));
            }
            if worker::control(control, &json!({"cmd": "status"}), Duration::from_secs(2))
                .await
                .is_ok()
            {
                return Ok(None);
            }
            if start.elapsed() > self.cfg.start_timeout {
                if let Some(w) = self.worker(id) {
                    w.kill_requested.store(true, Ordering::SeqCst);
                    let _ = w.kill();
                }
                let msg = format!(
                    "the worker did not answer on its control socket within {:?}",
                    self.cfg.start_timeout
                );
                let _ = self.fail(id, &msg);
                return Err(OpError::Failed(msg));
            }
            // Either the worker ends or we poll again shortly.
            let _ = tokio::time::timeout(Duration::from_millis(2), gone.changed()).await;
        }
    }

    /// An error from a transition after the VM may have failed: reports the
    /// failure when there was one.
    fn failure_or(&self, id: &str, e: RegistryError) -> OpError {
        match self.reg.vm(id) {
            Ok(row) if row.state == VmState::Failed => OpError::Failed(format!(
                "VM {} failed: {}",
                row.name,
                row.reason.unwrap_or_default()
            )),
            _ => e.into(),
        }
    }

    /// Marks a VM failed from any state.
    pub(crate) fn fail(&self, id: &str, reason: &str) -> Result<VmRow, OpError> {
        Ok(self.reg.transition(
            id,
            Transition {
                from: &[
                    VmState::Starting,
                    VmState::Running,
                    VmState::Paused,
                    VmState::Stopping,
                    VmState::Saving,
                    VmState::Restoring,
                    VmState::Migrating,
                    VmState::Stopped,
                    VmState::Failed,
                    VmState::Saved,
                ],
                to: VmState::Failed,
                reason: Some(reason.into()),
                pid: None,
                event: "failed",
                message: reason.into(),
                action: "mark it failed",
            },
        )?)
    }

    /// Records the end of a worker (`status` is unknown for a worker found
    /// again after a daemon restart).
    pub async fn worker_ended(&self, id: &str, w: &Arc<Worker>, status: Option<ExitStatus>) {
        {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            if workers.get(id).is_some_and(|cur| Arc::ptr_eq(cur, w)) {
                workers.remove(id);
            }
        }
        w.console.close();
        let _ = std::fs::remove_file(self.cfg.control_path(id));
        let _ = std::fs::remove_file(self.cfg.serial_path(id));
        if w.migrated_away.load(Ordering::SeqCst) {
            w.gone_tx.send_replace(true);
            return;
        }
        if w.incoming.load(Ordering::SeqCst) {
            // The VM never arrived: it was never this host's.
            let why = match &status {
                Some(s) => format!(
                    "incoming migration ended: worker {}",
                    worker::describe_exit(s)
                ),
                None => "incoming migration ended".into(),
            };
            let _ = self
                .reg
                .remove_vm(id, &[VmState::Migrating], "migration-in-failed", &why);
            let disks =
                std::mem::take(&mut *w.incoming_disks.lock().unwrap_or_else(|p| p.into_inner()));
            let _ = self.reg.forget_disks(&disks);
            w.gone_tx.send_replace(true);
            return;
        }
        if status.as_ref().is_some_and(|s| s.success())
            && self.reg.vm(id).is_ok_and(|r| r.state == VmState::Migrating)
        {
            // A worker ends cleanly mid-migration once the destination
            // runs the VM; the migration task settles the registry.
            w.gone_tx.send_replace(true);
            return;
        }
        let log = worker::last_log_line(&self.cfg.worker_log(id));
        let with_log = |s: String| match &log {
            Some(l) => format!("{s}: {l}"),
            None => s,
        };
        let (to, reason, event) = if w.kill_requested.load(Ordering::SeqCst) {
            (
                VmState::Stopped,
                "force-stopped on request".to_string(),
                "stopped",
            )
        } else if w.stop_requested.load(Ordering::SeqCst) {
            (
                VmState::Stopped,
                "stopped on request".to_string(),
                "stopped",
            )
        } else if w.save_requested.load(Ordering::SeqCst) {
            match status {
                Some(s) if !s.success() => (
                    VmState::Failed,
                    with_log(format!(
                        "worker pid {} {} while saving",
                        w.pid,
                        worker::describe_exit(&s)
                    )),
                    "failed",
                ),
                _ => (VmState::Saved, "saved on request".to_string(), "saved"),
            }
        } else {
            match status {
                Some(s) if s.success() => (
                    VmState::Stopped,
                    "the guest finished (exit status 0)".to_string(),
                    "stopped",
                ),
                Some(s) => (
                    VmState::Failed,
                    with_log(format!(
                        "worker pid {} {}",
                        w.pid,
                        worker::describe_exit(&s)
                    )),
                    "failed",
                ),
                None => (
                    VmState::Failed,
                    with_log(format!(
                        "worker pid {} ended while the daemon was not its parent \
                         (exit status unknown)",
                        w.pid
                    )),
                    "failed",
                ),
            }
        };
        let r = self.reg.transition(
            id,
            Transition {
                from: WORKER_STATES,
                to,
                reason: Some(reason.clone()),
                pid: None,
                event,
                message: reason,
                action: "record its worker's end",
            },
        );
        if let Err(e) = r {
            tracing::warn!("VM {id}: {e}");
        }
        w.gone_tx.send_replace(true);
    }

    /// Waits until `w` is gone, up to `t`; true if it is.
    pub(crate) async fn wait_gone(w: &Worker, t: Duration) -> bool {
        let mut gone = w.gone.clone();
        let done = matches!(
            tokio::time::timeout(t, gone.wait_for(|g| *g)).await,
            Ok(Ok(_))
        );
        done
    }

    /// `POST /v1/vms/{vm}/stop`: asks the worker to stop and waits for it
    /// to exit (killing it if it does not in time).
    pub async fn stop(&self, key: &str) -> Result<Vm, OpError> {
        let id = self.reg.vm(key)?.id;
        let _g = self.op_lock(&id).await;
        let row = self.reg.transition(
            &id,
            Transition {
                from: &[VmState::Running, VmState::Paused],
                to: VmState::Stopping,
                reason: None,
                pid: None,
                event: "stopping",
                message: "stop requested".into(),
                action: "stop it",
            },
        )?;
        let Some(w) = self.worker(&id) else {
            return self.orphan(&row);
        };
        w.stop_requested.store(true, Ordering::SeqCst);
        // If the worker is already ending the request fails; the wait below
        // sees it go.
        let _ = worker::control(
            &w.control,
            &json!({"cmd": "shutdown"}),
            Duration::from_secs(5),
        )
        .await;
        if !Self::wait_gone(&w, self.cfg.stop_timeout).await {
            tracing::warn!("VM {}: no exit after a stop request; killing it", row.name);
            w.kill_requested.store(true, Ordering::SeqCst);
            let _ = w.kill();
            if !Self::wait_gone(&w, Duration::from_secs(10)).await {
                return Err(OpError::Failed(format!(
                    "VM {}: worker pid {} survived SIGKILL",
                    row.name, w.pid
                )));
            }
        }
        self.get(&id)
    }

    /// A VM whose state says it has a worker but none is tracked (cannot
    /// happen unless reattach failed half-way): mark it failed.
    pub(crate) fn orphan(&self, row: &VmRow) -> Result<Vm, OpError> {
        let row = self.fail(&row.id, "the daemon lost track of its worker")?;
        Err(OpError::Failed(format!(
            "VM {}: {}",
            row.name,
            row.reason.unwrap_or_default()
        )))
    }

    /// `POST /v1/vms/{vm}/force-stop`: kills the worker.
    pub async fn force_stop(&self, key: &str) -> Result<Vm, OpError> {
        let row = self.reg.vm(key)?;
        // No per-VM lock: a force stop must get through while a stop or
        // start holds it.
        let Some(w) = self.worker(&row.id) else {
            return Err(RegistryError::WrongState {
                name: row.name,
                state: row.state,
                action: "force-stop it (no worker runs)".into(),
            }
            .into());
        };
        w.kill_requested.store(true, Ordering::SeqCst);
        w.kill().map_err(|source| OpError::Io {
            what: format!("cannot kill worker pid {}", w.pid),
            source,
        })?;
        if !Self::wait_gone(&w, Duration::from_secs(10)).await {
            return Err(OpError::Failed(format!(
                "VM {}: worker pid {} survived SIGKILL",
                row.name, w.pid
            )));
        }
        self.get(&row.id)
    }

    /// `pause` and `resume`.
    pub async fn pause_resume(&self, key: &str, pause: bool) -> Result<Vm, OpError> {
        let id = self.reg.vm(key)?.id;
        let _g = self.op_lock(&id).await;
        let row = self.reg.vm(&id)?;
        let (from, to, cmd, event) = if pause {
            (VmState::Running, VmState::Paused, "pause", "paused")
        } else {
            (VmState::Paused, VmState::Running, "resume", "resumed")
        };
        if row.state != from {
            return Err(RegistryError::WrongState {
                name: row.name,
                state: row.state,
                action: cmd.into(),
            }
            .into());
        }
        let Some(w) = self.worker(&id) else {
            return self.orphan(&row);
        };
        worker::control(&w.control, &json!({ "cmd": cmd }), Duration::from_secs(10))
            .await
            .map_err(|source| OpError::Worker {
                what: format!("cannot {cmd} VM {}", row.name),
                source,
            })?;
        let row = self
            .reg
            .transition(
                &id,
                Transition {
                    from: &[from],
                    to,
                    reason: None,
                    pid: None,
                    event,
                    message: event.into(),
                    action: cmd,
                },
            )
            .map_err(|e| self.failure_or(&id, e))?;
        self.view(&row)
    }

    /// `DELETE /v1/vms/{vm}`.
    pub async fn delete(&self, key: &str) -> Result<(), OpError> {
        let id = self.reg.vm(key)?.id;
        let g = self.op_lock(&id).await;
        let saved = self.reg.saved_dir(&id)?;
        self.reg.delete_vm(&id, IDLE_STATES, "deleted on request")?;
        if let Some(dir) = saved {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(self.cfg.state_dir.join("checkpoints").join(&id));
        for p in [self.cfg.worker_log(&id), self.cfg.serial_log(&id)] {
            let _ = std::fs::remove_file(p);
        }
        drop(g);
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(())
    }

    /// The console of a running VM.
    pub fn console(&self, key: &str) -> Result<Arc<ConsoleHub>, OpError> {
        let row = self.reg.vm(key)?;
        match self.worker(&row.id) {
            Some(w) => Ok(w.console.clone()),
            None => Err(RegistryError::WrongState {
                name: row.name,
                state: row.state,
                action: "attach a console (no worker runs)".into(),
            }
            .into()),
        }
    }

    /// Finds the workers of VMs that were running when the daemon last
    /// stopped: a live one is tracked again, a gone one marks its VM
    /// failed. Returns how many were found alive.
    pub async fn reattach(self: &Arc<Self>) -> usize {
        let Ok(rows) = self.reg.vms() else { return 0 };
        let mut alive = 0;
        for row in rows.into_iter().filter(|r| r.state.has_worker()) {
            let (Some(pid), Some(start)) = (row.pid, row.pid_start) else {
                let _ = self.fail(&row.id, "no worker recorded when the daemon restarted");
                continue;
            };
            let control = self.cfg.control_path(&row.id);
            let status = if worker::process_start(pid) == Some(start) {
                worker::control(&control, &json!({"cmd": "status"}), Duration::from_secs(5))
                    .await
                    .ok()
            } else {
                None
            };
            let Some(status) = status else {
                let log = worker::last_log_line(&self.cfg.worker_log(&row.id));
                let mut msg = format!("worker pid {pid} was gone when the daemon restarted");
                if let Some(l) = log {
                    msg = format!("{msg}: {l}");
                }
                let _ = self.fail(&row.id, &msg);
                continue;
            };
            let state = match status["state"].as_str() {
                Some("paused") => VmState::Paused,
                _ => VmState::Running,
            };
            let serial = match worker::open_serial_fifo(&self.cfg.serial_path(&row.id), false) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("VM {}: no console after reattach: {e}", row.name);
                    match worker::open_serial_fifo(&self.cfg.serial_path(&row.id), true) {
                        Ok(s) => s,
                        Err(_) => continue,
                    }
                }
            };
            let w = self.track(&row, pid, start, serial);
            let r = self.reg.transition(
                &row.id,
                Transition {
                    from: WORKER_STATES,
                    to: state,
                    reason: None,
                    pid: None,
                    event: "reattached",
                    message: format!("worker pid {pid} found again after a daemon restart"),
                    action: "reattach",
                },
            );
            if let Err(e) = r {
                tracing::warn!("VM {}: {e}", row.name);
            }
            alive += 1;
            let this = self.clone();
            tokio::spawn(async move {
                worker::wait_foreign(pid, start).await;
                this.worker_ended(&row.id, &w, None).await;
            });
        }
        alive
    }

    pub(crate) fn not_implemented(what: &str, needs: &str) -> OpError {
        OpError::NotImplemented(format!(
            "{what} is not implemented yet: the VM worker ({needs}) lacks it"
        ))
    }

    /// `POST /v1/vms/{vm}/save`: the worker writes the VM's state and
    /// memory into a new directory and exits; the VM is `saved`.
    pub async fn save(&self, key: &str) -> Result<Vm, OpError> {
        let id = self.reg.vm(key)?.id;
        if !self.caps.save_restore {
            return Err(Self::not_implemented("save", "tern run --restore"));
        }
        let _g = self.op_lock(&id).await;
        let before = self.reg.vm(&id)?;
        let row = self.reg.transition(
            &id,
            Transition {
                from: &[VmState::Running, VmState::Paused],
                to: VmState::Saving,
                reason: None,
                pid: None,
                event: "saving",
                message: "save requested".into(),
                action: "save it",
            },
        )?;
        let Some(w) = self.worker(&id) else {
            return self.orphan(&row);
        };
        let dir = self
            .cfg
            .state_dir
            .join("saved")
            .join(format!("{id}-{}", crate::registry::now_ms()));
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|source| OpError::Io {
                what: format!("cannot create {}", parent.display()),
                source,
            })?;
        }
        let old = self.reg.saved_dir(&id)?;
        w.save_requested.store(true, Ordering::SeqCst);
        let req = json!({"cmd": "save", "dir": dir});
        match worker::control(&w.control, &req, Duration::from_secs(600)).await {
            Ok(_) => {
                self.reg
                    .set_saved_dir(&id, Some(&dir.display().to_string()))?;
                if !Self::wait_gone(&w, self.cfg.stop_timeout).await {
                    return Err(OpError::Failed(format!(
                        "VM {}: saved, but worker pid {} did not exit",
                        row.name, w.pid
                    )));
                }
                // The restored worker mapped the old image; it is gone now.
                if let Some(old) = old.filter(|o| Path::new(o) != dir) {
                    let _ = std::fs::remove_dir_all(old);
                }
                self.get(&id)
            }
            Err(source) => {
                w.save_requested.store(false, Ordering::SeqCst);
                let _ = std::fs::remove_dir_all(&dir);
                // Back to what it was, if the worker still runs it.
                let _ = self.reg.transition(
                    &id,
                    Transition {
                        from: &[VmState::Saving],
                        to: before.state,
                        reason: None,
                        pid: None,
                        event: "save-failed",
                        message: chain(&source),
                        action: "undo the save",
                    },
                );
                Err(OpError::Worker {
                    what: format!("cannot save VM {}", row.name),
                    source,
                })
            }
        }
    }

    /// `POST /v1/vms/{vm}/restore`: a new worker runs the VM from its saved
    /// state.
    pub async fn restore(self: &Arc<Self>, key: &str) -> Result<Vm, OpError> {
        let id = self.reg.vm(key)?.id;
        if !self.caps.save_restore {
            return Err(Self::not_implemented("restore", "tern run --restore"));
        }
        let _g = self.op_lock(&id).await;
        let row = self.reg.transition(
            &id,
            Transition {
                from: &[VmState::Saved],
                to: VmState::Restoring,
                reason: None,
                pid: None,
                event: "restoring",
                message: "restore requested".into(),
                action: "restore it (only a saved VM can be restored)",
            },
        )?;
        let Some(dir) = self.reg.saved_dir(&id)? else {
            let msg = "no saved state on record".to_string();
            self.fail(&id, &msg)?;
            return Err(OpError::Failed(format!("VM {}: {msg}", row.name)));
        };
        let mut args = vec!["--restore".to_string(), dir];
        if self.caps.checkpoints {
            args.extend(self.checkpoint_args(&id));
        }
        self.run_worker(&row, args, VmState::Restoring, "restored")
            .await
    }

    /// What this daemon's workers can do.
    pub fn features(&self) -> tern_api::Features {
        tern_api::Features {
            save_restore: self.caps.save_restore,
            migration: self.caps.migration,
            disks: self.caps.disks,
            checkpoints: self.caps.checkpoints,
        }
    }
}

fn tern_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// One line: an error and its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    tern_chain(e)
}
