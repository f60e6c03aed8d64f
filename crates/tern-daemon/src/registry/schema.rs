//! The registry's tables and their versions: [`SCHEMA`] is version 1, each
//! later version a step in [`MIGRATIONS`].

use rusqlite::Connection;

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
pub(super) const SCHEMA_VERSION: i64 = 3;

/// Changes from each version to the next: `(to, sql)`, in order. A fresh
/// database gets [`SCHEMA`] (version 1) and then every step, so that new and
/// upgraded databases have the same tables.
const MIGRATIONS: &[(i64, &str)] = &[
    // 2: the bandwidth limit of a disk's QoS.
    (2, "ALTER TABLE disks ADD COLUMN max_bw INTEGER;"),
    // 3: virtual switches and VMs' NICs on them.
    (
        3,
        "CREATE TABLE switches (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            uplink TEXT,
            address TEXT,
            created_ms INTEGER NOT NULL
        );
        CREATE TABLE nics (
            vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            switch_id TEXT NOT NULL REFERENCES switches(id),
            mac TEXT NOT NULL,
            max_bw INTEGER,
            mac_guard INTEGER NOT NULL,
            dhcp_guard INTEGER NOT NULL,
            router_guard INTEGER NOT NULL,
            mirror TEXT,
            PRIMARY KEY (vm_id, idx)
        );",
    ),
];

/// Brings the database at `conn` to [`SCHEMA_VERSION`], each step in a
/// transaction with its version number.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), OpenError> {
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
