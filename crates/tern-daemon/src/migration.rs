//! Live migration between daemons: the daemons negotiate (the destination
//! starts a worker waiting with `tern run --incoming`), the workers move the
//! VM (`migrate` on the source worker's control socket), and each daemon
//! settles its registry: the source forgets the VM once the destination
//! runs it; on failure the source VM runs on and the destination forgets
//! the VM it never got.
//!
//! Migration records live in memory ([`MigrationRecord`]; the events in
//! the registry keep the history).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_api::{
    Client, Disk, Endpoint, IncomingDisk, IncomingMigration, IncomingReady, Migration,
    MigrationState, StartMigration, VmState,
};

use crate::daemon::{Daemon, MigrationRecord};
use crate::error::{chain, OpError};
use crate::registry::{new_id, now_ms, RegistryError, Transition, VmRow};
use crate::supervise::Boot;
use crate::validation::{check_guest, check_memory, check_name, check_size, check_vcpus};
use crate::worker::{self, Worker, WorkerError};
use tern_worker_proto::migration::{
    Migrate, MigrateCancel, MigrateStatus, MigrationOutcome, MigrationPhase, MigrationStatus,
};
use tern_worker_proto::{Capability, ClientError};

fn set(d: &Daemon, id: &str, f: impl FnOnce(&mut Migration)) {
    if let Some(r) = d
        .migrations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(id)
    {
        f(&mut r.info);
    }
}

fn get(d: &Daemon, id: &str) -> Option<MigrationRecord> {
    d.migrations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .cloned()
}

/// `GET /v1/migrations`, newest first.
pub fn list(d: &Daemon) -> Vec<Migration> {
    let mut v: Vec<_> = d
        .migrations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|r| r.info.clone())
        .collect();
    v.sort_by(|a, b| b.id.cmp(&a.id));
    v
}

/// `GET /v1/migrations/{id}`.
pub fn show(d: &Daemon, id: &str) -> Result<Migration, OpError> {
    get(d, id)
        .map(|r| r.info)
        .ok_or_else(|| OpError::NotFound(format!("no migration '{id}'")))
}

/// Records a migration of `vm` that has started and returns what the API
/// shows of it.
fn start_record(
    d: &Daemon,
    vm: &VmRow,
    direction: &str,
    peer_name: &str,
    peer: Option<(Client, String)>,
) -> Migration {
    // Ids sort by start time: newest first in lists.
    let info = Migration {
        id: format!("{:013x}{}", now_ms(), &new_id()[..6]),
        vm: vm.name.clone(),
        direction: direction.into(),
        peer: peer_name.into(),
        state: MigrationState::Running,
        transferred_bytes: 0,
        total_bytes: vm.memory,
        rounds: 0,
        memory_sent_bytes: 0,
        remaining_bytes: 0,
        expected_downtime_ms: None,
        downtime_ms: None,
        disk_total_bytes: 0,
        disk_sent_bytes: 0,
        total_ms: None,
        error: None,
    };
    d.migrations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            info.id.clone(),
            MigrationRecord {
                info: info.clone(),
                vm_id: vm.id.clone(),
                peer,
            },
        );
    info
}

/// Puts a migrating VM back to running (the worker runs it on), or to
/// paused when the worker holds it paused (`held`: it committed and never
/// heard back, so the destination may run it and the operator decides; or
/// it could not take its disks back).
fn back_to_running(d: &Daemon, vm_id: &str, event: &str, why: &str, held: bool) {
    let r = d.reg.transition(
        vm_id,
        Transition {
            from: &[VmState::Migrating],
            to: if held {
                VmState::Paused
            } else {
                VmState::Running
            },
            reason: Some(why.into()),
            pid: None,
            event,
            message: why.into(),
            action: "end the migration",
        },
    );
    if let Err(e) = r {
        tracing::warn!("VM {vm_id}: {e}");
    }
}

