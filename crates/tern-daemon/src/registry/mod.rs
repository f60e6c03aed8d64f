//! The VM registry: an embedded SQLite database (VMs, disks, checkpoints,
//! migrations, events).
//!
//! Every state change is a compare-and-set on the current state, done in
//! one transaction with its event row, so concurrent requests cannot leave
//! the registry half-changed.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};

mod disks;
mod schema;
mod switches;
use disks::bw;
pub use disks::UnknownFormat;
use schema::migrate;
pub use schema::OpenError;
pub use switches::{NicRow, SwitchRow, MAX_NICS};
use tern_api::{rfc3339, Disk, Event, VmState};

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database could not be opened or queried.
    #[error("registry database error")]
    Db(#[from] rusqlite::Error),
    /// No such VM.
    #[error("no VM named '{0}'")]
    NoVm(String),
    /// No such disk.
    #[error("no disk named '{0}'")]
    NoDisk(String),
    /// A name is taken.
    #[error("{kind} name '{name}' is already taken")]
    NameTaken {
        /// `VM`, `disk` or `checkpoint`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The VM is not in a state the change starts from.
    #[error("VM '{name}' is {state}: cannot {action}")]
    WrongState {
        /// The VM.
        name: String,
        /// Its state.
        state: VmState,
        /// What was attempted.
        action: String,
    },
    /// The disk is attached elsewhere or its file is already registered.
    #[error("{0}")]
    DiskBusy(String),
    /// No such switch.
    #[error("no switch named '{0}'")]
    NoSwitch(String),
    /// The switch has NICs on it.
    #[error("{0}")]
    SwitchBusy(String),
}

/// A VM row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory bytes.
    pub memory: u64,
    /// Guest spec.
    pub guest: String,
    /// State.
    pub state: VmState,
    /// Reason of the last failure or stop.
    pub reason: Option<String>,
    /// Worker pid.
    pub pid: Option<u32>,
    /// Worker start time (clock ticks since boot, `/proc/PID/stat` field
    /// 22), to tell a reused pid from our worker.
    pub pid_start: Option<u64>,
    /// Created, ms since the epoch.
    pub created_ms: i64,
    /// Updated, ms since the epoch.
    pub updated_ms: i64,
}

impl VmRow {
    /// The API view; `disks` are the attached disks' names.
    pub fn to_api(&self, disks: Vec<String>) -> tern_api::Vm {
        tern_api::Vm {
            id: self.id.clone(),
            name: self.name.clone(),
            vcpus: self.vcpus,
            memory: self.memory,
            guest: self.guest.clone(),
            state: self.state,
            reason: self.reason.clone(),
            pid: self.pid,
            disks,
            created_at: rfc3339(self.created_ms),
            updated_at: rfc3339(self.updated_ms),
        }
    }
}

/// A VM to create.
#[derive(Debug, Clone)]
pub struct NewVm {
    /// Name.
    pub name: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory bytes.
    pub memory: u64,
    /// Guest spec.
    pub guest: String,
    /// Disk ids to attach, in order.
    pub disks: Vec<String>,
}

/// The registry.
pub struct Registry {
    conn: Mutex<Connection>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh random id: 16 hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        // No /dev/urandom: time and a counter are unique enough for ids.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b = (now_ms() as u64 ^ (n << 48)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Inserts `row` into `vms` (a taken name is an error of its own).
fn insert_vm_row(tx: &rusqlite::Transaction<'_>, row: &VmRow) -> Result<(), RegistryError> {
    let r = tx.execute(
        "INSERT INTO vms (id, name, vcpus, memory, guest, state, reason, pid, pid_start, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            row.id,
            row.name,
            row.vcpus,
            row.memory as i64,
            row.guest,
            row.state.as_str(),
            row.reason,
            row.pid,
            row.pid_start.map(|v| v as i64),
            row.created_ms,
            now_ms()
        ],
    );
    match r {
        Err(e) if is_unique_violation(&e) => Err(RegistryError::NameTaken {
            kind: "VM",
            name: row.name.clone(),
        }),
        r => r.map(drop).map_err(Into::into),
    }
}

const VM_COLS: &str =
    "id, name, vcpus, memory, guest, state, reason, pid, pid_start, created_ms, updated_ms";

