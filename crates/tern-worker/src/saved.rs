//! Saved states, checkpoints and exports of the worker's VM: the `save`,
//! `checkpoint-*` and `export` requests, and loading a saved VM to
//! restore.

use std::path::Path;
use std::time::Instant;

use tern_snapshot::checkpoint::{CheckpointError, Store};
use tern_snapshot::{export, saved};
use tern_vmm::{RunState, Vm};
use tern_worker_proto::requests::{
    CheckpointCreateReply, CheckpointDeleteReply, CheckpointInfo, CheckpointListReply,
    CheckpointRevertReply, ExportReply, SaveReply,
};
use tern_worker_proto::{VmState, WorkerError};

use crate::handlers::vm_error;
use crate::{error_chain, Worker};

/// Pauses the VM if it runs; returns whether it did.
fn pause_for(vm: &Vm) -> Result<bool, WorkerError> {
    match vm.state() {
        RunState::Running => vm.pause().map(|()| true).map_err(|e| vm_error(&e)),
        _ => Ok(false),
    }
}

fn resume_if(vm: &Vm, was_running: bool) {
    if was_running {
        if let Err(e) = vm.resume() {
            eprintln!(
                "tern: error: cannot resume after the operation: {}",
                error_chain(&e)
            );
        }
    }
}

fn checkpoint_error(e: &CheckpointError) -> WorkerError {
    let msg = error_chain(e);
    match e {
        CheckpointError::NotFound(_) => WorkerError::not_found(msg),
        CheckpointError::NoName | CheckpointError::RawDisk { .. } => WorkerError::bad_request(msg),
        CheckpointError::Mismatch { .. } => WorkerError::conflict(msg),
        _ => WorkerError::failed(msg),
    }
}

fn info(c: &tern_snapshot::proto::Checkpoint, current: u64) -> CheckpointInfo {
    CheckpointInfo {
        id: c.id,
        name: c.name.clone(),
        parent: c.parent,
        created_unix_ms: c.created_unix_ms,
        memory: c.memory,
        disks: c.disks.clone(),
        current: c.id == current,
    }
}

