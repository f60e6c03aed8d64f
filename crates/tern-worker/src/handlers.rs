//! What each control request does: [`Worker::handle`] turns a typed
//! request into its typed reply (or a coded refusal) and says what the
//! worker does once the reply is out.

use std::time::Duration;

use tern_vmm::devices::{DiskError, QosLimits};
use tern_vmm::{RunState, Vm, VmError};
use tern_worker_proto::requests::*;
use tern_worker_proto::wire::encode_reply;
use tern_worker_proto::{DiskFormat, HelloReply, Request, VmState, WorkerError};

use crate::{error_chain, Worker};

/// A request's encoded reply and what follows it.
pub struct Handled {
    /// The reply line (no newline).
    pub line: String,
    /// Stop the VM once the reply is written (the worker then exits).
    pub stop: bool,
    /// A `migrate-status` reply that showed the migration's end.
    pub migration_ended: Option<tern_worker_proto::migration::MigrationStatus>,
}

impl Handled {
    fn reply<T: serde::Serialize>(r: Result<T, WorkerError>) -> Handled {
        Handled {
            line: encode_reply(&r),
            stop: false,
            migration_ended: None,
        }
    }
}

/// The run state as the protocol says it.
pub fn state(s: RunState) -> VmState {
    match s {
        RunState::Running => VmState::Running,
        RunState::Paused => VmState::Paused,
        RunState::Stopping => VmState::Stopping,
        RunState::Stopped => VmState::Stopped,
    }
}

/// A VMM error as a coded refusal.
pub fn vm_error(e: &VmError) -> WorkerError {
    let msg = error_chain(e);
    match e {
        VmError::Control(
            tern_vmm::control::ControlError::NotRunning
            | tern_vmm::control::ControlError::NotPaused,
        )
        | VmError::NotPaused(_)
        | VmError::NoPowerButton => WorkerError::conflict(msg),
        VmError::Disk(d) => disk_error_code(d, msg),
        _ => WorkerError::failed(msg),
    }
}

fn disk_error(e: &DiskError) -> WorkerError {
    disk_error_code(e, error_chain(e))
}

fn disk_error_code(e: &DiskError, msg: String) -> WorkerError {
    match e {
        DiskError::NoSuchDisk(..) => WorkerError::not_found(msg),
        DiskError::Qos { .. } => WorkerError::bad_request(msg),
        _ => WorkerError::failed(msg),
    }
}

/// The capabilities of this worker build.
pub fn hello() -> HelloReply {
    use tern_worker_proto::Capability::*;
    HelloReply::new(
        env!("CARGO_PKG_VERSION"),
        vec![
            SaveRestore,
            Migration,
            Checkpoints,
            Export,
            Disks,
            Vhdx,
            Memfd,
            Prealloc,
            ConsoleInput,
            LaunchSpec,
            ListeningFile,
            PowerButton,
            StorageMove,
        ],
    )
}

fn format(f: tern_block::DiskFormat) -> DiskFormat {
    match f {
        tern_block::DiskFormat::Vhdx => DiskFormat::Vhdx,
        tern_block::DiskFormat::Raw => DiskFormat::Raw,
    }
}

fn qos(q: &QosLimits) -> tern_worker_proto::QosLimits {
    tern_worker_proto::QosLimits {
        max_iops: q.max_iops,
        min_iops: q.min_iops,
        max_bw: q.max_bw,
    }
}

fn status(vm: &Vm) -> StatusReply {
    let cfg = vm.config();
    let disks = vm
        .disks()
        .status()
        .iter()
        .map(|d| DiskStatus {
            path: d.path.clone(),
            format: format(d.format),
            read_only: d.read_only,
            capacity: d.capacity,
            qos: qos(&d.qos),
            requests: d.requests,
            errors: d.errors,
            throttled: d.throttled,
            read_bytes: d.read_bytes,
            write_bytes: d.write_bytes,
        })
        .collect();
    let probe = match cfg.guest {
        tern_vmm::Guest::Probe { .. } => vm.probe_status().ok().map(|s| ProbeStatus {
            started: s.magic == tern_probe_abi::STATUS_MAGIC,
            phase: s.phase,
            step: s.step,
            generation: s.generation,
            cursor: s.cursor,
            pages: s.pages,
            touch_rounds: s.touch_rounds,
            command_ack: s.command_ack,
            checked_in: s.checked_in,
            blk_capacity: s.blk_capacity,
            blk_capacity_changes: s.blk_capacity_changes,
            blk_in_use_end: s.blk_in_use_end,
        }),
        tern_vmm::Guest::Linux { .. } => None,
    };
    StatusReply {
        state: state(vm.state()),
        vcpus: cfg.vcpus,
        memory: cfg.memory,
        pid: std::process::id(),
        disks,
        scsi: crate::scsi::luns(vm),
        probe,
    }
}