fn vm_row(r: &Row<'_>) -> rusqlite::Result<VmRow> {
    let state: String = r.get(5)?;
    Ok(VmRow {
        id: r.get(0)?,
        name: r.get(1)?,
        vcpus: r.get(2)?,
        memory: r.get::<_, i64>(3)? as u64,
        guest: r.get(4)?,
        // An unknown state can only come from a newer daemon: treat the VM
        // as failed rather than refusing to start.
        state: VmState::parse(&state).unwrap_or(VmState::Failed),
        reason: r.get(6)?,
        pid: r.get(7)?,
        pid_start: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        created_ms: r.get(9)?,
        updated_ms: r.get(10)?,
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn insert_event(
    tx: &Connection,
    vm_id: Option<&str>,
    vm_name: Option<&str>,
    kind: &str,
    message: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO events (time_ms, vm_id, vm_name, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_ms(), vm_id, vm_name, kind, message],
    )?;
    Ok(())
}

/// A state change: which states it starts from and what it sets.
pub struct Transition<'a> {
    /// States the VM may be in.
    pub from: &'a [VmState],
    /// The new state.
    pub to: VmState,
    /// New reason (replaces the old one).
    pub reason: Option<String>,
    /// New worker pid and start time (`None` clears them when `to` has no
    /// worker, keeps them otherwise).
    pub pid: Option<(u32, u64)>,
    /// Event kind.
    pub event: &'a str,
    /// Event message.
    pub message: String,
    /// What is attempted, for the error message.
    pub action: &'a str,
}

impl Registry {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Registry, OpenError> {
        let mut conn = Connection::open(path)?;
        // WAL lets readers (a second daemon process inspecting, tests) in
        // while the daemon writes; NORMAL sync is durable enough with WAL.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Registry {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a VM in state `stopped` with its disks attached.
    pub fn create_vm(&self, new: &NewVm) -> Result<VmRow, RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let id = new_id();
        let now = now_ms();
        let r = tx.execute(
            "INSERT INTO vms (id, name, vcpus, memory, guest, state, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 'stopped', ?6, ?6)",
            params![id, new.name, new.vcpus, new.memory as i64, new.guest, now],
        );
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(RegistryError::NameTaken {
                    kind: "VM",
                    name: new.name.clone(),
                })
            }
            r => r?,
        };
        for (pos, disk) in new.disks.iter().enumerate() {
            let n = tx.execute(
                "UPDATE disks SET vm_id = ?1, position = ?2 WHERE id = ?3 AND vm_id IS NULL",
                params![id, pos as i64, disk],
            )?;
            if n != 1 {
                return Err(RegistryError::DiskBusy(format!(
                    "disk {disk} is attached to another VM"
                )));
            }
        }
        insert_event(
            &tx,
            Some(&id),
            Some(&new.name),
            "created",
            &format!(
                "created with {} vCPUs, {} MiB, guest {}",
                new.vcpus,
                new.memory >> 20,
                new.guest
            ),
        )?;
        let row = tx.query_row(
            &format!("SELECT {VM_COLS} FROM vms WHERE id = ?1"),
            [&id],
            vm_row,
        )?;
        tx.commit()?;
        Ok(row)
    }

    /// Inserts a VM with a given id and state (an incoming migration).
    pub fn insert_vm(&self, row: &VmRow, event: &str, message: &str) -> Result<(), RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        insert_vm_row(&tx, row)?;
        insert_event(&tx, Some(&row.id), Some(&row.name), event, message)?;
        tx.commit()?;
        Ok(())
    }

    /// Inserts a VM arriving by migration together with its disks,
    /// attached in order, in one transaction. A disk already registered
    /// here under the same path is taken over if free (a VM coming back);
    /// otherwise it is registered. Returns the ids of the disks
    /// registered here, to forget if the VM never arrives.
    pub fn insert_migrating_vm(
        &self,
        row: &VmRow,
        disks: &[Disk],
        event: &str,
        message: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        insert_vm_row(&tx, row)?;
        let mut created = Vec::new();
        for (pos, d) in disks.iter().enumerate() {
            let known: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT id, vm_id FROM disks WHERE path = ?1",
                    [&d.path],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match known {
                Some((_, Some(_))) => {
                    return Err(RegistryError::DiskBusy(format!(
                        "disk {} is attached to another VM on this host",
                        d.path
                    )))
                }
                Some((id, None)) => {
                    tx.execute(
                        "UPDATE disks SET vm_id = ?2, position = ?3, size = ?4, max_iops = ?5, min_iops = ?6, max_bw = ?7 WHERE id = ?1",
                        params![id, row.id, pos as i64, d.size as i64, d.qos.max_iops, d.qos.min_iops, bw(&d.qos)],
                    )?;
                }
                None => {
                    let r = tx.execute(
                        "INSERT INTO disks (id, name, path, format, size, vm_id, position, max_iops, min_iops, max_bw)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        params![
                            d.id,
                            d.name,
                            d.path,
                            d.format.as_str(),
                            d.size as i64,
                            row.id,
                            pos as i64,
                            d.qos.max_iops,
                            d.qos.min_iops,
                            bw(&d.qos)
                        ],
                    );
                    match r {
                        Err(e) if is_unique_violation(&e) => {
                            return Err(RegistryError::NameTaken {
                                kind: "disk",
                                name: d.name.clone(),
                            })
                        }
                        r => r?,
                    };
                    created.push(d.id.clone());
                }
            }
        }
        insert_event(&tx, Some(&row.id), Some(&row.name), event, message)?;
        tx.commit()?;
        Ok(created)
    }

    /// Finds a VM by id or name.
    pub fn vm(&self, key: &str) -> Result<VmRow, RegistryError> {
        let conn = self.lock();
        conn.query_row(
            &format!("SELECT {VM_COLS} FROM vms WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"),
            [key],
            vm_row,
        )
        .optional()?
        .ok_or_else(|| RegistryError::NoVm(key.into()))
    }

    /// Every VM, by name.
    pub fn vms(&self) -> Result<Vec<VmRow>, RegistryError> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!("SELECT {VM_COLS} FROM vms ORDER BY name"))?;
        let rows = st.query_map([], vm_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Applies `t` to VM `id` if its state is one of `t.from`.
    pub fn transition(&self, id: &str, t: Transition<'_>) -> Result<VmRow, RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row = vm_in_state(&tx, id, t.from, t.action)?;
        let (pid, pid_start) = match (t.pid, t.to.has_worker()) {
            (Some((p, s)), _) => (Some(p), Some(s)),
            (None, true) => (row.pid, row.pid_start),
            (None, false) => (None, None),
        };
        tx.execute(
            "UPDATE vms SET state = ?2, reason = ?3, pid = ?4, pid_start = ?5, updated_ms = ?6
             WHERE id = ?1",
            params![
                id,
                t.to.as_str(),
                t.reason,
                pid,
                pid_start.map(|v| v as i64),
                now_ms()
            ],
        )?;
        insert_event(&tx, Some(id), Some(&row.name), t.event, &t.message)?;
        let row = tx.query_row(
            &format!("SELECT {VM_COLS} FROM vms WHERE id = ?1"),
            [id],
            vm_row,
        )?;
        tx.commit()?;
        Ok(row)
    }

    /// Records the worker of VM `id` (no event: `started` follows).
    pub fn set_worker(&self, id: &str, pid: u32, pid_start: u64) -> Result<(), RegistryError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE vms SET pid = ?2, pid_start = ?3, updated_ms = ?4 WHERE id = ?1",
            params![id, pid, pid_start as i64, now_ms()],
        )?;
        Ok(())
    }

    /// Where VM `id`'s saved state is, if it has one.
    pub fn saved_dir(&self, id: &str) -> Result<Option<String>, RegistryError> {
        let conn = self.lock();
        Ok(conn
            .query_row("SELECT dir FROM saved_states WHERE vm_id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Records (or forgets) VM `id`'s saved state.
    pub fn set_saved_dir(&self, id: &str, dir: Option<&str>) -> Result<(), RegistryError> {
        let conn = self.lock();
        match dir {
            Some(d) => conn.execute(
                "INSERT INTO saved_states (vm_id, dir, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (vm_id) DO UPDATE SET dir = ?2, created_ms = ?3",
                params![id, d, now_ms()],
            )?,
            None => conn.execute("DELETE FROM saved_states WHERE vm_id = ?1", [id])?,
        };
        Ok(())
    }

    /// Deletes VM `id` if its state is one of `from`; its disks are
    /// detached.
    pub fn delete_vm(&self, id: &str, from: &[VmState], why: &str) -> Result<(), RegistryError> {
        self.remove_vm(id, from, "deleted", why)
    }

    /// Removes VM `id` if its state is one of `from`, recording `event`
    /// (a VM that left by migration, or never arrived).
    pub fn remove_vm(
        &self,
        id: &str,
        from: &[VmState],
        event: &str,
        why: &str,
    ) -> Result<(), RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row = vm_in_state(&tx, id, from, "delete it (stop it first)")?;
        tx.execute(
            "UPDATE disks SET vm_id = NULL, position = NULL WHERE vm_id = ?1",
            [id],
        )?;
        tx.execute("DELETE FROM vms WHERE id = ?1", [id])?;
        insert_event(&tx, Some(id), Some(&row.name), event, why)?;
        tx.commit()?;
        Ok(())
    }

    /// Records an event.
    pub fn event(
        &self,
        vm_id: Option<&str>,
        vm_name: Option<&str>,
        kind: &str,
        message: &str,
    ) -> Result<(), RegistryError> {
        let conn = self.lock();
        insert_event(&conn, vm_id, vm_name, kind, message)?;
        Ok(())
    }

    /// How many events of each kind the registry holds, by kind.
    pub fn event_counts(&self) -> Result<Vec<(String, u64)>, RegistryError> {
        let conn = self.lock();
        let mut st =
            conn.prepare("SELECT kind, COUNT(*) FROM events GROUP BY kind ORDER BY kind")?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(k, n)| (k, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// Events after `since`, oldest first, optionally of one VM (id).
    pub fn events(
        &self,
        since: i64,
        vm_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>, RegistryError> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT seq, time_ms, vm_id, vm_name, kind, message FROM events
             WHERE seq > ?1 AND (?2 IS NULL OR vm_id = ?2) ORDER BY seq LIMIT ?3",
        )?;
        let rows = st
            .query_map(params![since, vm_id, limit], |r| {
                Ok(Event {
                    seq: r.get(0)?,
                    time: rfc3339(r.get(1)?),
                    vm_id: r.get(2)?,
                    vm: r.get(3)?,
                    kind: r.get(4)?,
                    message: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The worker's number of VM `vm_id`'s checkpoint `key` (name or
    /// number).
    pub fn checkpoint(&self, vm_id: &str, key: &str) -> Result<Option<u64>, RegistryError> {
        let conn = self.lock();
        let id: Option<String> = conn
            .query_row(
                "SELECT id FROM checkpoints WHERE vm_id = ?1 AND (name = ?2 OR id = ?1 || ':' || ?2)
                 ORDER BY name = ?2 DESC LIMIT 1",
                params![vm_id, key],
                |r| r.get(0),
            )
            .optional()?;
        Ok(id.and_then(|i| i.rsplit(':').next()?.parse().ok()))
    }

    /// Records checkpoint number `n` named `name` of VM `vm_id`.
    pub fn add_checkpoint(
        &self,
        vm_id: &str,
        vm_name: &str,
        n: u64,
        name: &str,
    ) -> Result<(), RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let r = tx.execute(
            "INSERT INTO checkpoints (id, vm_id, name, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![format!("{vm_id}:{n}"), vm_id, name, now_ms()],
        );
        match r {
            Err(e) if is_unique_violation(&e) => {
                return Err(RegistryError::NameTaken {
                    kind: "checkpoint",
                    name: name.into(),
                })
            }
            r => r?,
        };
        insert_event(
            &tx,
            Some(vm_id),
            Some(vm_name),
            "checkpoint-created",
            &format!("checkpoint {name} (#{n}) taken"),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets checkpoint number `n` of VM `vm_id`.
    pub fn delete_checkpoint(
        &self,
        vm_id: &str,
        vm_name: &str,
        n: u64,
    ) -> Result<(), RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM checkpoints WHERE id = ?1",
            [format!("{vm_id}:{n}")],
        )?;
        insert_event(
            &tx,
            Some(vm_id),
            Some(vm_name),
            "checkpoint-deleted",
            &format!("checkpoint #{n} deleted"),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Checkpoints of VM `id`, oldest first.
    pub fn checkpoints(
        &self,
        vm_id: &str,
        vm_name: &str,
    ) -> Result<Vec<tern_api::Checkpoint>, RegistryError> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT id, name, created_ms FROM checkpoints WHERE vm_id = ?1 ORDER BY created_ms",
        )?;
        let rows = st
            .query_map([vm_id], |r| {
                let id: String = r.get(0)?;
                Ok(tern_api::Checkpoint {
                    // Stored as VM:N, shown as the worker's number N.
                    id: id.rsplit(':').next().unwrap_or_default().to_string(),
                    vm: vm_name.to_string(),
                    name: r.get(1)?,
                    created_at: rfc3339(r.get(2)?),
                    parent: None,
                    current: false,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// Reads VM `id` inside `tx` and checks that its state is one of `from`
/// (`action`: what was attempted, for the refusal).
pub(super) fn vm_in_state(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    from: &[VmState],
    action: &str,
) -> Result<VmRow, RegistryError> {
    let row = tx
        .query_row(
            &format!("SELECT {VM_COLS} FROM vms WHERE id = ?1"),
            [id],
            vm_row,
        )
        .optional()?
        .ok_or_else(|| RegistryError::NoVm(id.into()))?;
    if !from.contains(&row.state) {
        return Err(RegistryError::WrongState {
            name: row.name,
            state: row.state,
            action: action.into(),
        });
    }
    Ok(row)
}

#[cfg(test)]
mod tests;
