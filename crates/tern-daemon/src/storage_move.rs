//! Storage live migration through the daemon: `POST
//! /v1/vms/{vm}/disks/{disk}/move` checks the target directory (inside the
//! host's allowed disk directories) and starts `storage-move` on the VM's
//! worker, which copies the image while the VM runs and pivots onto the
//! copy (crate `tern-worker`, module `storage_move`). The registry records
//! the new path and format once the worker reports the move completed:
//! a watcher task polls until the end, and every `GET .../move` settles
//! it too (so a daemon restarted mid-move still records it).
//!
//! The worker refuses disks with checkpoints and read-only disks, and
//! refuses a move while a migration runs; the daemon adds that the disk's
//! registered file is not shared with another registered disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tern_api::{Disk, DiskFormat, DiskMove, DiskMoveState, MoveDisk};
use tern_worker_proto::storage_move::{
    StorageMove, StorageMoveCancel, StorageMovePhase, StorageMoveProgress, StorageMoveStatus,
};
use tern_worker_proto::{Capability, ErrorCode};

use crate::daemon::Daemon;
use crate::error::OpError;
use crate::registry::{RegistryError, VmRow};

/// How often the watcher asks the worker.
const POLL: Duration = Duration::from_millis(200);

fn worker_format(f: DiskFormat) -> tern_worker_proto::DiskFormat {
    match f {
        DiskFormat::Raw => tern_worker_proto::DiskFormat::Raw,
        DiskFormat::Vhdx => tern_worker_proto::DiskFormat::Vhdx,
    }
}

fn api_format(f: tern_worker_proto::DiskFormat) -> DiskFormat {
    match f {
        tern_worker_proto::DiskFormat::Raw => DiskFormat::Raw,
        tern_worker_proto::DiskFormat::Vhdx => DiskFormat::Vhdx,
    }
}

/// The VM and one of its disks with its index in the worker's order:
/// `disk` is a disk name or id, or else the index itself.
fn find(d: &Daemon, vm: &str, disk: &str) -> Result<(VmRow, Disk, usize), OpError> {
    let row = d.reg.vm(vm)?;
    let disks = d.reg.vm_disks(&row.id)?;
    let by_key = disks.iter().position(|x| x.id == disk || x.name == disk);
    let index = by_key
        .or_else(|| disk.parse::<usize>().ok().filter(|&i| i < disks.len()))
        .ok_or_else(|| RegistryError::NoDisk(format!("{disk} (of VM {})", row.name)))?;
    let found = disks[index].clone();
    Ok((row, found, index))
}

