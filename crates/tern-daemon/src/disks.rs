//! Disks: image files in the host's allowed directories, registered in the
//! registry, attached to VMs.

use std::path::{Component, Path, PathBuf};

use tern_api::{CreateDisk, Disk, DiskFormat, DiskQos, Vm};

use crate::daemon::{Daemon, IDLE_STATES};
use crate::error::{chain, OpError};
use crate::registry::{new_id, RegistryError};
use crate::validation::{check_name, check_size};
use tern_api::limits::MAX_BW;
use tern_worker_proto::requests::{DiskQos as DiskQosRequest, DiskResize};

/// Resolves where a disk file goes and checks it lies inside one of the
/// allowed directories (after resolving symbolic links of its directory).
pub fn resolve_path(
    dirs: &[PathBuf],
    name: &str,
    format: DiskFormat,
    path: Option<&str>,
) -> Result<PathBuf, OpError> {
    let first = dirs
        .first()
        .ok_or_else(|| OpError::BadRequest("this host allows no disk directories".into()))?;
    let Some(path) = path else {
        return Ok(first.join(format!("{name}.{}", format.as_str())));
    };
    let p = Path::new(path);
    let outside = || {
        OpError::BadRequest(format!(
            "disk path {path} is outside the allowed directories ({})",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(OpError::BadRequest(format!(
            "disk path {path} must be absolute, without '..'"
        )));
    }
    let (Some(parent), Some(file)) = (p.parent(), p.file_name()) else {
        return Err(outside());
    };
    let parent = parent.canonicalize().map_err(|_| outside())?;
    let inside = dirs.iter().any(|d| {
        d.canonicalize()
            .map(|d| parent.starts_with(&d))
            .unwrap_or(false)
    });
    if !inside {
        return Err(outside());
    }
    Ok(parent.join(file))
}

/// `POST /v1/disks`.
pub async fn create(d: &Daemon, req: &CreateDisk) -> Result<Disk, OpError> {
    check_name("disk", &req.name)?;
    check_size(req.size.0)?;
    let format = req.format.unwrap_or(DiskFormat::Vhdx);
    let path = resolve_path(&d.cfg.disk_dirs, &req.name, format, req.path.as_deref())?;
    // Refuse before touching the file system: a taken name must not leave a
    // file behind.
    match d.reg.disk(&req.name) {
        Ok(_) => {
            return Err(RegistryError::NameTaken {
                kind: "disk",
                name: req.name.clone(),
            }
            .into())
        }
        Err(RegistryError::NoDisk(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if path.exists() {
        return Err(RegistryError::DiskBusy(format!("{} already exists", path.display())).into());
    }
    let size = req.size.0;
    let p = path.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        match format {
            DiskFormat::Vhdx => vhdx::create(&p, &vhdx::CreateOptions::dynamic(size))
                .map(drop)
                .map_err(|e| chain(&e)),
            DiskFormat::Raw => std::fs::File::create_new(&p)
                .and_then(|f| f.set_len(size))
                .map_err(|e| e.to_string()),
        }
    })
    .await
    .map_err(|e| OpError::Failed(format!("disk creation task failed: {e}")))?
    .map_err(|e| OpError::Failed(format!("cannot create {}: {e}", path.display())))?;
    let disk = Disk {
        id: new_id(),
        name: req.name.clone(),
        path: path.display().to_string(),
        format,
        size,
        vm: None,
        qos: DiskQos::default(),
    };
    if let Err(e) = d.reg.create_disk(&disk) {
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    Ok(disk)
}

/// `DELETE /v1/disks/{disk}`: unregisters the disk and removes its file.
pub fn delete(d: &Daemon, key: &str) -> Result<(), OpError> {
    let (disk, _) = d.reg.disk(key)?;
    d.reg.delete_disk(&disk.id)?;
    if let Err(e) = std::fs::remove_file(&disk.path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(OpError::Io {
                what: format!(
                    "disk {} unregistered, but its file could not be removed",
                    disk.name
                ),
                source: e,
            });
        }
    }
    Ok(())
}

/// `POST /v1/vms/{vm}/disks`.
pub fn attach(d: &Daemon, vm: &str, disk: &str) -> Result<Vm, OpError> {
    let row = d.reg.vm(vm)?;
    let (disk, _) = d.reg.disk(disk)?;
    d.reg.attach_disk(&row.id, &disk.id, IDLE_STATES)?;
    d.get(&row.id)
}

/// `DELETE /v1/vms/{vm}/disks/{disk}`.
pub fn detach(d: &Daemon, vm: &str, disk: &str) -> Result<Vm, OpError> {
    let row = d.reg.vm(vm)?;
    let (disk, _) = d.reg.disk(disk)?;
    d.reg.detach_disk(&row.id, &disk.id, IDLE_STATES)?;
    d.get(&row.id)
}

/// The worker's index of disk `disk_id` of VM `vm_id` (attach order).
fn disk_index(d: &Daemon, vm_id: &str, disk_id: &str) -> Result<usize, OpError> {
    d.reg
        .vm_disks(vm_id)?
        .iter()
        .position(|x| x.id == disk_id)
        .ok_or_else(|| OpError::Failed(format!("disk {disk_id} is not attached to VM {vm_id}")))
}

/// `POST /v1/disks/{disk}/resize`: through the worker while the VM runs
/// (the guest sees the new size at once), on the file otherwise.
pub async fn resize(d: &Daemon, key: &str, size: u64) -> Result<Disk, OpError> {
    check_size(size)?;
    let (disk, vm_id) = d.reg.disk(key)?;
    if let Some(vm_id) = &vm_id {
        // No start or stop while the size changes.
        let _g = d.lock_vm(vm_id).await;
        let idx = disk_index(d, vm_id, &disk.id)?;
        let req = DiskResize { disk: idx, size };
        match d.call_if_running(vm_id, req).await {
            Ok(Some(_)) => {
                d.reg.set_disk_size(&disk.id, size)?;
                return Ok(d.reg.disk(&disk.id)?.0);
            }
            Ok(None) => {}
            // The worker refused the size (its message says why); a worker
            // that failed on the way is an error of its own.
            Err(OpError::Worker { source, .. }) if source.refusal().is_some() => {
                let why = source
                    .refusal()
                    .map(|r| r.message.clone())
                    .unwrap_or_default();
                return Err(OpError::BadRequest(format!(
                    "cannot resize disk {} of the running VM: {why}",
                    disk.name
                )));
            }
            Err(e) => return Err(e),
        }
        return resize_file(d, &disk, size).await;
    }
    resize_file(d, &disk, size).await
}

async fn resize_file(d: &Daemon, disk: &Disk, size: u64) -> Result<Disk, OpError> {
    let path = PathBuf::from(&disk.path);
    let format = disk.format;
    let old = disk.size;
    tokio::task::spawn_blocking(move || -> Result<(), OpError> {
        match format {
            DiskFormat::Vhdx => vhdx::Disk::open(&path, true)
                .and_then(|mut v| v.resize(size, vhdx::Shrink::Refuse))
                .map_err(|e| {
                    OpError::BadRequest(format!("cannot resize {}: {}", path.display(), chain(&e)))
                }),
            DiskFormat::Raw if size < old => Err(OpError::BadRequest(
                "shrinking a raw disk is refused: data beyond the new end would be lost".into(),
            )),
            DiskFormat::Raw => std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(size))
                .map_err(|source| OpError::Io {
                    what: format!("cannot resize {}", path.display()),
                    source,
                }),
        }
    })
    .await
    .map_err(|e| OpError::Failed(format!("resize task failed: {e}")))??;
    d.reg.set_disk_size(&disk.id, size)?;
    Ok(d.reg.disk(&disk.id)?.0)
}

/// `PUT /v1/disks/{disk}/qos`: recorded in the registry, applied to the
/// running worker at once and given to the next one at start.
pub async fn set_qos(d: &Daemon, key: &str, qos: &DiskQos) -> Result<Disk, OpError> {
    if let (Some(min), Some(max)) = (qos.min_iops, qos.max_iops) {
        if min > max {
            return Err(OpError::BadRequest(format!(
                "invalid QoS: min_iops {min} is above max_iops {max}"
            )));
        }
    }
    if qos.max_iops == Some(0) {
        return Err(OpError::BadRequest(
            "invalid QoS: max_iops 0 would stop all I/O (leave it out for no limit)".into(),
        ));
    }
    match qos.max_bw {
        Some(0) => {
            return Err(OpError::BadRequest(
                "invalid QoS: max_bw 0 would stop all I/O (leave it out for no limit)".into(),
            ))
        }
        Some(bw) if bw > MAX_BW => {
            return Err(OpError::BadRequest(format!(
                "invalid QoS: max_bw {bw} is above {MAX_BW} bytes/s (leave it out for no limit)"
            )))
        }
        _ => {}
    }
    let (disk, vm_id) = d.reg.disk(key)?;
    if let Some(vm_id) = &vm_id {
        let _g = d.lock_vm(vm_id).await;
        let idx = disk_index(d, vm_id, &disk.id)?;
        // Every limit is sent: 0 removes one in the worker's protocol.
        let req = DiskQosRequest {
            disk: idx,
            max_iops: Some(qos.max_iops.map_or(0, u64::from)),
            min_iops: Some(qos.min_iops.map_or(0, u64::from)),
            max_bw: Some(qos.max_bw.unwrap_or(0)),
        };
        d.call_if_running(vm_id, req).await?;
        d.reg.set_disk_qos(&disk.id, qos)?;
    } else {
        d.reg.set_disk_qos(&disk.id, qos)?;
    }
    Ok(d.reg.disk(&disk.id)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_paths_must_stay_inside_the_allowed_directories() {
        let d = tempfile::tempdir().unwrap();
        let allowed = d.path().join("disks");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::create_dir(d.path().join("other")).unwrap();
        std::os::unix::fs::symlink(d.path().join("other"), allowed.join("link")).unwrap();
        let dirs = [allowed.clone()];
        let ok = |p: &str| resolve_path(&dirs, "x", DiskFormat::Vhdx, Some(p));
        let canon = allowed.canonicalize().unwrap();
        assert_eq!(
            ok(&format!("{}/a.vhdx", allowed.display())).unwrap(),
            canon.join("a.vhdx")
        );
        for bad in [
            "/etc/passwd".to_string(),
            "relative.vhdx".to_string(),
            format!("{}/../a.vhdx", allowed.display()),
            format!("{}/link/a.vhdx", allowed.display()),
            format!("{}/other/a.vhdx", d.path().display()),
            format!("{}/missing/a.vhdx", allowed.display()),
        ] {
            assert!(ok(&bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            resolve_path(&dirs, "x", DiskFormat::Raw, None).unwrap(),
            allowed.join("x.raw")
        );
    }
}