/// `POST /v1/vms/{vm}/migrate`: starts moving a running VM to the daemon
/// at `req.to`; returns once the workers are connected, then a task
/// follows the progress.
pub async fn start(d: &Arc<Daemon>, key: &str, req: &StartMigration) -> Result<Migration, OpError> {
    let dest = Endpoint::parse(&req.to, req.token.clone())
        .map_err(|e| OpError::BadRequest(e.to_string()))?;
    let id = d.reg.vm(key)?.id;
    if !d.caps.has(Capability::Migration) {
        return Err(OpError::not_implemented(
            "live migration",
            "capability migration",
        ));
    }
    let vm_row = d.reg.vm(&id)?;
    if !d.reg.checkpoints(&id, &vm_row.name)?.is_empty() {
        return Err(RegistryError::DiskBusy(format!(
            "VM {} has checkpoints: their differencing images and saved states stay on this \
             host; delete the checkpoints before migrating it",
            vm_row.name
        ))
        .into());
    }
    // Disks stay where they are (shared storage): the destination must
    // reach the same paths; the workers hand the image locks over.
    let disks = d.reg.vm_disks(&id)?;
    // Held for the whole migration: no stop, pause or save meanwhile.
    let guard = d.op_lock(&id).await;
    let row = d.reg.transition(
        &id,
        Transition {
            from: &[VmState::Running],
            to: VmState::Migrating,
            reason: None,
            pid: None,
            event: "migrating",
            message: format!("live migration to {dest} starting"),
            action: "migrate it (only a running VM migrates)",
        },
    )?;
    let Some(w) = d.worker(&id) else {
        return Err(match d.orphan(&row) {
            Err(e) => e,
            Ok(_) => OpError::Failed(format!("VM {}: no worker", row.name)),
        });
    };
    let peer = Client::new(dest.clone()).with_timeout(Duration::from_secs(60));
    let incoming = IncomingMigration {
        vm_id: row.id.clone(),
        name: row.name.clone(),
        vcpus: row.vcpus,
        memory: row.memory,
        guest: row.guest.clone(),
        source: format!("pid {} ({})", std::process::id(), d.cfg.state_dir.display()),
        disks: disks
            .iter()
            .map(|k| IncomingDisk {
                name: k.name.clone(),
                path: k.path.clone(),
                format: k.format,
                size: k.size,
                qos: k.qos,
            })
            .collect(),
        // Disks stream with the memory even to a daemon on this host
        // (the memfd hand-over moves memory only).
        stream: matches!(dest, Endpoint::Tcp { .. }) || req.with_storage,
        with_storage: req.with_storage,
        dest_dir: req.dest_dir.clone(),
    };
    let ready: IncomingReady = match peer.incoming_migration(&incoming).await {
        Ok(r) => r,
        Err(e) => {
            let why = format!("destination {dest} refused the VM: {}", chain(&e));
            back_to_running(d, &id, "migration-failed", &why, false);
            return Err(OpError::Peer(why));
        }
    };
    let to = match worker_endpoint(&ready.endpoint, &dest) {
        Ok(to) => to,
        Err(e) => {
            let why = format!("destination {dest} answered an unusable endpoint: {e}");
            let _ = peer.cancel_migration(&ready.migration.id).await;
            back_to_running(d, &id, "migration-failed", &why, false);
            return Err(OpError::Peer(why));
        }
    };
    let migrate = Migrate {
        with_storage: req.with_storage,
        ..Migrate::to(to)
    };
    if let Err(e) = w.call(migrate, Duration::from_secs(30)).await {
        let why = format!("the worker did not start the migration: {}", chain(&e));
        let _ = peer.cancel_migration(&ready.migration.id).await;
        back_to_running(d, &id, "migration-failed", &why, false);
        return Err(OpError::Worker {
            what: format!("cannot migrate VM {}", row.name),
            source: e,
        });
    }
    let info = start_record(
        d,
        &row,
        "outgoing",
        &dest.to_string(),
        Some((peer.clone(), ready.migration.id.clone())),
    );
    let mig_id = info.id.clone();
    let d2 = d.clone();
    let with_storage = req.with_storage;
    tokio::spawn(async move {
        let moved = MovedDisks {
            kept: with_storage.then(|| disks.iter().map(|k| k.path.clone()).collect()),
            ids: disks.into_iter().map(|k| k.id).collect(),
        };
        follow(&d2, &mig_id, &row, &moved, &w, &peer, &ready.migration.id).await;
        drop(guard);
    });
    Ok(info)
}

