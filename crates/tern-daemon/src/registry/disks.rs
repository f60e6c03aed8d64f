//! Disks in the registry: their rows, attaching them to VMs, their size
//! and QoS.

use rusqlite::{params, OptionalExtension, Row};
use tern_api::{Disk, DiskFormat, DiskQos, VmState};

use super::{insert_event, is_unique_violation, Registry, RegistryError, VmRow};

/// A disk row names a format this daemon does not know (a newer daemon
/// wrote it); it is never guessed.
#[derive(Debug, thiserror::Error)]
#[error("disk '{disk}' has the unknown format '{format}' in the registry")]
pub struct UnknownFormat {
    /// The disk's name.
    pub disk: String,
    /// What the row says.
    pub format: String,
}

pub(super) const DISK_COLS: &str =
    "d.id, d.name, d.path, d.format, d.size, v.name, d.max_iops, d.min_iops, d.vm_id, d.max_bw";

/// The format stored in a disk row: never guessed, since a worker given the
/// wrong one destroys the image.
fn parse_format(disk: &str, format: &str) -> Result<DiskFormat, UnknownFormat> {
    match format {
        "vhdx" => Ok(DiskFormat::Vhdx),
        "raw" => Ok(DiskFormat::Raw),
        _ => Err(UnknownFormat {
            disk: disk.into(),
            format: format.into(),
        }),
    }
}

fn disk_row(r: &Row<'_>) -> rusqlite::Result<(Disk, Option<String>)> {
    let name: String = r.get(1)?;
    let format: String = r.get(3)?;
    let format = parse_format(&name, &format).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok((
        Disk {
            id: r.get(0)?,
            name,
            path: r.get(2)?,
            format,
            size: r.get::<_, i64>(4)? as u64,
            vm: r.get(5)?,
            qos: DiskQos {
                max_iops: r.get(6)?,
                min_iops: r.get(7)?,
                max_bw: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
            },
        },
        r.get(8)?,
    ))
}

