//! The VM's SCSI controller as the worker sees it: LUNs of the launch spec
//! as the VMM attaches them, and the SCSI requests (hot add and remove,
//! DVD insert and eject, resize) with their coded refusals.

use tern_scsi::TargetError;
use tern_vmm::devices::scsi::{ScsiConfig, ScsiError, ScsiLunConfig, ScsiLunKind};
use tern_vmm::{Vm, VmError};
use tern_worker_proto::requests::{
    DvdEject, DvdInsert, ScsiAdd, ScsiLunStatus, ScsiRemove, ScsiReply, ScsiResize,
};
use tern_worker_proto::{DiskFormat, LaunchSpec, ScsiLunSpec, WorkerError};

use crate::error_chain;

/// A LUN of the spec (numbered `lun`) as the VMM attaches it.
fn lun_config(l: &ScsiLunSpec, lun: u16) -> ScsiLunConfig {
    ScsiLunConfig {
        lun,
        kind: match l.kind {
            tern_worker_proto::ScsiLunKind::Disk => ScsiLunKind::Disk,
            tern_worker_proto::ScsiLunKind::Dvd => ScsiLunKind::Dvd,
        },
        path: l.path.clone().filter(|p| !p.as_os_str().is_empty()),
        format: l.format.map(|f| match f {
            DiskFormat::Raw => tern_block::DiskFormat::Raw,
            DiskFormat::Vhdx => tern_block::DiskFormat::Vhdx,
        }),
        read_only: l.read_only || l.kind == tern_worker_proto::ScsiLunKind::Dvd,
        shared: l.shared,
    }
}

/// The controller the spec asks for. Without a `scsi_initiator` the name
/// is made up from the host, the process and the time: unique per VM
/// start (a restore or migration keeps the saved one).
pub fn scsi_config(spec: &LaunchSpec) -> ScsiConfig {
    let numbers = ScsiLunSpec::numbers(&spec.scsi);
    ScsiConfig {
        initiator: spec
            .scsi_initiator
            .clone()
            .unwrap_or_else(made_up_initiator),
        luns: spec
            .scsi
            .iter()
            .zip(numbers)
            .map(|(l, n)| lun_config(l, n))
            .collect(),
    }
}

fn made_up_initiator() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{host}-{}-{nanos:x}", std::process::id())
}

/// Each LUN's state for a reply.
pub fn luns(vm: &Vm) -> Vec<ScsiLunStatus> {
    let Ok(c) = vm.scsi() else {
        return Vec::new();
    };
    c.status()
        .into_iter()
        .map(|s| ScsiLunStatus {
            lun: s.config.lun,
            kind: match s.config.kind {
                ScsiLunKind::Disk => tern_worker_proto::ScsiLunKind::Disk,
                ScsiLunKind::Dvd => tern_worker_proto::ScsiLunKind::Dvd,
            },
            path: s.config.path,
            read_only: s.config.read_only,
            shared: s.config.shared,
            capacity: s.capacity,
            medium_present: s.medium_present,
        })
        .collect()
}

fn reply(vm: &Vm) -> ScsiReply {
    ScsiReply {
        initiator: vm.scsi().map(|c| c.initiator()).unwrap_or_default(),
        luns: luns(vm),
    }
}

/// A SCSI error as a coded refusal.
fn refusal(e: &ScsiError) -> WorkerError {
    let msg = error_chain(e);
    match e {
        ScsiError::NoController => WorkerError::conflict(msg),
        ScsiError::Target(t) => match t {
            TargetError::NoSuchLun(_) => WorkerError::not_found(msg),
            TargetError::RemovalPrevented(_) | TargetError::LunExists(_) => {
                WorkerError::conflict(msg)
            }
            TargetError::BadLun(_) | TargetError::WrongKind { .. } => WorkerError::bad_request(msg),
            _ => WorkerError::failed(msg),
        },
        ScsiError::DuplicateLun(_) | ScsiError::NoImage(_) => WorkerError::bad_request(msg),
        ScsiError::Open { source, .. } => match source {
            tern_block::BlockError::NotFound(_) => WorkerError::not_found(msg),
            tern_block::BlockError::Locked(_) => WorkerError::conflict(msg),
            tern_block::BlockError::SharedUnsupported(_) => WorkerError::bad_request(msg),
            _ => WorkerError::failed(msg),
        },
        _ => WorkerError::failed(msg),
    }
}

fn controller(vm: &Vm) -> Result<&tern_vmm::devices::scsi::ScsiController, WorkerError> {
    vm.scsi().map_err(|e| match e {
        VmError::Scsi(s) => refusal(&s),
        other => WorkerError::failed(error_chain(&other)),
    })
}

/// `scsi-add`.
pub fn add(vm: &Vm, r: &ScsiAdd) -> Result<ScsiReply, WorkerError> {
    let c = controller(vm)?;
    let Some(n) = r.lun.lun else {
        return Err(WorkerError::bad_request(
            "scsi-add needs the LUN's number (\"lun\")",
        ));
    };
    if r.lun.kind == tern_worker_proto::ScsiLunKind::Disk && r.lun.path.is_none() {
        return Err(refusal(&ScsiError::NoImage(n)));
    }
    c.add(lun_config(&r.lun, n)).map_err(|e| refusal(&e))?;
    Ok(reply(vm))
}

/// `scsi-remove`.
pub fn remove(vm: &Vm, r: &ScsiRemove) -> Result<ScsiReply, WorkerError> {
    controller(vm)?.remove(r.lun).map_err(|e| refusal(&e))?;
    Ok(reply(vm))
}

/// `dvd-insert`.
pub fn insert(vm: &Vm, r: &DvdInsert) -> Result<ScsiReply, WorkerError> {
    controller(vm)?
        .insert(r.lun, r.path.clone())
        .map_err(|e| refusal(&e))?;
    Ok(reply(vm))
}

/// `dvd-eject`.
pub fn eject(vm: &Vm, r: &DvdEject) -> Result<ScsiReply, WorkerError> {
    controller(vm)?
        .eject(r.lun, r.force)
        .map_err(|e| refusal(&e))?;
    Ok(reply(vm))
}

/// `scsi-resize`.
pub fn resize(vm: &Vm, r: &ScsiResize) -> Result<ScsiReply, WorkerError> {
    if r.size == 0 || !r.size.is_multiple_of(512) {
        return Err(WorkerError::bad_request(format!(
            "size {} is not a positive multiple of 512",
            r.size
        )));
    }
    controller(vm)?
        .resize(r.lun, r.size, &tern_block::ResizePolicy::default())
        .map_err(|e| refusal(&e))?;
    Ok(reply(vm))
}