/// Size of the guest pages the worker counts (x86 base pages).
const PAGE_SIZE: u64 = 4096;

/// Copies the worker's progress into the record.
fn update(d: &Daemon, mig_id: &str, v: &MigrationStatus) {
    set(d, mig_id, |m| {
        m.transferred_bytes = v.bytes_sent;
        if v.memory_bytes != 0 {
            m.total_bytes = v.memory_bytes;
        }
        m.rounds = v.rounds;
        m.memory_sent_bytes = v.pages_sent.saturating_mul(PAGE_SIZE);
        m.remaining_bytes = v.remaining_bytes;
        if v.rounds > 0 {
            m.expected_downtime_ms = Some(v.expected_downtime_ms);
        }
        m.downtime_ms = v.downtime_ms.or(m.downtime_ms);
        m.disk_total_bytes = v.disk_total;
        m.disk_sent_bytes = v.disk_sent;
        if let Some(e) = &v.error {
            m.error = Some(e.clone());
        }
        if v.phase.is_final() {
            m.total_ms = Some(v.elapsed_ms);
        }
    });
}

/// How an outgoing migration that did not complete ended.
struct Ended {
    /// Cancelled (by the user or the timeout) rather than failed.
    cancelled: bool,
    /// The worker's outcome, when it told one.
    outcome: Option<MigrationOutcome>,
    /// The worker holds the VM paused.
    paused_here: bool,
    /// Why, for people.
    why: String,
}

impl Ended {
    /// The end the worker reported in `s` (a final phase other than
    /// completed).
    fn reported(s: &MigrationStatus) -> Ended {
        Ended {
            cancelled: s.phase == MigrationPhase::Cancelled
                || s.outcome == Some(MigrationOutcome::Cancelled),
            outcome: s.outcome,
            paused_here: s.paused_here,
            why: s.error.clone().unwrap_or_else(|| match s.phase {
                MigrationPhase::Cancelled => "cancelled".into(),
                _ => "failed".into(),
            }),
        }
    }
}

/// The disks of an outgoing migration, forgotten here once it completed.
struct MovedDisks {
    /// Their registry ids.
    ids: Vec<String>,
    /// Shared-nothing: the images that stay on this host (copied).
    kept: Option<Vec<String>>,
}