/// `max_bw` as SQLite stores it (a signed 64-bit integer; the API caps the
/// limit below `i64::MAX`).
pub(super) fn bw(qos: &DiskQos) -> Option<i64> {
    qos.max_bw.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// Loads VM `vm_id` inside `tx` and checks it is in one of `from`, the
/// states in which its disks may change.
pub(super) fn vm_for_disk_change(
    tx: &rusqlite::Transaction<'_>,
    vm_id: &str,
    from: &[VmState],
) -> Result<VmRow, RegistryError> {
    super::vm_in_state(tx, vm_id, from, "change its disks while it runs")
}

impl Registry {
    /// Drops the registry rows of free disks `ids` (their files stay): the
    /// disks went with a VM to another host, or never came.
    pub fn forget_disks(&self, ids: &[String]) -> Result<(), RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for id in ids {
            tx.execute("DELETE FROM disks WHERE id = ?1 AND vm_id IS NULL", [id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Names of the disks attached to VM `id`, in order.
    pub fn vm_disk_names(&self, id: &str) -> Result<Vec<String>, RegistryError> {
        let conn = self.lock();
        let mut st = conn.prepare("SELECT name FROM disks WHERE vm_id = ?1 ORDER BY position")?;
        let rows = st
            .query_map([id], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Disks attached to VM `id`, in order.
    pub fn vm_disks(&self, id: &str) -> Result<Vec<Disk>, RegistryError> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {DISK_COLS} FROM disks d LEFT JOIN vms v ON v.id = d.vm_id
             WHERE d.vm_id = ?1 ORDER BY d.position"
        ))?;
        let rows = st
            .query_map([id], disk_row)?
            .map(|r| r.map(|(d, _)| d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Registers a disk.
    pub fn create_disk(&self, disk: &Disk) -> Result<(), RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let r = tx.execute(
            "INSERT INTO disks (id, name, path, format, size) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                disk.id,
                disk.name,
                disk.path,
                disk.format.as_str(),
                disk.size as i64
            ],
        );
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(RegistryError::NameTaken {
                    kind: "disk",
                    name: format!("{} (or its path {})", disk.name, disk.path),
                })
            }
            r => r?,
        };
        insert_event(
            &tx,
            None,
            None,
            "disk-created",
            &format!(
                "disk {} created: {} bytes at {}",
                disk.name, disk.size, disk.path
            ),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Finds a disk by id or name; also returns the id of its VM.
    pub fn disk(&self, key: &str) -> Result<(Disk, Option<String>), RegistryError> {
        let conn = self.lock();
        conn.query_row(
            &format!(
                "SELECT {DISK_COLS} FROM disks d LEFT JOIN vms v ON v.id = d.vm_id
                 WHERE d.id = ?1 OR d.name = ?1 ORDER BY d.id = ?1 DESC LIMIT 1"
            ),
            [key],
            disk_row,
        )
        .optional()?
        .ok_or_else(|| RegistryError::NoDisk(key.into()))
    }

    /// Every disk, by name.
    pub fn disks(&self) -> Result<Vec<Disk>, RegistryError> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {DISK_COLS} FROM disks d LEFT JOIN vms v ON v.id = d.vm_id ORDER BY d.name"
        ))?;
        let rows = st
            .query_map([], disk_row)?
            .map(|r| r.map(|(d, _)| d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Attaches disk `disk_id` to VM `vm_id` if the disk is free and the VM
    /// is in one of `from`.
    pub fn attach_disk(
        &self,
        vm_id: &str,
        disk_id: &str,
        from: &[VmState],
    ) -> Result<(), RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let vm = vm_for_disk_change(&tx, vm_id, from)?;
        let pos: i64 = tx.query_row(
            "SELECT COALESCE(MAX(position) + 1, 0) FROM disks WHERE vm_id = ?1",
            [vm_id],
            |r| r.get(0),
        )?;
        let n = tx.execute(
            "UPDATE disks SET vm_id = ?1, position = ?2 WHERE id = ?3 AND vm_id IS NULL",
            params![vm_id, pos, disk_id],
        )?;
        if n != 1 {
            return Err(RegistryError::DiskBusy(format!(
                "disk {disk_id} is already attached to a VM"
            )));
        }
        insert_event(
            &tx,
            Some(vm_id),
            Some(&vm.name),
            "disk-attached",
            &format!("disk {disk_id} attached"),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Detaches disk `disk_id` from VM `vm_id` if the VM is in one of
    /// `from`.
    pub fn detach_disk(
        &self,
        vm_id: &str,
        disk_id: &str,
        from: &[VmState],
    ) -> Result<(), RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let vm = vm_for_disk_change(&tx, vm_id, from)?;
        let n = tx.execute(
            "UPDATE disks SET vm_id = NULL, position = NULL WHERE id = ?1 AND vm_id = ?2",
            params![disk_id, vm_id],
        )?;
        if n != 1 {
            return Err(RegistryError::NoDisk(format!(
                "{disk_id} attached to VM {}",
                vm.name
            )));
        }
        insert_event(
            &tx,
            Some(vm_id),
            Some(&vm.name),
            "disk-detached",
            &format!("disk {disk_id} detached"),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Sets a disk's size.
    pub fn set_disk_size(&self, id: &str, size: u64) -> Result<(), RegistryError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE disks SET size = ?2 WHERE id = ?1",
            params![id, size as i64],
        )?;
        insert_event(
            &conn,
            None,
            None,
            "disk-resized",
            &format!("disk {id} resized to {size} bytes"),
        )?;
        Ok(())
    }

    /// Records that a disk's image moved (a storage move): its new file
    /// and format.
    pub fn set_disk_location(
        &self,
        id: &str,
        path: &str,
        format: DiskFormat,
    ) -> Result<(), RegistryError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE disks SET path = ?2, format = ?3 WHERE id = ?1",
            params![id, path, format.as_str()],
        )?;
        insert_event(
            &conn,
            None,
            None,
            "disk-moved",
            &format!("disk {id} moved to {path} ({})", format.as_str()),
        )?;
        Ok(())
    }

    /// Sets a disk's QoS.
    pub fn set_disk_qos(&self, id: &str, qos: &DiskQos) -> Result<(), RegistryError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE disks SET max_iops = ?2, min_iops = ?3, max_bw = ?4 WHERE id = ?1",
            params![id, qos.max_iops, qos.min_iops, bw(qos)],
        )?;
        Ok(())
    }

    /// Removes a disk if no VM uses it.
    pub fn delete_disk(&self, id: &str) -> Result<(), RegistryError> {
        let conn = self.lock();
        let n = conn.execute("DELETE FROM disks WHERE id = ?1 AND vm_id IS NULL", [id])?;
        if n != 1 {
            return Err(RegistryError::DiskBusy(format!(
                "disk {id} is attached to a VM: detach it first"
            )));
        }
        insert_event(
            &conn,
            None,
            None,
            "disk-deleted",
            &format!("disk {id} deleted"),
        )?;
        Ok(())
    }
}
