//! Supervision of workers: what a worker is launched with, spawning it and
//! waiting until it answers, recording its end, and finding workers again
//! after a daemon restart.
//!
//! Builds on the core ([`crate::daemon`]); the operations call into it.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_api::{DiskFormat, Vm, VmState};
use tern_worker_proto::launch::{GuestSpec, RestoreSpec, SerialSpec};
use tern_worker_proto::requests::Status;
use tern_worker_proto::{AsyncClient, Capability, ClientError, DiskSpec, LaunchSpec, QosLimits};
use tokio::sync::watch;

use crate::daemon::{Daemon, WORKER_STATES};
use crate::error::{chain, OpError};
use crate::registry::{Transition, VmRow};
use crate::worker::{self, ConsoleHub, Launch, Worker, WorkerError};

/// How a worker brings its VM up.
pub(crate) enum Boot {
    /// Boots the VM afresh.
    Fresh,
    /// Continues the VM saved in this directory.
    Restore(PathBuf),
    /// Waits for the VM to arrive by live migration here.
    Incoming(tern_worker_proto::Endpoint),
}

/// The worker's disk description of a registry disk: its own path, the
/// format the registry recorded (never guessed from the file name) and
/// every QoS limit (0: none).
pub(crate) fn disk_spec(d: &tern_api::Disk) -> DiskSpec {
    DiskSpec {
        path: PathBuf::from(&d.path),
        format: Some(match d.format {
            DiskFormat::Raw => tern_worker_proto::DiskFormat::Raw,
            DiskFormat::Vhdx => tern_worker_proto::DiskFormat::Vhdx,
        }),
        read_only: false,
        qos: QosLimits {
            max_iops: d.qos.max_iops.map_or(0, u64::from),
            min_iops: d.qos.min_iops.map_or(0, u64::from),
            max_bw: d.qos.max_bw.unwrap_or(0),
        },
        poll: false,
    }
}

impl Daemon {
    /// The launch spec of VM `row`: its settings, and its disks in attach
    /// order (the worker's disk index is this position).
    pub(crate) fn launch_spec(&self, row: &VmRow, boot: Boot) -> Result<LaunchSpec, OpError> {
        if let Err(e) = self.caps.hello() {
            return Err(OpError::Worker {
                what: format!("cannot start VM {}", row.name),
                source: WorkerError::Unusable(e.clone()),
            });
        }
        let mut spec = match boot {
            Boot::Restore(dir) => LaunchSpec::restoring(RestoreSpec {
                dir,
                mode: Default::default(),
            }),
            Boot::Fresh | Boot::Incoming(_) => {
                let guest = match row.guest.strip_prefix("boot:") {
                    Some(order) => GuestSpec::Boot {
                        order: crate::validation::boot_order(order).map_err(|e| {
                            OpError::Failed(format!("VM {}: guest '{}': {e}", row.name, row.guest))
                        })?,
                    },
                    None => {
                        let workload = row.guest.strip_prefix("probe:").ok_or_else(|| {
                            OpError::Failed(format!(
                                "VM {}: guest '{}' is not probe:WORKLOAD or boot:ORDER",
                                row.name, row.guest
                            ))
                        })?;
                        GuestSpec::Probe {
                            workload: workload.into(),
                            image: self.cfg.probe_image.clone(),
                        }
                    }
                };
                let mut spec = LaunchSpec::new(row.vcpus, row.memory, guest);
                spec.disks = self.reg.vm_disks(&row.id)?.iter().map(disk_spec).collect();
                // Guest memory in a memfd: a same-host migration hands it
                // over instead of copying it.
                spec.memfd = self.caps.has(Capability::Memfd);
                if let Boot::Incoming(ep) = boot {
                    spec.incoming = Some(ep);
                }
                spec
            }
        };
        let lacks = |what: &str, cap: &str| {
            OpError::not_implemented(&format!("VM {}: {what}", row.name), cap)
        };
        if !spec.disks.is_empty() && !self.caps.has(Capability::Disks) {
            return Err(lacks("disks", "capability disks"));
        }
        let vhdx = Some(tern_worker_proto::DiskFormat::Vhdx);
        if spec.disks.iter().any(|d| d.format == vhdx) && !self.caps.has(Capability::Vhdx) {
            return Err(lacks("VHDX disks", "capability vhdx"));
        }
        if self.caps.has(Capability::Checkpoints) {
            spec.checkpoint_dir = Some(self.cfg.checkpoint_dir(&row.id));
        }
        spec.serial = SerialSpec::File {
            path: self.cfg.serial_path(&row.id),
        };
        spec.control = Some(self.cfg.control_path(&row.id));
        Ok(spec)
    }