/// `console-input`: the guest gets the bytes as it drains its UART; a
/// guest that stops reading makes the request fail after a second.
fn console_input(vm: &Vm, bytes: &[u8]) -> Result<ConsoleInputReply, WorkerError> {
    if bytes.len() > MAX_CONSOLE_INPUT {
        return Err(WorkerError::bad_request(format!(
            "{} bytes of console input in one request; at most {MAX_CONSOLE_INPUT}",
            bytes.len()
        )));
    }
    let took = tern_devices::serial::type_input(vm.serial(), bytes, Duration::from_secs(1));
    if took < bytes.len() {
        return Err(WorkerError::new(
            tern_worker_proto::ErrorCode::Timeout,
            format!(
                "the guest took {took} of {} bytes: it is not reading its serial port",
                bytes.len()
            ),
        ));
    }
    Ok(ConsoleInputReply { accepted: took })
}

fn disk_qos(vm: &Vm, r: &DiskQos) -> Result<DiskQosReply, WorkerError> {
    let Some(cur) = vm.disks().status().get(r.disk).map(|d| d.qos) else {
        return Err(disk_error(&DiskError::NoSuchDisk(r.disk, vm.disks().len())));
    };
    let limits = QosLimits {
        max_iops: r.max_iops.unwrap_or(cur.max_iops),
        min_iops: r.min_iops.unwrap_or(cur.min_iops),
        max_bw: r.max_bw.unwrap_or(cur.max_bw),
    };
    vm.disks()
        .set_qos(r.disk, limits)
        .map_err(|e| disk_error(&e))?;
    Ok(DiskQosReply {
        disk: r.disk,
        qos: qos(&limits),
    })
}

fn disk_resize(vm: &Vm, r: &DiskResize) -> Result<DiskResizeReply, WorkerError> {
    let policy = tern_vmm::devices::resize_policy(vm, r.disk);
    vm.disks()
        .resize(r.disk, r.size, &policy)
        .map_err(|e| disk_error(&e))?;
    Ok(DiskResizeReply {
        disk: r.disk,
        capacity: r.size,
    })
}

fn events(vm: &Vm) -> EventsReply {
    use tern_block::qos::QosEventKind as K;
    EventsReply {
        events: vm
            .disks()
            .events()
            .iter()
            .map(|e| DiskEvent {
                seq: e.seq,
                time_ms: e.time_ms,
                disk: e.disk,
                event: match e.event.kind {
                    K::MinIopsNotMet => QosEventKind::MinIopsNotMet,
                    K::MinIopsRestored => QosEventKind::MinIopsRestored,
                },
                min_iops: e.event.min_iops,
                measured_iops: e.event.measured_iops,
            })
            .collect(),
    }
}