/// `to_dir`, canonical, when it is a directory inside an allowed one.
fn check_dir(allowed: &[PathBuf], to_dir: &str) -> Result<PathBuf, OpError> {
    let p = Path::new(to_dir);
    if !p.is_absolute() {
        return Err(OpError::BadRequest(format!(
            "target directory {to_dir} must be an absolute path"
        )));
    }
    let dir = p
        .canonicalize()
        .ok()
        .filter(|c| c.is_dir())
        .ok_or_else(|| {
            OpError::BadRequest(format!("target directory {to_dir} is not a directory"))
        })?;
    let inside = allowed.iter().any(|a| {
        a.canonicalize()
            .map(|a| dir.starts_with(&a))
            .unwrap_or(false)
    });
    if !inside {
        return Err(OpError::BadRequest(format!(
            "target directory {to_dir} is outside the allowed disk directories ({})",
            allowed
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(dir)
}

/// A worker's refusal as the API's error; other failures as they are.
fn refused(e: OpError) -> OpError {
    let OpError::Worker { source, .. } = &e else {
        return e;
    };
    let Some(r) = source.refusal() else {
        return e;
    };
    let msg = r.message.clone();
    match r.code {
        ErrorCode::BadRequest => OpError::BadRequest(msg),
        ErrorCode::NotFound => OpError::NotFound(msg),
        ErrorCode::Conflict | ErrorCode::Busy => RegistryError::DiskBusy(msg).into(),
        ErrorCode::Unsupported => OpError::not_implemented("moving a disk", "storage-move"),
        _ => e,
    }
}

fn view(row: &VmRow, disk: &Disk, p: &StorageMoveProgress) -> DiskMove {
    DiskMove {
        vm: row.name.clone(),
        disk: disk.name.clone(),
        state: match p.phase {
            StorageMovePhase::Completed => DiskMoveState::Completed,
            StorageMovePhase::Failed => DiskMoveState::Failed,
            StorageMovePhase::Cancelled => DiskMoveState::Cancelled,
            _ => DiskMoveState::Running,
        },
        phase: p.phase.as_str().into(),
        source: p.source.display().to_string(),
        target: p.target.display().to_string(),
        total_bytes: p.total_bytes,
        copied_bytes: p.copied_bytes,
        rounds: p.rounds,
        elapsed_ms: p.elapsed_ms,
        held_ms: p.held_ms,
        old_removed: p.old_removed,
        error: p.error.clone(),
    }
}

/// Records a completed move of `disk` in the registry (once: a second
/// call finds the path already there).
fn settle(d: &Daemon, disk: &Disk, p: &StorageMoveProgress) -> Result<(), OpError> {
    if p.phase != StorageMovePhase::Completed || Path::new(&disk.path) != p.source {
        return Ok(());
    }
    let format = p.format.map(api_format).unwrap_or(disk.format);
    d.reg
        .set_disk_location(&disk.id, &p.target.display().to_string(), format)?;
    Ok(())
}

/// The worker's last move, if it is one of `index`.
async fn progress(
    d: &Daemon,
    row: &VmRow,
    index: usize,
) -> Result<Option<StorageMoveProgress>, OpError> {
    let p = d
        .call_if_running(&row.id, StorageMoveStatus {})
        .await
        .map_err(refused)?;
    Ok(p.filter(|p| p.phase != StorageMovePhase::None && p.disk == index))
}

/// `POST /v1/vms/{vm}/disks/{disk}/move`.
pub async fn start(
    d: &Arc<Daemon>,
    vm: &str,
    disk: &str,
    req: &MoveDisk,
) -> Result<DiskMove, OpError> {
    let (row, found, index) = find(d, vm, disk)?;
    let dir = check_dir(&d.cfg.disk_dirs, &req.to_dir)?;
    if !d.caps.has(Capability::StorageMove) {
        return Err(OpError::not_implemented("moving a disk", "storage-move"));
    }
    let shared = d
        .reg
        .disks()?
        .iter()
        .any(|x| x.id != found.id && x.path == found.path);
    if shared {
        return Err(RegistryError::DiskBusy(format!(
            "the file of disk {} is registered for another disk too",
            found.name
        ))
        .into());
    }
    // No start, stop or other disk change while the move begins.
    let guard = d.lock_vm(&row.id).await;
    let started = d
        .call_if_running(
            &row.id,
            StorageMove {
                disk: index,
                to_dir: dir,
                format: req.format.map(worker_format),
                bandwidth: req.bandwidth,
            },
        )
        .await
        .map_err(refused)?;
    drop(guard);
    if started.is_none() {
        return Err(RegistryError::WrongState {
            name: row.name.clone(),
            state: row.state,
            action: "move a disk of".into(),
        }
        .into());
    }
    let p = progress(d, &row, index).await?.unwrap_or_default();
    let d2 = d.clone();
    let (row2, disk2) = (row.clone(), found.clone());
    tokio::spawn(async move { watch(&d2, &row2, &disk2, index).await });
    Ok(view(&row, &found, &p))
}

/// Follows a move to its end and records it.
async fn watch(d: &Daemon, row: &VmRow, disk: &Disk, index: usize) {
    loop {
        tokio::time::sleep(POLL).await;
        match progress(d, row, index).await {
            Ok(Some(p)) if p.phase.is_final() => {
                if let Err(e) = settle(d, disk, &p) {
                    tracing::error!(
                        "disk {} moved to {}, but the registry was not updated: {}",
                        disk.name,
                        p.target.display(),
                        crate::error::chain(&e)
                    );
                }
                return;
            }
            Ok(Some(_)) => {}
            // The worker is gone (the VM stopped) or no longer answers.
            Ok(None) | Err(_) => return,
        }
    }
}

/// `GET /v1/vms/{vm}/disks/{disk}/move`.
pub async fn show(d: &Daemon, vm: &str, disk: &str) -> Result<DiskMove, OpError> {
    let (row, found, index) = find(d, vm, disk)?;
    let p = progress(d, &row, index).await?.ok_or_else(|| {
        OpError::NotFound(format!(
            "no move of disk {} of VM {} (the VM must run)",
            found.name, row.name
        ))
    })?;
    settle(d, &found, &p)?;
    Ok(view(&row, &found, &p))
}

/// `POST /v1/vms/{vm}/disks/{disk}/move/cancel`.
pub async fn cancel(d: &Daemon, vm: &str, disk: &str) -> Result<DiskMove, OpError> {
    let (row, found, index) = find(d, vm, disk)?;
    let running = progress(d, &row, index)
        .await?
        .filter(|p| !p.phase.is_final());
    if running.is_none() {
        return Err(RegistryError::DiskBusy(format!(
            "no move of disk {} of VM {} is running",
            found.name, row.name
        ))
        .into());
    }
    d.call_if_running(&row.id, StorageMoveCancel {})
        .await
        .map_err(refused)?;
    let p = progress(d, &row, index).await?.unwrap_or_default();
    Ok(view(&row, &found, &p))
}

/// The HTTP handlers.
pub(crate) mod handlers {
    use std::sync::Arc;

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::Json;
    use tern_api::{DiskMove, MoveDisk};

    use crate::api::{ApiErr, Body};
    use crate::daemon::Daemon;

    type St = State<Arc<Daemon>>;

    pub(crate) async fn move_disk(
        State(d): St,
        Path((vm, disk)): Path<(String, String)>,
        Body(req): Body<MoveDisk>,
    ) -> Result<Response, ApiErr> {
        let m = super::start(&d, &vm, &disk, &req).await?;
        Ok((StatusCode::ACCEPTED, Json(m)).into_response())
    }

    pub(crate) async fn get_disk_move(
        State(d): St,
        Path((vm, disk)): Path<(String, String)>,
    ) -> Result<Json<DiskMove>, ApiErr> {
        Ok(Json(super::show(&d, &vm, &disk).await?))
    }

    pub(crate) async fn cancel_disk_move(
        State(d): St,
        Path((vm, disk)): Path<(String, String)>,
    ) -> Result<Json<DiskMove>, ApiErr> {
        Ok(Json(super::cancel(&d, &vm, &disk).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_directories_must_be_inside_the_allowed_ones() {
        let d = tempfile::tempdir().unwrap();
        let allowed = d.path().join("disks");
        std::fs::create_dir_all(allowed.join("fast")).unwrap();
        std::fs::create_dir(d.path().join("other")).unwrap();
        let dirs = [allowed.clone()];
        let canon = allowed.canonicalize().unwrap();
        let fast = format!("{}/fast", allowed.display());
        assert_eq!(check_dir(&dirs, &fast).unwrap(), canon.join("fast"));
        for bad in [
            "relative".to_string(),
            format!("{}/other", d.path().display()),
            format!("{}/fast/../../other", allowed.display()),
            format!("{}/missing", allowed.display()),
        ] {
            assert!(
                matches!(check_dir(&dirs, &bad), Err(OpError::BadRequest(_))),
                "{bad} accepted"
            );
        }
    }
}
