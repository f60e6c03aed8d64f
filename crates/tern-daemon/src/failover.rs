//! Clustered VMs on this node: ownership, renewals and failover.
//!
//! - A clustered VM starts here only under this node's claim of its owner
//!   key (one etcd transaction; the claim's revision is the fencing token),
//!   after the token was handed to its disk images
//!   ([`tern_cluster::fence`]): storage refuses an older owner.
//! - After every keepalive etcd confirmed, each owned VM's worker is told
//!   `ownership-renew` with a deadline that ends before the lease can: a
//!   worker whose daemon died, hangs or lost etcd stops its VM by itself.
//! - When etcd deletes a node's lease (the proof that its workers stopped
//!   by that deadline), every survivor computes the same placement of the
//!   unowned VMs; the one each VM is placed on claims it and starts it from
//!   shared storage, in priority order. The claim settles any race: exactly
//!   one node wins. A VM that fits nowhere is reported (API and event).
//! - A VM stopped on request is released with a `stopped` mark: no node
//!   restarts it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_api::{AddClusterVm, ClusterPriority, DiskFormat as ApiFormat, VmState};
use tern_cluster::fence;
use tern_cluster::membership::{self, NodeEvent, NodeEvents, Renewal};
use tern_cluster::{
    keys, ownership, placement, vm, Claim, ClusterDisk, ClusterError, ClusterVm, DiskFormat,
    Priority, Unplaced,
};
use tern_worker_proto::requests::OwnershipRenew;

use crate::cluster::Joined;
use crate::daemon::Daemon;
use crate::error::{chain, OpError};
use crate::registry::{new_id, NewVm, RegistryError, VmRow};

/// How long a renewal may take to reach a worker.
const RENEW_TIMEOUT: Duration = Duration::from_millis(500);

/// The least time a fresh start needs before its first deadline.
const MIN_DEADLINE_MS: u64 = 200;

/// Maps the cluster's errors to the API's.
fn op(e: ClusterError) -> OpError {
    let msg = chain(&e);
    match e {
        ClusterError::UnknownNode(_)
        | ClusterError::BadName { .. }
        | ClusterError::BadSetting(_) => OpError::BadRequest(msg),
        ClusterError::UnknownVm(_) => OpError::NotFound(msg),
        ClusterError::Owned { .. } | ClusterError::NotOwner { .. } => OpError::Conflict(msg),
        ClusterError::Unreachable { .. }
        | ClusterError::Etcd { .. }
        | ClusterError::LeaseLost(_) => OpError::Unavailable(msg),
        ClusterError::BadDocument { .. } | ClusterError::DocumentVersion { .. } => {
            OpError::Failed(msg)
        }
        ClusterError::NodeAlreadyUp(_) => OpError::Conflict(msg),
    }
}

/// The worker's deadline after renewal `r`: the earliest instant the lease
/// can expire less a margin (a fifth of the TTL, at least 500 ms), as
/// milliseconds from now; 0 once it passed.
fn deadline_ms(r: &Renewal) -> u64 {
    let margin = (r.ttl / 5).max(Duration::from_millis(500));
    let end = r.earliest_expiry().checked_sub(margin).unwrap_or(r.sent_at);
    end.saturating_duration_since(Instant::now()).as_millis() as u64
}

/// Starts the renewal and failover tasks of a joined node.
pub(crate) fn spawn(d: Arc<Daemon>, j: Arc<Joined>) {
    tokio::spawn(renew_loop(d.clone(), j.clone()));
    tokio::spawn(failover_loop(d, j));
}

/// After each renewal etcd confirmed, renews every owned VM's worker.
async fn renew_loop(d: Arc<Daemon>, j: Arc<Joined>) {
    let mut renewals = j.membership.renewals();
    while renewals.changed().await.is_ok() {
        let r = *renewals.borrow_and_update();
        if r.lost {
            // Nothing more to send: every worker stops by its deadline.
            return;
        }
        let names: Vec<String> = j
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for name in names {
            renew(&d, &j, &name, &r).await;
        }
    }
}

/// Sends VM `name`'s worker its next deadline after renewal `r`.
async fn renew(d: &Daemon, j: &Joined, name: &str, r: &Renewal) {
    let Some(claim) = j
        .claims
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned()
    else {
        return;
    };
    let Some(w) = d.reg.vm(name).ok().and_then(|row| d.worker(&row.id)) else {
        return;
    };
    let ms = deadline_ms(r);
    if ms == 0 {
        return;
    }
    let req = OwnershipRenew {
        token: claim.token,
        deadline_ms: ms,
    };
    if let Err(e) = w.call(req, RENEW_TIMEOUT).await {
        tracing::warn!(
            "cluster: VM {name}: ownership renewal not delivered: {}",
            chain(&e)
        );
    }
}