/// Follows an outgoing migration to its end and settles the registry.
async fn follow(
    d: &Daemon,
    mig_id: &str,
    row: &VmRow,
    moved: &MovedDisks,
    w: &Arc<Worker>,
    peer: &Client,
    peer_mig: &str,
) {
    let start = Instant::now();
    let mut errors = 0;
    let outcome = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match w.call(MigrateStatus {}, Duration::from_secs(10)).await {
            Ok(v) => {
                errors = 0;
                update(d, mig_id, &v);
                match v.phase {
                    MigrationPhase::Completed => {
                        // Set before the worker exits: its end is expected.
                        w.migrated_away.store(true, Ordering::SeqCst);
                        break Ok(());
                    }
                    MigrationPhase::Failed | MigrationPhase::Cancelled => {
                        break Err(Ended::reported(&v))
                    }
                    _ => {}
                }
            }
            Err(e) => {
                // The worker ends right after a completed migration; the
                // destination knows whether the VM arrived.
                if *w.gone.borrow() || errors > 20 {
                    match peer.get_vm(&row.id).await {
                        Ok(vm) if vm.state.has_worker() => {
                            w.migrated_away.store(true, Ordering::SeqCst);
                            break Ok(());
                        }
                        _ => {
                            break Err(Ended {
                                cancelled: false,
                                outcome: None,
                                paused_here: false,
                                why: format!("the source worker stopped answering: {}", chain(&e)),
                            })
                        }
                    }
                }
                errors += 1;
            }
        }
    };
    let outcome = match outcome {
        // The source worker committed and never heard back: the
        // destination knows. If it runs the VM, the migration is done and
        // the paused source copy ends; otherwise that copy stays paused.
        Err(end) if end.outcome == Some(MigrationOutcome::Unconfirmed) => {
            match peer.get_vm(&row.id).await {
                Ok(vm) if vm.state == VmState::Running => {
                    w.migrated_away.store(true, Ordering::SeqCst);
                    let _ = w
                        .call(
                            tern_worker_proto::requests::Shutdown {},
                            Duration::from_secs(10),
                        )
                        .await;
                    Ok(())
                }
                _ => Err(end),
            }
        }
        o => o,
    };
    match outcome {
        Ok(()) => {
            // The destination marks the VM running once its worker answers.
            let arrived = Instant::now();
            let mut running = false;
            while arrived.elapsed() < Duration::from_secs(30) {
                if let Ok(vm) = peer.get_vm(&row.id).await {
                    if vm.state == VmState::Running {
                        running = true;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let msg = format!(
                "live migration to {} completed in {:.0} ms{}",
                peer.endpoint(),
                start.elapsed().as_secs_f64() * 1e3,
                match &moved.kept {
                    Some(paths) if !paths.is_empty() => format!(
                        "; its disks were copied, the images stay here unregistered: {}",
                        paths.join(", ")
                    ),
                    _ => String::new(),
                }
            );
            let _ = d.reg.remove_vm(
                &row.id,
                &[
                    VmState::Migrating,
                    VmState::Running,
                    VmState::Stopped,
                    VmState::Failed,
                ],
                "migrated-out",
                &msg,
            );
            // The disks went with the VM: the destination's registry has them.
            let _ = d.reg.forget_disks(&moved.ids);
            let _ = w.wait_gone(Duration::from_secs(10)).await;
            let _ = std::fs::remove_file(d.cfg.worker_log(&row.id));
            set(d, mig_id, |m| {
                m.state = MigrationState::Completed;
                m.total_ms
                    .get_or_insert(start.elapsed().as_secs_f64() * 1e3);
                if !running {
                    m.error =
                        Some("the destination did not report the VM running within 30 s".into());
                }
            });
        }
        Err(Ended {
            cancelled,
            paused_here,
            why,
            ..
        }) => {
            let _ = peer.cancel_migration(peer_mig).await;
            if *w.gone.borrow() {
                // The supervisor recorded the worker's end already.
            } else {
                back_to_running(
                    d,
                    &row.id,
                    if cancelled {
                        "migration-cancelled"
                    } else {
                        "migration-failed"
                    },
                    &format!(
                        "live migration to {} ended: {why}{}",
                        peer.endpoint(),
                        if paused_here {
                            "; the VM is paused here"
                        } else {
                            "; the VM runs here"
                        }
                    ),
                    paused_here,
                );
            }
            set(d, mig_id, |m| {
                m.state = if cancelled {
                    MigrationState::Cancelled
                } else {
                    MigrationState::Failed
                };
                m.error = Some(why);
                m.total_ms
                    .get_or_insert(start.elapsed().as_secs_f64() * 1e3);
            });
        }
    }
}

/// `POST /v1/migrations/incoming`: registers the VM as `migrating` and
/// starts a worker waiting for it.
pub async fn incoming(d: &Arc<Daemon>, req: &IncomingMigration) -> Result<IncomingReady, OpError> {
    if !d.caps.has(Capability::Migration) {
        return Err(OpError::not_implemented(
            "live migration",
            "capability migration",
        ));
    }
    check_name("VM", &req.name)?;
    check_memory(req.memory)?;
    check_guest(&req.guest)?;
    check_vcpus(req.vcpus)?;
    if req.vm_id.len() != 16 || !req.vm_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OpError::BadRequest(format!(
            "invalid VM id '{}'",
            req.vm_id
        )));
    }
    let (disks, dest_dir) = if req.with_storage {
        let (disks, dir) = mirrored_disks(d, req)?;
        (disks, Some(dir))
    } else {
        (incoming_disks(d, &req.disks)?, None)
    };
    let now = now_ms();
    let row = VmRow {
        id: req.vm_id.clone(),
        name: req.name.clone(),
        vcpus: req.vcpus,
        memory: req.memory,
        guest: req.guest.clone(),
        state: VmState::Migrating,
        reason: Some(format!("incoming live migration from {}", req.source)),
        pid: None,
        pid_start: None,
        created_ms: now,
        updated_ms: now,
    };
    let created = d.reg.insert_migrating_vm(
        &row,
        &disks,
        "migrating-in",
        &format!("incoming live migration from {}", req.source),
    )?;
    let path = d.cfg.run_dir().join(format!("{}.mig", row.id));
    let _ = std::fs::remove_file(&path);
    let listen = if req.stream {
        // Port 0: the worker picks one and says which in its log.
        let ip = d.cfg.migration_ip;
        tern_worker_proto::Endpoint::Tcp {
            host: match ip {
                std::net::IpAddr::V4(_) => ip.to_string(),
                std::net::IpAddr::V6(_) => format!("[{ip}]"),
            },
            port: 0,
        }
    } else {
        tern_worker_proto::Endpoint::Unix(path.clone())
    };
    let forget = |e: OpError| {
        let why = chain(&e);
        let _ = d
            .reg
            .remove_vm(&row.id, &[VmState::Migrating], "migration-in-failed", &why);
        let _ = d.reg.forget_disks(&created);
        e
    };
    let listening_file = d.cfg.run_dir().join(format!("{}.listening", row.id));
    let _ = std::fs::remove_file(&listening_file);
    let mut spec = d
        .launch_spec(&row, Boot::Incoming(listen))
        .map_err(forget)?;
    // The worker writes the listening file once it listens: a UNIX
    // socket's file exists from bind() on, a moment before listen(), and
    // a source connecting in that moment is refused.
    let by_file = d.caps.has(Capability::ListeningFile);
    if by_file {
        spec.listening_file = Some(listening_file.clone());
    } else if req.stream {
        return Err(forget(OpError::not_implemented(
            &format!("VM {}: a TCP incoming migration", row.name),
            "capability listening-file",
        )));
    }
    spec.dest_dir = dest_dir;
    let launch = d.launch(&row, spec);
    let w = d
        .spawn_tracked(&row, &launch, Some(created.clone()))
        .map_err(forget)?;
    let pid = w.pid;
    // The source may connect once the worker listens.
    let t = Instant::now();
    let listening = || -> Result<Option<String>, OpError> {
        if by_file {
            Ok(tern_worker_proto::Listening::read(&listening_file)
                .map_err(|e| OpError::Failed(chain(&e)))?
                .map(|l| l.endpoint.to_string()))
        } else {
            Ok(path.exists().then(|| format!("unix:{}", path.display())))
        }
    };
    let endpoint = loop {
        let gone = *w.gone.borrow();
        match listening() {
            Ok(Some(ep)) => break ep,
            Ok(None) if !gone && t.elapsed() <= d.cfg.start_timeout => {}
            failed => {
                if !gone {
                    w.kill_requested.store(true, Ordering::SeqCst);
                    let _ = w.kill();
                }
                let _ = std::fs::remove_file(&listening_file);
                let log = worker::last_log_line(&d.cfg.worker_log(&row.id)).unwrap_or_default();
                let why = match failed {
                    Err(e) => chain(&e),
                    _ => log,
                };
                return Err(OpError::Failed(format!(
                    "the incoming worker did not listen for the migration: {why}"
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let _ = std::fs::remove_file(&listening_file);
    let info = start_record(d, &row, "incoming", &req.source, None);
    let mig_id = info.id.clone();
    // The VM is ours once its worker answers on the control socket.
    let d2 = d.clone();
    tokio::spawn(async move {
        let t = Instant::now();
        loop {
            if *w.gone.borrow() {
                set(&d2, &mig_id, |m| {
                    if m.state == MigrationState::Running {
                        m.state = MigrationState::Failed;
                        m.error = Some("the incoming worker ended before the VM arrived".into());
                    }
                });
                return;
            }
            match worker::hello(&w.control, Duration::from_secs(2)).await {
                Ok(_) => break,
                // The VM arrived in a worker this daemon cannot drive.
                Err(
                    e @ WorkerError::Call {
                        source: ClientError::Version(_),
                        ..
                    },
                ) => {
                    let why = chain(&e);
                    w.kill_requested.store(true, Ordering::SeqCst);
                    let _ = w.kill();
                    set(&d2, &mig_id, |m| {
                        m.state = MigrationState::Failed;
                        m.error = Some(why);
                    });
                    return;
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        w.incoming.store(false, Ordering::SeqCst);
        let r = d2.reg.transition(
            &row.id,
            Transition {
                from: &[VmState::Migrating],
                to: VmState::Running,
                reason: None,
                pid: None,
                event: "migrated-in",
                message: format!(
                    "arrived by live migration (worker pid {pid}, {:.0} ms after the request)",
                    t.elapsed().as_secs_f64() * 1e3
                ),
                action: "mark it running",
            },
        );
        if let Err(e) = r {
            tracing::warn!("VM {}: {e}", row.name);
        }
        set(&d2, &mig_id, |m| {
            m.state = MigrationState::Completed;
            m.total_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        });
    });
    Ok(IncomingReady {
        migration: info,
        endpoint,
    })
}

/// Where the source worker connects: the destination's endpoint, with an
/// unspecified IP replaced by the host the destination daemon was reached
/// at.
fn worker_endpoint(
    endpoint: &str,
    dest: &Endpoint,
) -> Result<tern_worker_proto::Endpoint, tern_worker_proto::EndpointError> {
    let ep: tern_worker_proto::Endpoint = endpoint.parse()?;
    let (tern_worker_proto::Endpoint::Tcp { host, port }, Endpoint::Tcp { addr, .. }) = (&ep, dest)
    else {
        return Ok(ep);
    };
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    match ip.parse::<std::net::IpAddr>() {
        Ok(a) if a.is_unspecified() => {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            Ok(tern_worker_proto::Endpoint::Tcp {
                host: host.into(),
                port: *port,
            })
        }
        _ => Ok(ep),
    }
}

/// The disks of an incoming shared-nothing VM: created by its worker in
/// `dest_dir` (an allowed directory) under the source's file names, which
/// must be free there. Returns their records and the directory.
fn mirrored_disks(
    d: &Daemon,
    req: &IncomingMigration,
) -> Result<(Vec<Disk>, std::path::PathBuf), OpError> {
    let dir =
        match &req.dest_dir {
            Some(dir) => {
                let probe = std::path::Path::new(dir).join("probe");
                let p = crate::disks::resolve_path(
                    &d.cfg.disk_dirs,
                    "probe",
                    tern_api::DiskFormat::Raw,
                    probe.to_str(),
                )?;
                p.parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default()
            }
            None => d.cfg.disk_dirs.first().cloned().ok_or_else(|| {
                OpError::BadRequest("this host allows no disk directories".into())
            })?,
        };
    let disks = req
        .disks
        .iter()
        .map(|k| {
            check_name("disk", &k.name)?;
            check_size(k.size)?;
            let file = std::path::Path::new(&k.path).file_name().ok_or_else(|| {
                OpError::BadRequest(format!("disk {}: {} has no file name", k.name, k.path))
            })?;
            let path = dir.join(file);
            if path.exists() {
                return Err(OpError::BadRequest(format!(
                    "disk {}: {} exists on this host already",
                    k.name,
                    path.display()
                )));
            }
            Ok(Disk {
                id: new_id(),
                name: k.name.clone(),
                path: path.display().to_string(),
                format: k.format,
                size: k.size,
                vm: None,
                qos: k.qos,
            })
        })
        .collect::<Result<Vec<_>, OpError>>()?;
    Ok((disks, dir))
}

/// Checks the disks of an incoming VM: each must be a file this host
/// reaches under the same path, inside its allowed directories.
fn incoming_disks(d: &Daemon, disks: &[IncomingDisk]) -> Result<Vec<Disk>, OpError> {
    disks
        .iter()
        .map(|k| {
            check_name("disk", &k.name)?;
            check_size(k.size)?;
            let path = crate::disks::resolve_path(
                &d.cfg.disk_dirs,
                &k.name,
                k.format,
                Some(k.path.as_str()),
            )?;
            if !path.is_file() {
                return Err(OpError::BadRequest(format!(
                    "disk {} ({}) is not on this host: a VM migrates with its disks only \
                     when both hosts reach them under the same path (shared storage)",
                    k.name, k.path
                )));
            }
            Ok(Disk {
                id: new_id(),
                name: k.name.clone(),
                path: path.display().to_string(),
                format: k.format,
                size: k.size,
                vm: None,
                qos: k.qos,
            })
        })
        .collect()
}

/// `POST /v1/migrations/{id}/cancel`: cancels a running migration; the source
/// VM runs on.
pub async fn cancel(d: &Daemon, id: &str) -> Result<Migration, OpError> {
    let r = get(d, id).ok_or_else(|| OpError::NotFound(format!("no migration '{id}'")))?;
    if !matches!(
        r.info.state,
        MigrationState::Pending | MigrationState::Running
    ) {
        return Err(RegistryError::DiskBusy(format!(
            "migration {id} has already ended ({:?})",
            r.info.state
        ))
        .into());
    }
    let w = d.worker(&r.vm_id);
    match (r.info.direction.as_str(), w) {
        ("outgoing", Some(w)) => {
            w.call(MigrateCancel {}, Duration::from_secs(10))
                .await
                .map_err(|source| OpError::Worker {
                    what: format!("cannot cancel migration {id}"),
                    source,
                })?;
            // The follower sees the cancelled phase and settles the rest.
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Some(r) = get(d, id) {
                    if r.info.state != MigrationState::Running {
                        return Ok(r.info);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        ("incoming", Some(w)) if w.incoming.load(Ordering::SeqCst) => {
            w.kill_requested.store(true, Ordering::SeqCst);
            let _ = w.kill();
            w.wait_gone(Duration::from_secs(10)).await;
            set(d, id, |m| {
                m.state = MigrationState::Cancelled;
                m.error = Some("cancelled by the source".into());
            });
        }
        _ => {}
    }
    show(d, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_destination_ip_becomes_the_host_the_daemon_was_reached_at() {
        let dest = Endpoint::Tcp {
            addr: "10.1.2.3:7070".into(),
            token: None,
        };
        let ep = |s: &str| worker_endpoint(s, &dest).map(|e| e.to_string());
        assert_eq!(ep("tcp:0.0.0.0:4000").unwrap(), "tcp:10.1.2.3:4000");
        assert_eq!(ep("tcp:[::]:4000").unwrap(), "tcp:10.1.2.3:4000");
        assert_eq!(ep("tcp:192.168.0.9:4000").unwrap(), "tcp:192.168.0.9:4000");
        assert_eq!(ep("unix:/run/a b,c.mig").unwrap(), "unix:/run/a b,c.mig");
        assert!(ep("udp:1.2.3.4:5").is_err());
    }

    #[test]
    fn a_reported_end_keeps_the_workers_outcome_and_pause() {
        let s = MigrationStatus {
            phase: MigrationPhase::Failed,
            outcome: Some(MigrationOutcome::Unconfirmed),
            paused_here: true,
            error: Some("anything at all".into()),
            ..Default::default()
        };
        let e = Ended::reported(&s);
        assert_eq!(e.outcome, Some(MigrationOutcome::Unconfirmed));
        assert!(e.paused_here && !e.cancelled);
        let s = MigrationStatus {
            phase: MigrationPhase::Cancelled,
            ..Default::default()
        };
        let e = Ended::reported(&s);
        assert!(e.cancelled && !e.paused_here);
        assert_eq!(e.why, "cancelled");
    }
}