impl Worker {
    fn with_store<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, WorkerError>,
    ) -> Result<T, WorkerError> {
        match &self.store {
            Some(s) => f(&mut s.lock().unwrap_or_else(|p| p.into_inner())),
            None => Err(WorkerError::unsupported(
                "this worker has no checkpoint store (start it with --checkpoint-dir DIR)",
            )),
        }
    }

    /// `save {dir}`: pause, write state and memory into `dir`; the worker
    /// stops after the reply. On failure the VM runs on.
    pub(crate) fn save(&self, dir: &Path) -> Result<SaveReply, WorkerError> {
        let vm = &self.vm;
        let t0 = Instant::now();
        let was_running = pause_for(vm)?;
        let pause_ms = t0.elapsed().as_secs_f64() * 1e3;
        if let Err(e) = vm.disks().flush_all() {
            resume_if(vm, was_running);
            return Err(WorkerError::failed(error_chain(&e)));
        }
        match saved::save_into(vm, dir, true) {
            Ok(info) => {
                eprintln!(
                    "tern: saved to {} ({} MiB of RAM, {} MiB written) in {:.0} ms",
                    info.dir.display(),
                    info.memory >> 20,
                    info.memory_written >> 20,
                    info.seconds * 1e3
                );
                Ok(SaveReply {
                    state: VmState::Saved,
                    dir: info.dir,
                    memory: info.memory,
                    memory_written: info.memory_written,
                    pause_ms,
                    save_ms: info.seconds * 1e3,
                })
            }
            Err(e) => {
                resume_if(vm, was_running);
                Err(WorkerError::failed(error_chain(&e)))
            }
        }
    }

    /// `checkpoint-create {name, memory}`.
    pub(crate) fn checkpoint_create(
        &self,
        name: &str,
        memory: bool,
    ) -> Result<CheckpointCreateReply, WorkerError> {
        self.with_store(|store| {
            let was_running = pause_for(&self.vm)?;
            let r = store.create(&self.vm, name, memory);
            resume_if(&self.vm, was_running);
            let c = r.map_err(|e| checkpoint_error(&e))?;
            Ok(CheckpointCreateReply {
                checkpoint: info(&c, store.current()),
            })
        })
    }

    /// `checkpoint-list`.
    pub(crate) fn checkpoint_list(&self) -> Result<CheckpointListReply, WorkerError> {
        self.with_store(|store| {
            Ok(CheckpointListReply {
                current: store.current(),
                checkpoints: store
                    .list()
                    .iter()
                    .map(|c| info(c, store.current()))
                    .collect(),
            })
        })
    }

    /// `checkpoint-revert {id}`: the VM continues from the checkpoint
    /// (paused if it was paused). A checkpoint without memory cannot be
    /// resumed: the disks are switched and the VM is off (state
    /// `stopped`: the worker stops after the reply).
    pub(crate) fn checkpoint_revert(&self, id: u64) -> Result<CheckpointRevertReply, WorkerError> {
        self.with_store(|store| {
            let was_running = pause_for(&self.vm)?;
            match store.revert(&self.vm, id) {
                Ok(outcome) if outcome.memory => {
                    resume_if(&self.vm, was_running);
                    Ok(CheckpointRevertReply {
                        current: id,
                        state: if was_running {
                            VmState::Running
                        } else {
                            VmState::Paused
                        },
                        note: None,
                    })
                }
                Ok(_) => Ok(CheckpointRevertReply {
                    current: id,
                    state: VmState::Stopped,
                    note: Some(
                        "the checkpoint has no memory: the VM is off, start it again to boot from the reverted disks"
                            .into(),
                    ),
                }),
                Err(e) => {
                    resume_if(&self.vm, was_running);
                    Err(checkpoint_error(&e))
                }
            }
        })
    }

    /// `checkpoint-delete {id}`: removes it; its differencing disk is
    /// merged into its parent when nothing else depends on it (online: the
    /// VM pauses for the merge).
    pub(crate) fn checkpoint_delete(&self, id: u64) -> Result<CheckpointDeleteReply, WorkerError> {
        self.with_store(|store| {
            let was_running = pause_for(&self.vm)?;
            let r = store.delete(&self.vm, id);
            resume_if(&self.vm, was_running);
            let merged_disks = r.map_err(|e| checkpoint_error(&e))?;
            Ok(CheckpointDeleteReply {
                deleted: id,
                merged_disks,
            })
        })
    }

    /// `export {dir}`: config, memory and state, disks and checkpoints into
    /// `dir`, with a manifest of checksums; the VM runs on afterwards.
    pub(crate) fn export(&self, dir: &Path) -> Result<ExportReply, WorkerError> {
        let vm = &self.vm;
        let was_running = pause_for(vm)?;
        let r = vm
            .disks()
            .flush_all()
            .map_err(|e| error_chain(&e))
            .and_then(|()| {
                let store = self
                    .store
                    .as_ref()
                    .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()));
                export::export(vm, dir, store.as_deref()).map_err(|e| error_chain(&e))
            });
        resume_if(vm, was_running);
        let m = r.map_err(WorkerError::failed)?;
        Ok(ExportReply {
            dir: dir.to_path_buf(),
            files: m.files.len(),
            bytes: m.files.iter().map(|f| f.size).sum(),
        })
    }
}

/// A saved VM that cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// An export whose files do not match its manifest.
    #[error(transparent)]
    Export(#[from] export::ExportError),
    /// A saved directory that cannot be loaded.
    #[error(transparent)]
    Saved(#[from] saved::SavedError),
}

/// Loads a saved VM to restore it: a saved directory, or an export (whose
/// manifest is checked first, whole).
pub fn load_for_restore(dir: &Path, lazy: bool) -> Result<saved::Loaded, RestoreError> {
    let t0 = Instant::now();
    let saved_dir = if dir.join(export::MANIFEST).exists() {
        export::verify(dir)?;
        dir.join(export::VM_DIR)
    } else {
        dir.to_path_buf()
    };
    let loaded = saved::load(&saved_dir, lazy)?;
    for u in &loaded.unknown {
        eprintln!(
            "tern: warning: {}: {u} is unknown to this Tern (written by {}, format {}); ignored",
            saved_dir.join(saved::STATE_FILE).display(),
            loaded.writer,
            loaded.format
        );
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "saved state loaded");
    Ok(loaded)
}