    /// What starts VM `row`'s worker on `spec`.
    pub(crate) fn launch(&self, row: &VmRow, spec: LaunchSpec) -> Launch {
        Launch {
            exe: self.cfg.worker_exe.clone(),
            spec,
            spec_path: self.cfg.launch_path(&row.id),
            log: self.cfg.worker_log(&row.id),
        }
    }

    /// Spawns the worker of `launch` for `row`, records its pid, tracks it
    /// and supervises it until it ends. `incoming_disks`: the VM arrives by
    /// migration and these disks were registered for it. On an error nothing
    /// runs and the VM's state is the caller's to settle.
    pub(crate) fn spawn_tracked(
        self: &Arc<Self>,
        row: &VmRow,
        launch: &Launch,
        incoming_disks: Option<Vec<String>>,
    ) -> Result<Arc<Worker>, OpError> {
        let serial_path = self.cfg.serial_path(&row.id);
        let serial =
            worker::open_serial_fifo(&serial_path, true).map_err(|source| OpError::Io {
                what: format!("cannot create the serial FIFO {}", serial_path.display()),
                source,
            })?;
        let mut child = worker::spawn(launch).map_err(|source| OpError::Worker {
            what: format!("cannot start VM {}", row.name),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        // A worker that already exited is a zombie until waited for: its
        // start time reads as none, and the supervisor reports it.
        let pid_start = worker::process_start(pid).unwrap_or(0);
        if let Err(e) = self.reg.set_worker(&row.id, pid, pid_start) {
            let _ = child.start_kill();
            return Err(e.into());
        }
        let w = self.track(row, pid, pid_start, serial);
        if let Some(disks) = incoming_disks {
            *w.incoming_disks.lock().unwrap_or_else(|p| p.into_inner()) = disks;
            w.incoming.store(true, Ordering::SeqCst);
        }
        let this = self.clone();
        let (id, w2) = (row.id.clone(), w.clone());
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            this.worker_ended(&id, &w2, status).await;
        });
        Ok(w)
    }