/// Renews VM `name` at once (after its worker answered).
pub(crate) async fn renew_now(d: &Daemon, name: &str) {
    if let Some(j) = d.cluster.get() {
        let r = *j.membership.renewals().borrow();
        renew(d, j, name, &r).await;
    }
}

/// Before a VM starts here: if it is clustered, this node must own it (it
/// claims it when nobody does) and hand its disks the fencing token.
pub(crate) async fn before_start(d: &Daemon, row: &VmRow) -> Result<(), OpError> {
    let Some(j) = d.cluster.get() else {
        return Ok(());
    };
    let client = j.membership.client();
    match vm::get_vm(client, &row.name).await {
        Ok(_) => {}
        Err(ClusterError::UnknownVm(_)) => return Ok(()),
        Err(e) => return Err(op(e)),
    }
    let (me, lease) = (j.membership.node(), j.membership.lease());
    let r = *j.membership.renewals().borrow();
    if r.lost || deadline_ms(&r) < MIN_DEADLINE_MS {
        return Err(OpError::Unavailable(format!(
            "VM {}: node '{me}' cannot prove it holds its lease now; a clustered VM does not start",
            row.name
        )));
    }
    let (claim, fresh) = match ownership::owner(client, &row.name).await.map_err(op)? {
        Some(c) if c.node == me && c.lease == lease => (c, false),
        Some(c) => {
            return Err(OpError::Conflict(format!(
                "VM {} is clustered and owned by node '{}' (fencing token {}); start it there",
                row.name, c.node, c.token
            )))
        }
        None => (
            ownership::claim(client, &row.name, me, lease)
                .await
                .map_err(op)?,
            true,
        ),
    };
    for disk in d.reg.vm_disks(&row.id)? {
        if let Err(e) = fence::hand_over(Path::new(&disk.path), claim.token, me) {
            if fresh {
                let _ = ownership::release(client, &claim, false).await;
            }
            return Err(OpError::Conflict(format!("VM {}: {}", row.name, chain(&e))));
        }
    }
    j.claims
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(row.name.clone(), claim);
    Ok(())
}

/// After a VM stopped on request: gives up its claim, marked stopped, so no
/// node restarts it.
pub(crate) async fn after_stop(d: &Daemon, name: &str) {
    let Some(j) = d.cluster.get() else {
        return;
    };
    let claim = j
        .claims
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(name);
    if let Some(claim) = claim {
        if let Err(e) = ownership::release(j.membership.client(), &claim, true).await {
            tracing::warn!(
                "cluster: VM {name}: cannot release its ownership: {}",
                chain(&e)
            );
        }
    }
}

