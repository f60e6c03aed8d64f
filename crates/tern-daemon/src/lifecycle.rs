//! VM lifecycle operations: create, start, stop, pause and resume, save and
//! restore, delete, and the console of a running VM.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tern_api::{CreateVm, Vm, VmState};
use tern_worker_proto::requests::{Pause, Resume, Save, Shutdown};
use tern_worker_proto::Capability;

use crate::daemon::{Daemon, IDLE_STATES};
use crate::error::{chain, OpError};
use crate::registry::{NewVm, RegistryError, Transition};
use crate::supervise::Boot;
use crate::validation::{check_guest, check_memory, check_name, check_vcpus};
use crate::worker::ConsoleHub;

impl Daemon {
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
        // A clustered VM starts only under this node's ownership.
        if let Err(e) = crate::failover::before_start(self, &row).await {
            self.fail(&id, &chain(&e))?;
            return Err(e);
        }
        let spec = match self.launch_spec(&row, Boot::Fresh) {
            Ok(s) => s,
            Err(e) => {
                self.fail(&id, &chain(&e))?;
                return Err(e);
            }
        };
        // Its switch ports (taps with their policies), made anew each start.
        let mut spec = spec;
        match self.nic_specs(&row).await {
            Ok(nics) => spec.nics = nics,
            Err(e) => {
                self.fail(&id, &chain(&e))?;
                return Err(e);
            }
        }
        let vm = self
            .run_worker(&row, spec, VmState::Starting, "started")
            .await?;
        crate::failover::renew_now(self, &row.name).await;
        Ok(vm)
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
        let _ = w.call(Shutdown {}, Duration::from_secs(5)).await;
        if !w.wait_gone(self.cfg.stop_timeout).await {
            tracing::warn!("VM {}: no exit after a stop request; killing it", row.name);
            w.kill_requested.store(true, Ordering::SeqCst);
            let _ = w.kill();
            if !w.wait_gone(Duration::from_secs(10)).await {
                return Err(OpError::Failed(format!(
                    "VM {}: worker pid {} survived SIGKILL",
                    row.name, w.pid
                )));
            }
        }
        crate::failover::after_stop(self, &row.name).await;
        self.get(&id)
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
        if !w.wait_gone(Duration::from_secs(10)).await {
            return Err(OpError::Failed(format!(
                "VM {}: worker pid {} survived SIGKILL",
                row.name, w.pid
            )));
        }
        crate::failover::after_stop(self, &row.name).await;
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
        let t = Duration::from_secs(10);
        let done = if pause {
            w.call(Pause {}, t).await
        } else {
            w.call(Resume {}, t).await
        };
        done.map_err(|source| OpError::Worker {
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
        let _ = std::fs::remove_dir_all(self.cfg.checkpoint_dir(&id));
        for p in [self.cfg.worker_log(&id), self.cfg.serial_log(&id)] {
            let _ = std::fs::remove_file(p);
        }
        drop(g);
        self.forget_lock(&id);
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

    /// `POST /v1/vms/{vm}/save`: the worker writes the VM's state and
    /// memory into a new directory and exits; the VM is `saved`.
    pub async fn save(&self, key: &str) -> Result<Vm, OpError> {
        let id = self.reg.vm(key)?.id;
        if !self.caps.has(Capability::SaveRestore) {
            return Err(OpError::not_implemented("save", "capability save-restore"));
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
        let req = Save { dir: dir.clone() };
        match w.call(req, Duration::from_secs(600)).await {
            Ok(_) => {
                self.reg
                    .set_saved_dir(&id, Some(&dir.display().to_string()))?;
                if !w.wait_gone(self.cfg.stop_timeout).await {
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
        if !self.caps.has(Capability::SaveRestore) {
            return Err(OpError::not_implemented(
                "restore",
                "capability save-restore",
            ));
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
        let spec = match self.launch_spec(&row, Boot::Restore(dir.into())) {
            Ok(s) => s,
            Err(e) => {
                self.fail(&id, &chain(&e))?;
                return Err(e);
            }
        };
        self.run_worker(&row, spec, VmState::Restoring, "restored")
            .await
    }
}