impl Worker {
    /// Executes one request.
    pub fn handle(&self, req: Request) -> Handled {
        let vm = &self.vm;
        let now = |r: Result<(), VmError>| {
            r.map(|()| StateReply {
                state: state(vm.state()),
            })
            .map_err(|e| vm_error(&e))
        };
        if let Some(busy) = self.conflicts_with_moves(&req) {
            return Handled::reply::<Ack>(Err(busy));
        }
        match req {
            Request::Hello(_) => Handled::reply(Ok(hello())),
            Request::Status(_) => Handled::reply(Ok(status(vm))),
            Request::OwnershipRenew(r) => Handled::reply(self.ownership.renew(vm, &r)),
            Request::Pause(_) => Handled::reply(now(vm.pause())),
            Request::Resume(_) => Handled::reply(now(vm.resume())),
            Request::Shutdown(_) => {
                vm.request_stop();
                Handled::reply(Ok(StateReply {
                    state: VmState::Stopping,
                }))
            }
            Request::PowerButton(_) => Handled::reply(now(vm.power_button())),
            Request::Reports(_) => Handled::reply(Ok(ReportsReply {
                reports: vm.reports().all(),
            })),
            Request::ProbeStop(_) => Handled::reply(now(vm.probe_stop_step())),
            Request::ProbeTouch(r) => Handled::reply(now(vm.probe_touch(r.round))),
            Request::DiskQos(r) => Handled::reply(disk_qos(vm, &r)),
            Request::DiskResize(r) => Handled::reply(disk_resize(vm, &r)),
            Request::Events(_) => Handled::reply(Ok(events(vm))),
            Request::ConsoleInput(r) => Handled::reply(console_input(vm, &r.bytes)),
            Request::Save(r) => {
                let reply = self.save(&r.dir);
                let stop = reply.is_ok();
                Handled {
                    stop,
                    ..Handled::reply(reply)
                }
            }
            Request::CheckpointCreate(r) => {
                Handled::reply(self.checkpoint_create(&r.name, r.memory))
            }
            Request::CheckpointList(_) => Handled::reply(self.checkpoint_list()),
            Request::CheckpointRevert(r) => {
                let reply = self.checkpoint_revert(r.id);
                let stop = matches!(&reply, Ok(r) if r.state == VmState::Stopped);
                Handled {
                    stop,
                    ..Handled::reply(reply)
                }
            }
            Request::CheckpointDelete(r) => Handled::reply(self.checkpoint_delete(r.id)),
            Request::Export(r) => Handled::reply(self.export(&r.dir)),
            Request::Migrate(r) => Handled::reply(self.migrations.start(vm, &r)),
            Request::MigrateStatus(_) => {
                let s = self.migrations.status();
                let ended = s.outcome.is_some().then(|| s.clone());
                Handled {
                    migration_ended: ended,
                    ..Handled::reply(Ok(s))
                }
            }
            Request::MigrateCancel(_) => Handled::reply(self.migrations.cancel()),
            Request::StorageMove(r) => {
                Handled::reply(self.moves.start(vm, self.has_checkpoints(), &r))
            }
            Request::StorageMoveStatus(_) => Handled::reply(Ok(self.moves.status())),
            Request::StorageMoveCancel(_) => Handled::reply(self.moves.cancel()),
            Request::ScsiAdd(r) => Handled::reply(crate::scsi::add(vm, &r)),
            Request::ScsiRemove(r) => Handled::reply(crate::scsi::remove(vm, &r)),
            Request::DvdInsert(r) => Handled::reply(crate::scsi::insert(vm, &r)),
            Request::DvdEject(r) => Handled::reply(crate::scsi::eject(vm, &r)),
            Request::ScsiResize(r) => Handled::reply(crate::scsi::resize(vm, &r)),
        }
    }
}

impl Worker {
    fn has_checkpoints(&self) -> bool {
        self.store.as_ref().is_some_and(|s| {
            !s.lock()
                .unwrap_or_else(|p| p.into_inner())
                .list()
                .is_empty()
        })
    }

    /// A storage move and the requests that switch, hand over or freeze
    /// disk images exclude each other: the move's pivot would otherwise
    /// put the device on an image the other one does not know.
    fn conflicts_with_moves(&self, req: &Request) -> Option<WorkerError> {
        let switches_disks = matches!(
            req,
            Request::Migrate(_)
                | Request::Save(_)
                | Request::Export(_)
                | Request::CheckpointCreate(_)
                | Request::CheckpointRevert(_)
                | Request::CheckpointDelete(_)
        );
        if switches_disks && self.moves.running() {
            return Some(WorkerError::busy(format!(
                "a storage move is running: {} waits until it ends (or storage-move-cancel)",
                req.name()
            )));
        }
        if matches!(req, Request::StorageMove(_)) {
            let p = self.migrations.status().phase;
            if p != tern_worker_proto::migration::MigrationPhase::None && !p.is_final() {
                return Some(WorkerError::busy(
                    "a migration is running: move the disk after it ends",
                ));
            }
        }
        None
    }
}
