//! Supervision of workers: what a worker is launched with, spawning it and
//! waiting until it answers, recording its end, and finding workers again
//! after a daemon restart.
//!
//! Builds on the core ([`crate::daemon`]); the operations call into it.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tern_api::{Vm, VmState};
use tokio::sync::watch;

use crate::daemon::{Daemon, WORKER_STATES};
use crate::error::{chain, OpError};
use crate::registry::{Transition, VmRow};
use crate::worker::{self, ConsoleHub, Launch, Worker};

impl Daemon {
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
            if let Some(v) = d.qos.max_bw {
                spec.push_str(&format!(",max-bw={v}"));
            }
            args.push("--disk".to_string());
            args.push(spec);
        }
        Ok(args)
    }

    /// `--checkpoint-dir` for VM `id` (its worker keeps the checkpoints).
    pub(crate) fn checkpoint_args(&self, id: &str) -> Vec<String> {
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

    /// Spawns a worker for `row` (in state `via`), supervises it, and waits
    /// until it answers; then the VM is running and `event` recorded.
    pub(crate) async fn run_worker(
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
                let msg = chain(&e);
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
        self.wait_ready(&id, &launch.control, gone).await?;
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
        self.insert_worker(&row.id, w.clone());
        w
    }

    /// Polls the control socket until the worker answers, or fails if the
    /// worker ends first.
    pub(crate) async fn wait_ready(
        &self,
        id: &str,
        control: &Path,
        mut gone: watch::Receiver<bool>,
    ) -> Result<(), OpError> {
        let start = Instant::now();
        loop {
            if *gone.borrow() {
                let row = self.reg.vm(id)?;
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
                return Ok(());
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

    /// Records the end of a worker (`status` is unknown for a worker found
    /// again after a daemon restart).
    pub async fn worker_ended(&self, id: &str, w: &Arc<Worker>, status: Option<ExitStatus>) {
        self.remove_worker(id, w);
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
}