    /// Spawns a worker for `row` (in state `via`) on `spec`, supervises it,
    /// and waits until it answers; then the VM is running and `event`
    /// recorded.
    pub(crate) async fn run_worker(
        self: &Arc<Self>,
        row: &VmRow,
        spec: LaunchSpec,
        via: VmState,
        event: &str,
    ) -> Result<Vm, OpError> {
        let id = row.id.clone();
        let launch = self.launch(row, spec);
        let w = match self.spawn_tracked(row, &launch, None) {
            Ok(w) => w,
            Err(e) => {
                self.fail(&id, &chain(&e))?;
                return Err(e);
            }
        };
        if let Some(ended) = self.wait_ready(&id, &w).await? {
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
                    message: format!("running (worker pid {})", w.pid),
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
        let control = AsyncClient::new(self.cfg.control_path(&row.id));
        let console = ConsoleHub::start(serial, self.cfg.serial_log(&row.id), control.clone());
        let (gone_tx, gone) = watch::channel(false);
        let w = Arc::new(Worker {
            pid,
            pid_start,
            control,
            console,
            stop_requested: false.into(),
            kill_requested: false.into(),
            save_requested: false.into(),
            incoming: false.into(),
            incoming_disks: Default::default(),
            migrated_away: false.into(),
            gone,
            gone_tx,
            guest_ended: false.into(),
        });
        self.insert_worker(&row.id, w.clone());
        w
    }

    /// Polls the control socket until the worker answers, or fails if the
    /// worker ends first; a worker whose guest ran to its end before the
    /// first answer (the registry says `stopped`, or `failed` with the
    /// guest's own status) started: its row comes back.
    pub(crate) async fn wait_ready(&self, id: &str, w: &Worker) -> Result<Option<VmRow>, OpError> {
        let mut gone = w.gone.clone();
        let start = Instant::now();
        loop {
            if *gone.borrow() {
                let row = self.reg.vm(id)?;
                // Its guest ran to its end (passed or not) before the
                // first answer: the VM started.
                if row.state == VmState::Stopped || w.guest_ended.load(Ordering::SeqCst) {
                    return Ok(Some(row));
                }
                return Err(OpError::Failed(format!(
                    "VM {} did not start: {}",
                    row.name,
                    row.reason.unwrap_or_else(|| "the worker ended".into())
                )));
            }
            let failed = match worker::hello(&w.control, Duration::from_secs(2)).await {
                Ok(_) => return Ok(None),
                // It answers, but in a protocol this daemon does not know.
                Err(
                    e @ WorkerError::Call {
                        source: ClientError::Version(_),
                        ..
                    },
                ) => Some(chain(&e)),
                Err(_) if start.elapsed() > self.cfg.start_timeout => Some(format!(
                    "the worker did not answer on its control socket within {:?}",
                    self.cfg.start_timeout
                )),
                Err(_) => None,
            };
            if let Some(msg) = failed {
                w.kill_requested.store(true, Ordering::SeqCst);
                let _ = w.kill();
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
        let _ = std::fs::remove_file(self.cfg.launch_path(id));
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
            if status
                .and_then(|s| s.code())
                .is_some_and(|c| c < worker::GUEST_STATUS_END || c == worker::GUEST_REBOOTED)
            {
                w.guest_ended.store(true, Ordering::SeqCst);
            }
            match status {
                Some(s) if s.success() => (
                    VmState::Stopped,
                    "the guest finished (exit status 0)".to_string(),
                    "stopped",
                ),
                Some(s) if s.code() == Some(worker::GUEST_REBOOTED) => (
                    VmState::Stopped,
                    format!(
                        "the guest rebooted (exit status {})",
                        worker::GUEST_REBOOTED
                    ),
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
            let control = AsyncClient::new(self.cfg.control_path(&row.id));
            let status = if worker::process_start(pid) == Some(start) {
                let t = Duration::from_secs(5);
                if let Err(
                    e @ WorkerError::Call {
                        source: ClientError::Version(_),
                        ..
                    },
                ) = worker::hello(&control, t).await
                {
                    let msg = format!(
                        "worker pid {pid}, found again after a daemon restart, cannot be \
                         driven (it still runs; stop it by hand): {}",
                        chain(&e)
                    );
                    let _ = self.fail(&row.id, &msg);
                    continue;
                }
                worker::call(&control, Status {}, t).await.ok()
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
            let state = match status.state {
                tern_worker_proto::VmState::Paused => VmState::Paused,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::registry::NewVm;
    use tern_api::{Disk, DiskQos};
    use tern_worker_proto::HelloReply;

    /// A daemon whose worker binary is a script printing `hello`.
    fn daemon(dir: &std::path::Path, hello: &HelloReply) -> Arc<Daemon> {
        use std::os::unix::fs::PermissionsExt;
        let exe = dir.join("fake-tern");
        let json = serde_json::to_string(hello).unwrap();
        std::fs::write(&exe, format!("#!/bin/sh\necho '{json}'\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        Daemon::open(Config::new(dir.join("state"), exe)).unwrap()
    }

    fn vm_with_disks(d: &Daemon, disks: &[Disk]) -> VmRow {
        for k in disks {
            d.reg.create_disk(k).unwrap();
            d.reg.set_disk_qos(&k.id, &k.qos).unwrap();
        }
        d.reg
            .create_vm(&NewVm {
                name: "v".into(),
                vcpus: 2,
                memory: 64 << 20,
                guest: "probe:blk-verify,disk=1".into(),
                disks: disks.iter().map(|k| k.id.clone()).collect(),
            })
            .unwrap()
    }

    fn disk(name: &str, path: &str, format: DiskFormat, qos: DiskQos) -> Disk {
        Disk {
            id: crate::registry::new_id(),
            name: name.into(),
            path: path.into(),
            format,
            size: 1 << 20,
            vm: None,
            qos,
        }
    }

    #[test]
    fn launch_specs_carry_each_disk_as_data_with_its_registry_format() {
        let dir = tempfile::tempdir().unwrap();
        let hello = HelloReply::new(
            "test",
            vec![Capability::LaunchSpec, Capability::Disks, Capability::Vhdx],
        );
        let d = daemon(dir.path(), &hello);
        assert_eq!(d.caps.hello().unwrap(), &hello);
        let qos = DiskQos {
            max_iops: Some(500),
            min_iops: Some(10),
            max_bw: Some(3 << 20),
        };
        let disks = [
            disk("x", "/d/x.img", DiskFormat::Vhdx, DiskQos::default()),
            disk("ro", "/d/a.raw,readonly", DiskFormat::Raw, qos),
            disk(
                "inj",
                "/d/b,path=/d/a.raw,poll",
                DiskFormat::Vhdx,
                DiskQos::default(),
            ),
            disk(
                "sp",
                "/d/with space=1.raw",
                DiskFormat::Raw,
                DiskQos::default(),
            ),
        ];
        let row = vm_with_disks(&d, &disks);
        let spec = d.launch_spec(&row, Boot::Fresh).unwrap();
        assert_eq!((spec.vcpus, spec.memory), (2, 64 << 20));
        assert_eq!(
            spec.guest,
            Some(GuestSpec::Probe {
                workload: "blk-verify,disk=1".into(),
                image: None
            })
        );
        let got: Vec<_> = spec
            .disks
            .iter()
            .map(|k| (k.path.display().to_string(), k.format, k.read_only))
            .collect();
        use tern_worker_proto::DiskFormat as F;
        assert_eq!(
            got,
            [
                ("/d/x.img".to_string(), Some(F::Vhdx), false),
                ("/d/a.raw,readonly".to_string(), Some(F::Raw), false),
                ("/d/b,path=/d/a.raw,poll".to_string(), Some(F::Vhdx), false),
                ("/d/with space=1.raw".to_string(), Some(F::Raw), false),
            ]
        );
        assert_eq!(
            spec.disks[1].qos,
            QosLimits {
                max_iops: 500,
                min_iops: 10,
                max_bw: 3 << 20
            }
        );
        // What the worker reads back is the same document.
        assert_eq!(LaunchSpec::parse(&spec.to_json()).unwrap(), spec);
        // Without checkpoints and memfd in the hello, neither is asked for.
        assert_eq!((spec.checkpoint_dir.clone(), spec.memfd), (None, false));
    }

    #[test]
    fn a_worker_binary_of_an_unknown_protocol_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let hello = HelloReply {
            protocol: tern_worker_proto::PROTOCOL_VERSION + 7,
            ..HelloReply::new("future", vec![Capability::LaunchSpec])
        };
        let d = daemon(dir.path(), &hello);
        let row = vm_with_disks(&d, &[]);
        let e = d.launch_spec(&row, Boot::Fresh).unwrap_err();
        let text = chain(&e);
        let want = format!(
            "protocol version {}",
            tern_worker_proto::PROTOCOL_VERSION + 7
        );
        assert!(text.contains(&want), "{text}");
        assert!(!d.features().save_restore);
    }

    #[test]
    fn a_vhdx_disk_needs_a_worker_that_reads_vhdx() {
        let dir = tempfile::tempdir().unwrap();
        let hello = HelloReply::new("test", vec![Capability::LaunchSpec, Capability::Disks]);
        let d = daemon(dir.path(), &hello);
        let row = vm_with_disks(
            &d,
            &[disk("x", "/d/x.img", DiskFormat::Vhdx, DiskQos::default())],
        );
        let e = d.launch_spec(&row, Boot::Fresh).unwrap_err();
        assert!(matches!(e, OpError::NotImplemented(_)), "{e}");
    }
}
