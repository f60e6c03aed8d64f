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
use tern_api::{rfc3339, Disk, DiskFormat, DiskQos, Event, VmState};

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
}

/// Errors opening the registry.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database could not be opened or upgraded.
    #[error("registry database error")]
    Db(#[from] rusqlite::Error),
    /// The database was written by a newer daemon.
    #[error("the registry has schema version {found}; this daemon knows up to {known}")]
    TooNew {
        /// The database's version.
        found: i64,
        /// The newest this daemon knows.
        known: i64,
    },
}

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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS vms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    vcpus INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    guest TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    pid INTEGER,
    pid_start INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS disks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL UNIQUE,
    format TEXT NOT NULL,
    size INTEGER NOT NULL,
    vm_id TEXT REFERENCES vms(id) ON DELETE SET NULL,
    position INTEGER,
    max_iops INTEGER,
    min_iops INTEGER
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY,
    vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (vm_id, name)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    vm_id TEXT,
    vm_name TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS saved_states (
    vm_id TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
    dir TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
";

/// The schema version this daemon writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// Changes from each version to the next: `(to, sql)`, in order. A fresh
/// database gets [`SCHEMA`] (version 1) and then every step, so that new and
/// upgraded databases have the same tables.
const MIGRATIONS: &[(i64, &str)] = &[
    // 2: the bandwidth limit of a disk's QoS.
    (2, "ALTER TABLE disks ADD COLUMN max_bw INTEGER;"),
];

/// Brings the database at `conn` to [`SCHEMA_VERSION`], each step in a
/// transaction with its version number.
fn migrate(conn: &mut Connection) -> Result<(), OpenError> {
    conn.execute_batch(SCHEMA)?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(OpenError::TooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    // 0 is a database just created by `SCHEMA`.
    let from = found.max(1);
    for &(to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > from) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", to)?;
        tx.commit()?;
    }
    Ok(())
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

const DISK_COLS: &str =
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
fn bw(qos: &DiskQos) -> Option<i64> {
    qos.max_bw.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
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

    /// Applies `t` to VM `id` if its state is one of `t.from`.
    pub fn transition(&self, id: &str, t: Transition<'_>) -> Result<VmRow, RegistryError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row = tx
            .query_row(
                &format!("SELECT {VM_COLS} FROM vms WHERE id = ?1"),
                [id],
                vm_row,
            )
            .optional()?
            .ok_or_else(|| RegistryError::NoVm(id.into()))?;
        if !t.from.contains(&row.state) {
            return Err(RegistryError::WrongState {
                name: row.name,
                state: row.state,
                action: t.action.into(),
            });
        }
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
                action: "delete it (stop it first)".into(),
            });
        }
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
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// Loads VM `vm_id` inside `tx` and checks it is in one of `from`, the
/// states in which its disks may change.
fn vm_for_disk_change(
    tx: &rusqlite::Transaction<'_>,
    vm_id: &str,
    from: &[VmState],
) -> Result<VmRow, RegistryError> {
    let vm = tx
        .query_row(
            &format!("SELECT {VM_COLS} FROM vms WHERE id = ?1"),
            [vm_id],
            vm_row,
        )
        .optional()?
        .ok_or_else(|| RegistryError::NoVm(vm_id.into()))?;
    if !from.contains(&vm.state) {
        return Err(RegistryError::WrongState {
            name: vm.name,
            state: vm.state,
            action: "change its disks while it runs".into(),
        });
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> (tempfile::TempDir, Registry) {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(&d.path().join("t.db")).unwrap();
        (d, r)
    }

    fn new_vm(name: &str) -> NewVm {
        NewVm {
            name: name.into(),
            vcpus: 1,
            memory: 64 << 20,
            guest: "probe:hello".into(),
            disks: vec![],
        }
    }

    #[test]
    fn names_are_unique_and_lookups_take_names_or_ids() {
        let (_d, r) = reg();
        let a = r.create_vm(&new_vm("a")).unwrap();
        assert!(matches!(
            r.create_vm(&new_vm("a")),
            Err(RegistryError::NameTaken { .. })
        ));
        assert_eq!(r.vm("a").unwrap(), a);
        assert_eq!(r.vm(&a.id).unwrap(), a);
        assert!(matches!(r.vm("b"), Err(RegistryError::NoVm(_))));
        assert_eq!(r.vms().unwrap().len(), 1);
    }

    #[test]
    fn transitions_compare_and_set_and_log_events() {
        let (_d, r) = reg();
        let a = r.create_vm(&new_vm("a")).unwrap();
        let t = |from: &'static [VmState], to| Transition {
            from,
            to,
            reason: None,
            pid: Some((42, 7)),
            event: "x",
            message: "m".into(),
            action: "start it",
        };
        let row = r
            .transition(&a.id, t(&[VmState::Stopped], VmState::Running))
            .unwrap();
        assert_eq!(
            (row.state, row.pid, row.pid_start),
            (VmState::Running, Some(42), Some(7))
        );
        let e = r
            .transition(&a.id, t(&[VmState::Stopped], VmState::Running))
            .unwrap_err();
        assert_eq!(e.to_string(), "VM 'a' is running: cannot start it");
        assert!(r.delete_vm(&a.id, &[VmState::Stopped], "x").is_err());
        let row = r
            .transition(
                &a.id,
                Transition {
                    pid: None,
                    ..t(&[VmState::Running], VmState::Stopped)
                },
            )
            .unwrap();
        assert_eq!(row.pid, None, "a VM without a worker has no pid");
        r.delete_vm(&a.id, &[VmState::Stopped], "bye").unwrap();
        let kinds: Vec<_> = r
            .events(0, None, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["created", "x", "x", "deleted"]);
    }

    #[test]
    fn disks_attach_to_one_vm_at_a_time() {
        let (_d, r) = reg();
        let disk = Disk {
            id: new_id(),
            name: "d".into(),
            path: "/x/d.vhdx".into(),
            format: DiskFormat::Vhdx,
            size: 1 << 20,
            vm: None,
            qos: DiskQos::default(),
        };
        r.create_disk(&disk).unwrap();
        let a = r.create_vm(&new_vm("a")).unwrap();
        let b = r.create_vm(&new_vm("b")).unwrap();
        r.attach_disk(&a.id, &disk.id, &[VmState::Stopped]).unwrap();
        assert!(matches!(
            r.attach_disk(&b.id, &disk.id, &[VmState::Stopped]),
            Err(RegistryError::DiskBusy(_))
        ));
        assert_eq!(r.vm_disk_names(&a.id).unwrap(), ["d"]);
        assert!(r.delete_disk(&disk.id).is_err());
        r.delete_vm(&a.id, &[VmState::Stopped], "x").unwrap();
        assert_eq!(
            r.disk("d").unwrap().1,
            None,
            "deleting a VM frees its disks"
        );
        r.delete_disk(&disk.id).unwrap();
    }

    /// The disks table and version a daemon before schema version 2 made.
    const SCHEMA_V1_DISKS: &str = "
        CREATE TABLE disks (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            path TEXT NOT NULL UNIQUE,
            format TEXT NOT NULL,
            size INTEGER NOT NULL,
            vm_id TEXT,
            position INTEGER,
            max_iops INTEGER,
            min_iops INTEGER
        );
        INSERT INTO disks (id, name, path, format, size, max_iops)
            VALUES ('0123456789abcdef', 'old', '/x/old.img', 'vhdx', 1048576, 300);
        PRAGMA user_version = 1;
    ";

    #[test]
    fn a_version_1_database_is_upgraded_and_keeps_its_disks() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("t.db");
        Connection::open(&db)
            .unwrap()
            .execute_batch(SCHEMA_V1_DISKS)
            .unwrap();
        let r = Registry::open(&db).unwrap();
        let (old, _) = r.disk("old").unwrap();
        assert_eq!(old.format, DiskFormat::Vhdx);
        assert_eq!(
            old.qos,
            DiskQos {
                max_iops: Some(300),
                min_iops: None,
                max_bw: None
            }
        );
        let qos = DiskQos {
            max_bw: Some(5 << 20),
            ..old.qos
        };
        r.set_disk_qos(&old.id, &qos).unwrap();
        drop(r);
        // Opened again: nothing to migrate, the limit is still there.
        let r = Registry::open(&db).unwrap();
        assert_eq!(r.disk("old").unwrap().0.qos, qos);
        let v: i64 = r
            .lock()
            .query_row("PRAGMA user_version", [], |x| x.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("t.db");
        Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let e = Registry::open(&db).err().expect("opened a newer database");
        assert!(matches!(e, OpenError::TooNew { found, .. } if found == SCHEMA_VERSION + 1));
    }

    #[test]
    fn every_qos_limit_round_trips_and_an_unknown_format_is_an_error() {
        let (_d, r) = reg();
        let mut disk = Disk {
            id: new_id(),
            name: "d".into(),
            path: "/x/d.img".into(),
            format: DiskFormat::Vhdx,
            size: 1 << 20,
            vm: None,
            qos: DiskQos::default(),
        };
        r.create_disk(&disk).unwrap();
        disk.qos = DiskQos {
            max_iops: Some(10),
            min_iops: Some(5),
            max_bw: Some(u64::MAX >> 1),
        };
        r.set_disk_qos(&disk.id, &disk.qos).unwrap();
        assert_eq!(r.disk("d").unwrap().0, disk);
        // A VM arriving by migration brings its disks' limits.
        let mut moved = disk.clone();
        moved.id = new_id();
        moved.name = "m".into();
        moved.path = "/x/m.raw".into();
        moved.format = DiskFormat::Raw;
        let now = now_ms();
        let row = VmRow {
            id: new_id(),
            name: "in".into(),
            vcpus: 1,
            memory: 64 << 20,
            guest: "probe:hello".into(),
            state: VmState::Migrating,
            reason: None,
            pid: None,
            pid_start: None,
            created_ms: now,
            updated_ms: now,
        };
        r.insert_migrating_vm(&row, std::slice::from_ref(&moved), "in", "in")
            .unwrap();
        let got = &r.vm_disks(&row.id).unwrap()[0];
        assert_eq!((got.format, got.qos), (DiskFormat::Raw, moved.qos));
        r.lock()
            .execute("UPDATE disks SET format = 'qcow2' WHERE name = 'd'", [])
            .unwrap();
        let e = r.disk("d").unwrap_err();
        let text = crate::error::chain(&e);
        assert!(text.contains("unknown format 'qcow2'"), "{text}");
    }
}
