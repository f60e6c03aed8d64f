//! The daemon's core: the [`Daemon`] value (settings, registry, the workers
//! it supervises, per-VM operation locks) and the few helpers every
//! operation shares (views, failing a VM, locking it).
//!
//! Operations on one VM are serialized by a per-VM lock; the registry's
//! compare-and-set transitions keep it consistent against the supervisor,
//! which runs outside that lock.
//!
//! This module imports no operation module: supervision
//! ([`crate::supervise`]) and the operations ([`crate::lifecycle`],
//! [`crate::disks`], [`crate::checkpoints`], [`crate::migration`]) build on
//! it, never the other way round.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_api::{HostInfo, Migration, Vm, VmState};
use tokio::sync::OwnedMutexGuard;

use crate::config::Config;
use crate::error::{OpError, StartError};
use crate::registry::{Registry, RegistryError, Transition, VmRow};
use crate::worker::{Capabilities, Worker};
use tern_worker_proto::{Call, Capability};

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

/// What the daemon remembers of a migration it takes part in (the events
/// in the registry keep the history).
#[derive(Clone)]
pub struct MigrationRecord {
    /// What the API shows.
    pub info: Migration,
    /// The VM's id.
    pub vm_id: String,
    /// Outgoing: the destination daemon and its migration id.
    pub peer: Option<(tern_api::Client, String)>,
}

/// The daemon.
pub struct Daemon {
    /// Settings.
    pub cfg: Config,
    /// The registry.
    pub reg: Registry,
    workers: Mutex<HashMap<String, Arc<Worker>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) caps: Capabilities,
    pub(crate) migrations: Mutex<HashMap<String, MigrationRecord>>,
    /// Set once the daemon joined a cluster (`ternd --cluster`).
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Joined>>,
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
        // Asked once: a worker binary replaced while the daemon runs is seen
        // by each worker's own hello (see `wait_ready`).
        let caps = Capabilities::ask(&cfg.worker_exe);
        match caps.hello() {
            Ok(h) => tracing::info!(
                "worker {} (tern {}, protocol {}): {:?}",
                cfg.worker_exe.display(),
                h.product,
                h.protocol,
                h.capabilities
            ),
            Err(e) => tracing::warn!("{}: no VM can start", crate::error::chain(e)),
        }
        Ok(Arc::new(Daemon {
            cfg,
            reg,
            workers: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            caps,
            migrations: Mutex::new(HashMap::new()),
            cluster: Default::default(),
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

    /// How many workers this daemon supervises now.
    pub(crate) fn worker_count(&self) -> usize {
        self.workers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The migrations this daemon remembers, as the API shows them.
    pub(crate) fn migration_infos(&self) -> Vec<Migration> {
        let mut v: Vec<Migration> = self
            .migrations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|m| m.info.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
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

    /// What this daemon's workers can do.
    pub fn features(&self) -> tern_api::Features {
        tern_api::Features {
            save_restore: self.caps.has(Capability::SaveRestore),
            migration: self.caps.has(Capability::Migration),
            disks: self.caps.has(Capability::Disks),
            checkpoints: self.caps.has(Capability::Checkpoints),
        }
    }

    /// Sends `req` to VM `id`'s worker, if one runs; `None` when the VM has
    /// no worker.
    pub async fn call_if_running<R: Call + Clone>(
        &self,
        id: &str,
        req: R,
    ) -> Result<Option<R::Reply>, OpError> {
        let Some(w) = self.worker(id) else {
            return Ok(None);
        };
        w.call(req, Duration::from_secs(30))
            .await
            .map(Some)
            .map_err(|source| OpError::Worker {
                what: format!("the worker of VM {id} failed a request"),
                source,
            })
    }

    /// Holds VM `id`'s operation lock (no start or stop meanwhile).
    pub async fn lock_vm(&self, id: &str) -> OwnedMutexGuard<()> {
        self.op_lock(id).await
    }

    /// An error from a transition after the VM may have failed: reports the
    /// failure when there was one.
    pub(crate) fn failure_or(&self, id: &str, e: RegistryError) -> OpError {
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

    /// Tracks `w` as VM `id`'s worker.
    pub(crate) fn insert_worker(&self, id: &str, w: Arc<Worker>) {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), w);
    }

    /// Stops tracking `w` as VM `id`'s worker (a newer one stays).
    pub(crate) fn remove_worker(&self, id: &str, w: &Arc<Worker>) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if workers.get(id).is_some_and(|cur| Arc::ptr_eq(cur, w)) {
            workers.remove(id);
        }
    }

    /// Drops VM `id`'s operation lock (the VM is gone).
    pub(crate) fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}
