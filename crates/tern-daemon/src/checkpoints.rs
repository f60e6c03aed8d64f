//! Checkpoints of a VM: taken, reverted to and deleted by its worker (in
//! `--checkpoint-dir`, one per VM under the state directory), recorded in
//! the registry.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_api::{Checkpoint, Vm, VmState};
use tern_worker_proto::requests::{
    CheckpointCreate, CheckpointDelete, CheckpointList, CheckpointRevert,
};
use tern_worker_proto::{Call, Capability};

use crate::daemon::Daemon;
use crate::error::OpError;
use crate::registry::{RegistryError, Transition};
use crate::validation::check_name;
use crate::worker;

/// The worker of a VM that runs or is paused; checkpoints need one.
fn worker_of(
    d: &Daemon,
    vm_id: &str,
    what: &str,
) -> Result<std::sync::Arc<worker::Worker>, OpError> {
    let row = d.reg.vm(vm_id)?;
    match (row.state, d.worker(vm_id)) {
        (VmState::Running | VmState::Paused, Some(w)) => Ok(w),
        _ => Err(RegistryError::WrongState {
            name: row.name,
            state: row.state,
            action: format!("{what} (start it first: its worker keeps the checkpoints)"),
        }
        .into()),
    }
}

/// Sends `req` to `w`, which may take long (memory is written or merged).
async fn ask<R: Call + Clone>(w: &worker::Worker, req: R, what: &str) -> Result<R::Reply, OpError> {
    w.call(req, Duration::from_secs(600))
        .await
        .map_err(|source| OpError::Worker {
            what: what.into(),
            source,
        })
}

fn check_enabled(d: &Daemon) -> Result<(), OpError> {
    if d.caps.has(Capability::Checkpoints) {
        Ok(())
    } else {
        Err(OpError::not_implemented(
            "checkpoints",
            "capability checkpoints",
        ))
    }
}

/// `GET /v1/vms/{vm}/checkpoints`: the registry's checkpoints, with their
/// place in the tree (parent, current) from the VM's worker when one runs.
pub async fn list(d: &Daemon, key: &str) -> Result<Vec<Checkpoint>, OpError> {
    let row = d.reg.vm(key)?;
    let mut cps = d.reg.checkpoints(&row.id, &row.name)?;
    let Some(w) = d.worker(&row.id) else {
        return Ok(cps);
    };
    if cps.is_empty() || !matches!(row.state, VmState::Running | VmState::Paused) {
        return Ok(cps);
    }
    // The tree is a view: a worker that does not answer leaves it flat
    // rather than failing the list.
    let tree = match w.call(CheckpointList {}, Duration::from_secs(5)).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!("VM {}: checkpoint tree not known: {e}", row.name);
            return Ok(cps);
        }
    };
    for c in &mut cps {
        if let Some(info) = tree.checkpoints.iter().find(|i| i.id.to_string() == c.id) {
            c.parent = (info.parent != 0).then(|| info.parent.to_string());
            c.current = tree.current == info.id;
        }
    }
    Ok(cps)
}

/// `POST /v1/vms/{vm}/checkpoints`.
pub async fn create(d: &Daemon, key: &str, name: &str) -> Result<Checkpoint, OpError> {
    let row = d.reg.vm(key)?;
    check_name("checkpoint", name)?;
    check_enabled(d)?;
    let op = d.op_lock(&row.id).await;
    if d.reg.checkpoint(&row.id, name)?.is_some() {
        return Err(RegistryError::NameTaken {
            kind: "checkpoint",
            name: name.into(),
        }
        .into());
    }
    let w = worker_of(d, &row.id, "take a checkpoint")?;
    let req = CheckpointCreate {
        name: name.into(),
        memory: true,
    };
    let what = format!("cannot take checkpoint {name} of VM {}", row.name);
    let n = ask(&w, req, &what).await?.checkpoint.id;
    d.reg.add_checkpoint(&row.id, &row.name, n, name)?;
    drop(op);
    list(d, &row.id)
        .await?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| OpError::Failed("checkpoint recorded but not found".into()))
}

/// An existing checkpoint of a VM with a worker, under the VM's operation
/// lock.
struct Existing {
    row: crate::registry::VmRow,
    /// The worker's number of the checkpoint.
    n: u64,
    w: std::sync::Arc<worker::Worker>,
    _op: tokio::sync::OwnedMutexGuard<()>,
}

/// Finds checkpoint `cp` of VM `key` and its worker, to `what` it.
async fn existing(d: &Daemon, key: &str, cp: &str, what: &str) -> Result<Existing, OpError> {
    let row = d.reg.vm(key)?;
    check_enabled(d)?;
    let op = d.op_lock(&row.id).await;
    let n = d
        .reg
        .checkpoint(&row.id, cp)?
        .ok_or_else(|| OpError::NotFound(format!("VM {} has no checkpoint '{cp}'", row.name)))?;
    let w = worker_of(d, &row.id, what)?;
    Ok(Existing { row, n, w, _op: op })
}

/// `POST /v1/vms/{vm}/checkpoints/{checkpoint}/apply`.
pub async fn apply(d: &Daemon, key: &str, cp: &str) -> Result<Vm, OpError> {
    let Existing { row, n, w, _op } = existing(d, key, cp, "revert to a checkpoint").await?;
    let what = format!("cannot revert VM {} to checkpoint {cp}", row.name);
    let reply = ask(&w, CheckpointRevert { id: n }, &what).await?;
    let to = match reply.state {
        tern_worker_proto::VmState::Paused => VmState::Paused,
        tern_worker_proto::VmState::Stopped | tern_worker_proto::VmState::Stopping => {
            // A checkpoint without memory: the worker ends.
            w.stop_requested.store(true, Ordering::SeqCst);
            let _ = w.wait_gone(Duration::from_secs(20)).await;
            return d.get(&row.id);
        }
        _ => VmState::Running,
    };
    let row = d.reg.transition(
        &row.id,
        Transition {
            from: &[VmState::Running, VmState::Paused],
            to,
            reason: None,
            pid: None,
            event: "checkpoint-applied",
            message: format!("reverted to checkpoint {cp}"),
            action: "revert it",
        },
    )?;
    d.view(&row)
}

/// `DELETE /v1/vms/{vm}/checkpoints/{checkpoint}`: the worker merges the
/// checkpoint's disk changes.
pub async fn delete(d: &Daemon, key: &str, cp: &str) -> Result<(), OpError> {
    let Existing { row, n, w, _op } = existing(d, key, cp, "delete a checkpoint").await?;
    let what = format!("cannot delete checkpoint {cp} of VM {}", row.name);
    ask(&w, CheckpointDelete { id: n }, &what).await?;
    d.reg.delete_checkpoint(&row.id, &row.name, n)?;
    Ok(())
}