/// Watches the nodes; after a node goes down (and every TTL, to catch what
/// a broken watch missed) runs a placement round.
async fn failover_loop(d: Arc<Daemon>, j: Arc<Joined>) {
    let client = j.membership.client().clone();
    let ttl = j.membership.ttl();
    let mut tick = tokio::time::interval(ttl);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The watch starts at once: a node that has just joined must not miss
    // another's loss (it may be the one the plan picks). The first periodic
    // round waits a TTL.
    tick.tick().await;
    let mut events: Option<NodeEvents> = NodeEvents::start(&client, 0).await.ok();
    loop {
        if j.membership.renewals().borrow().lost {
            return;
        }
        if events.is_none() {
            events = NodeEvents::start(&client, 0).await.ok();
        }
        let down = async {
            match events.as_mut() {
                Some(e) => e.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            got = down => match got {
                Ok(Some(NodeEvent::Down { node })) => {
                    tracing::warn!("cluster: node '{node}' is down; placing its VMs");
                }
                Ok(Some(NodeEvent::Up { .. })) => {}
                Ok(None) | Err(_) => {
                    events = None;
                    continue;
                }
            },
        }
        if let Err(e) = round(&d, &j).await {
            tracing::warn!("cluster: placement round failed: {}", chain(&e));
        }
    }
}

/// Why a VM could not be placed, for a person.
fn unplaced_text(why: &Unplaced) -> Option<String> {
    match why {
        Unplaced::NoAutoStart => None,
        Unplaced::NoRoom { memory, vcpus } => Some(format!(
            "no node that is up has {} MiB of memory and {vcpus} vCPUs free",
            memory >> 20
        )),
    }
}

/// One placement round: every unowned VM not stopped on purpose is placed;
/// those placed here are claimed and started, in the plan's (priority)
/// order.
async fn round(d: &Arc<Daemon>, j: &Joined) -> Result<(), ClusterError> {
    let client = j.membership.client();
    let me = j.membership.node();
    let nodes = membership::nodes(client).await?;
    let vms = vm::list_vms(client).await?;
    let owners = ownership::owners(client).await?;
    let stopped = vm::stopped_vms(client).await?;
    let owned: HashSet<&str> = owners.iter().map(|o| o.vm.as_str()).collect();
    let live: Vec<ClusterVm> = vms
        .into_iter()
        .filter(|v| owned.contains(v.name.as_str()) || !stopped.contains(&v.name))
        .collect();
    let plan = placement::plan(&nodes, &live, &owners);
    let now: BTreeMap<String, String> = plan
        .unplaced
        .iter()
        .filter_map(|(vm, why)| unplaced_text(why).map(|t| (vm.clone(), t)))
        .collect();
    {
        let mut seen = j.unplaced.lock().unwrap_or_else(|p| p.into_inner());
        for (vm, why) in &now {
            if !seen.contains_key(vm) {
                tracing::warn!("cluster: VM {vm} cannot be placed: {why}");
                let _ = d.reg.event(None, Some(vm), "cluster-vm-unplaced", why);
            }
        }
        *seen = now;
    }
    for p in plan.placed.iter().filter(|p| p.node == me) {
        let Some(vm) = live.iter().find(|v| v.name == p.vm) else {
            continue;
        };
        match ownership::claim(client, &vm.name, me, j.membership.lease()).await {
            Ok(claim) => take_over(d, j, vm, claim).await,
            // Another node won it (its view differed): nothing to do.
            Err(ClusterError::Owned { .. }) | Err(ClusterError::UnknownVm(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Starts VM `vm`, just claimed, on this node from shared storage.
async fn take_over(d: &Arc<Daemon>, j: &Joined, vm: &ClusterVm, claim: Claim) {
    tracing::info!(
        "cluster: VM {} is this node's now (fencing token {}); starting it",
        vm.name,
        claim.token
    );
    j.claims
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(vm.name.clone(), claim.clone());
    let started = match local_row(d, vm) {
        Ok(()) => d.start(&vm.name).await.map(|_| ()),
        Err(e) => Err(e),
    };
    match started {
        Ok(()) => {
            let _ = d.reg.event(
                None,
                Some(&vm.name),
                "cluster-vm-failed-over",
                &format!(
                    "started on node '{}' with fencing token {}",
                    claim.node, claim.token
                ),
            );
        }
        Err(e) => {
            let why = chain(&e);
            tracing::warn!("cluster: VM {} did not start here: {why}", vm.name);
            let _ = d
                .reg
                .event(None, Some(&vm.name), "cluster-vm-start-failed", &why);
            j.claims
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&vm.name);
            // Given back unmarked: another round (here or elsewhere) may
            // place it again.
            let _ = ownership::release(j.membership.client(), &claim, false).await;
        }
    }
}

/// Makes sure this node's registry (its local cache) knows VM `vm` with its
/// shared disks.
fn local_row(d: &Daemon, vm: &ClusterVm) -> Result<(), OpError> {
    match d.reg.vm(&vm.name) {
        Ok(_) => return Ok(()),
        Err(RegistryError::NoVm(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let known = d.reg.disks()?;
    let mut ids = Vec::new();
    for (i, disk) in vm.disks.iter().enumerate() {
        if let Some(k) = known.iter().find(|k| k.path == disk.path) {
            ids.push(k.id.clone());
            continue;
        }
        let stem = Path::new(&disk.path)
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| keys::check_name("disk", s).is_ok() && !known.iter().any(|k| k.name == *s));
        let name = stem.map_or_else(|| format!("{}-disk{i}", vm.name), str::to_owned);
        let row = tern_api::Disk {
            id: new_id(),
            name,
            path: disk.path.clone(),
            format: match disk.format {
                DiskFormat::Raw => ApiFormat::Raw,
                DiskFormat::Vhdx => ApiFormat::Vhdx,
            },
            size: disk.size,
            vm: None,
            qos: Default::default(),
        };
        d.reg.create_disk(&row)?;
        ids.push(row.id);
    }
    d.reg.create_vm(&NewVm {
        name: vm.name.clone(),
        vcpus: vm.vcpus,
        memory: vm.memory,
        guest: vm.guest.clone(),
        disks: ids,
    })?;
    Ok(())
}

/// Whether `path` lies under one of the shared directories.
fn on_shared(dirs: &[std::path::PathBuf], path: &str) -> bool {
    let Some(parent) = Path::new(path).parent().and_then(|p| p.canonicalize().ok()) else {
        return false;
    };
    dirs.iter()
        .filter_map(|d| d.canonicalize().ok())
        .any(|d| parent.starts_with(d))
}

fn priority(p: Option<ClusterPriority>) -> Priority {
    match p.unwrap_or(ClusterPriority::Medium) {
        ClusterPriority::High => Priority::High,
        ClusterPriority::Medium => Priority::Medium,
        ClusterPriority::Low => Priority::Low,
        ClusterPriority::NoAutoStart => Priority::NoAutoStart,
    }
}

fn api_priority(p: Priority) -> ClusterPriority {
    match p {
        Priority::High => ClusterPriority::High,
        Priority::Medium => ClusterPriority::Medium,
        Priority::Low => ClusterPriority::Low,
        Priority::NoAutoStart => ClusterPriority::NoAutoStart,
    }
}

/// `POST /v1/cluster/vms`: VM `req.vm` of this node becomes clustered. Its
/// disks must be on shared storage and its preferred owners members;
/// nothing is written to etcd otherwise. A running VM is claimed by this
/// node at once; a stopped one is registered stopped.
pub(crate) async fn add_vm(
    d: &Daemon,
    j: &Joined,
    req: &AddClusterVm,
) -> Result<tern_api::ClusterVm, OpError> {
    let client = j.membership.client();
    let me = j.membership.node();
    let row = d.reg.vm(&req.vm)?;
    let disks = d.reg.vm_disks(&row.id)?;
    if !disks.is_empty() && d.cfg.shared_dirs.is_empty() {
        return Err(OpError::BadRequest(format!(
            "VM {}: node '{me}' has no shared storage (start ternd with --shared-dir DIR); \
             a clustered VM's disks must be where every node reaches them",
            row.name
        )));
    }
    for disk in &disks {
        if !on_shared(&d.cfg.shared_dirs, &disk.path) {
            return Err(OpError::BadRequest(format!(
                "VM {}: disk {} ({}) is not on shared storage ({}); \
                 a clustered VM's disks must be where every node reaches them",
                row.name,
                disk.name,
                disk.path,
                d.cfg
                    .shared_dirs
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if let Some(class) = &req.anti_affinity {
        keys::check_name("anti-affinity class", class).map_err(op)?;
    }
    let members = membership::nodes(client).await.map_err(op)?;
    for p in &req.preferred_owners {
        keys::check_name("node", p).map_err(op)?;
        if !members.iter().any(|n| n.spec.name == *p) {
            return Err(OpError::BadRequest(format!(
                "unknown node '{p}' (a preferred owner must be a member of the cluster)"
            )));
        }
    }
    let config = ClusterVm {
        name: row.name.clone(),
        vcpus: row.vcpus,
        memory: row.memory,
        guest: row.guest.clone(),
        disks: disks
            .iter()
            .map(|k| ClusterDisk {
                path: k.path.clone(),
                format: match k.format {
                    ApiFormat::Raw => DiskFormat::Raw,
                    ApiFormat::Vhdx => DiskFormat::Vhdx,
                },
                size: k.size,
            })
            .collect(),
        priority: priority(req.priority),
        preferred_owners: req.preferred_owners.clone(),
        anti_affinity: req.anti_affinity.clone(),
    };
    let running = matches!(row.state, VmState::Running | VmState::Paused);
    vm::put_vm(client, &config, (!running).then_some(me))
        .await
        .map_err(op)?;
    if running {
        if let Err(e) = before_start(d, &row).await {
            // Nothing half-registered: the configuration goes again.
            let _ = vm::delete_vm(client, &row.name).await;
            return Err(e);
        }
        renew_now(d, &row.name).await;
    }
    list(j)
        .await?
        .into_iter()
        .find(|v| v.name == row.name)
        .ok_or_else(|| OpError::NotFound(format!("clustered VM {} vanished", row.name)))
}

/// `GET /v1/cluster/vms`.
pub(crate) async fn list(j: &Joined) -> Result<Vec<tern_api::ClusterVm>, OpError> {
    let client = j.membership.client();
    let vms = vm::list_vms(client).await.map_err(op)?;
    let owners = ownership::owners(client).await.map_err(op)?;
    let stopped = vm::stopped_vms(client).await.map_err(op)?;
    let unplaced = j.unplaced.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(vms
        .into_iter()
        .map(|v| {
            let owner = owners.iter().find(|o| o.vm == v.name);
            tern_api::ClusterVm {
                stopped: owner.is_none() && stopped.contains(&v.name),
                unplaced: unplaced.get(&v.name).cloned(),
                owner: owner.map(|o| o.node.clone()),
                token: owner.map(|o| o.token),
                disks: v.disks.iter().map(|k| k.path.clone()).collect(),
                priority: api_priority(v.priority),
                name: v.name,
                vcpus: v.vcpus,
                memory: v.memory,
                guest: v.guest,
                preferred_owners: v.preferred_owners,
                anti_affinity: v.anti_affinity,
            }
        })
        .collect())
}
