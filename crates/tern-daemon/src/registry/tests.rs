//! The registry's tests.

use super::schema::SCHEMA_VERSION;
use super::*;
use tern_api::{DiskFormat, DiskQos};

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
