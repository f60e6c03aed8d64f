//! Checkpoints: a tree of saved points of one VM, with disks switched to
//! differencing children at each point.
//!
//! ```text
//! STORE/tree.bin              header + CheckpointTree
//! STORE/<id>/state.bin        the VM's state at the checkpoint
//! STORE/<id>/memory.bin       its memory (when taken with memory)
//! STORE/disks/disk<i>-<n>.avhdx  differencing disks the VM ran on
//! ```
//!
//! Taking a checkpoint freezes each disk's current image (it is never
//! written again while a checkpoint names it) and moves the VM onto a new
//! differencing child of it. Reverting moves the VM onto a new child of
//! the checkpoint's frozen image (the abandoned child is deleted) and
//! loads its memory and state. Deleting a checkpoint merges the child the
//! VM runs on into the frozen image when nothing else depends on it (the
//! VM pauses for the merge), and otherwise keeps the image as the common
//! parent of the remaining branches.

use std::path::{Path, PathBuf};

use tern_vmm::Vm;

use crate::file::{self, FileError};
use crate::proto::{Checkpoint, CheckpointTree};
use crate::saved::{self, SavedError};

/// The tree file's name.
pub const TREE_FILE: &str = "tree.bin";
/// The folder of differencing disks.
pub const DISKS_DIR: &str = "disks";

/// Errors of checkpoint operations.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store cannot be used.
    #[error("checkpoint store {}: cannot {what}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was attempted.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The tree file.
    #[error(transparent)]
    File(#[from] FileError),
    /// Saving or loading a checkpoint's state.
    #[error(transparent)]
    Saved(#[from] SavedError),
    /// No such checkpoint.
    #[error("no checkpoint {0}")]
    NotFound(u64),
    /// A disk cannot be checkpointed.
    #[error("disk {index} ({}) is raw: checkpoints need VHDX disks", path.display())]
    RawDisk {
        /// The disk.
        index: usize,
        /// Its image.
        path: PathBuf,
    },
    /// A differencing disk could not be made or merged.
    #[error("disk {index}: cannot {what} {}", path.display())]
    Vhdx {
        /// The disk.
        index: usize,
        /// What was attempted.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: vhdx::Error,
    },
    /// Switching the VM to another image failed.
    #[error("cannot switch the VM's disk")]
    Switch(#[source] tern_vmm::devices::DiskError),
    /// The checkpoint does not fit this VM.
    #[error("checkpoint {id} does not fit this VM: {why}")]
    Mismatch {
        /// The checkpoint.
        id: u64,
        /// What differs.
        why: String,
    },
    /// Loading the state into the VM failed.
    #[error("cannot load checkpoint {0} into the VM")]
    Load(u64, #[source] tern_vmm::VmError),
    /// A name is empty.
    #[error("a checkpoint needs a name")]
    NoName,
}

/// What a revert did.
#[derive(Clone, Copy, Debug)]
pub struct RevertOutcome {
    /// Memory and state were loaded (the VM can continue); otherwise only
    /// the disks were reverted and the VM must boot again.
    pub memory: bool,
}

/// A VM's checkpoint store.
pub struct Store {
    dir: PathBuf,
    tree: CheckpointTree,
    /// Images the VM ran on that this store created (deleted when
    /// abandoned).
    revert_seq: u64,
}

fn io<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io {
        path: path.into(),
        what,
        source,
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

impl Store {
    /// Opens the store in `dir`, creating it when missing.
    pub fn open(dir: &Path) -> Result<Store, CheckpointError> {
        std::fs::create_dir_all(dir.join(DISKS_DIR)).map_err(io(dir, "create"))?;
        let dir = std::fs::canonicalize(dir).map_err(io(dir, "open"))?;
        let tree_path = dir.join(TREE_FILE);
        let tree = if tree_path.exists() {
            let r = file::read::<CheckpointTree>(&tree_path)?;
            for u in &r.unknown {
                eprintln!(
                    "tern: warning: {}: {u} is unknown to this Tern; ignored",
                    tree_path.display()
                );
            }
            r.message
        } else {
            CheckpointTree {
                next_id: 1,
                ..Default::default()
            }
        };
        Ok(Store {
            dir,
            tree,
            revert_seq: 0,
        })
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint the VM derives from (0: none).
    pub fn current(&self) -> u64 {
        self.tree.current
    }

    /// Every checkpoint, oldest first.
    pub fn list(&self) -> &[Checkpoint] {
        &self.tree.checkpoints
    }

    /// A disk path as the tree records it: relative ones (in imported
    /// stores) are inside the store.
    pub fn resolve(&self, recorded: &str) -> PathBuf {
        self.dir.join(recorded)
    }

    /// The folder of checkpoint `id`.
    pub fn checkpoint_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn find(&self, id: u64) -> Result<&Checkpoint, CheckpointError> {
        self.tree
            .checkpoints
            .iter()
            .find(|c| c.id == id)
            .ok_or(CheckpointError::NotFound(id))
    }

    fn save_tree(&self) -> Result<(), CheckpointError> {
        Ok(file::write(&self.dir.join(TREE_FILE), &self.tree)?)
    }

    /// Makes a differencing child of `parent` in the disk folder and moves
    /// disk `index` of the VM onto it.
    fn branch(
        &mut self,
        vm: &Vm,
        index: usize,
        parent: &Path,
        tag: &str,
    ) -> Result<PathBuf, CheckpointError> {
        let child = self
            .dir
            .join(DISKS_DIR)
            .join(format!("disk{index}-{tag}.avhdx"));
        let _ = std::fs::remove_file(&child);
        let d =
            vhdx::create(&child, &vhdx::CreateOptions::differencing(parent)).map_err(|source| {
                CheckpointError::Vhdx {
                    index,
                    what: "create a differencing disk at",
                    path: child.clone(),
                    source,
                }
            })?;
        d.close().map_err(|source| CheckpointError::Vhdx {
            index,
            what: "close",
            path: child.clone(),
            source,
        })?;
        if let Err(e) = vm.disks().switch(index, &child) {
            let _ = std::fs::remove_file(&child);
            return Err(CheckpointError::Switch(e));
        }
        Ok(child)
    }

    /// Whether `path` is a file this store made and no checkpoint keeps.
    fn disposable(&self, path: &Path) -> bool {
        path.starts_with(self.dir.join(DISKS_DIR))
            && !self
                .tree
                .checkpoints
                .iter()
                .any(|c| c.disks.iter().any(|d| same_file(&self.resolve(d), path)))
    }

    /// Takes a checkpoint of the paused VM: state (and memory when
    /// `memory`), disks frozen and the VM moved onto new children.
    pub fn create(
        &mut self,
        vm: &Vm,
        name: &str,
        memory: bool,
    ) -> Result<Checkpoint, CheckpointError> {
        if name.trim().is_empty() {
            return Err(CheckpointError::NoName);
        }
        let status = vm.disks().status();
        for (index, d) in status.iter().enumerate() {
            if d.format != tern_block::DiskFormat::Vhdx {
                return Err(CheckpointError::RawDisk {
                    index,
                    path: d.path.clone(),
                });
            }
        }
        let disks: Vec<PathBuf> = status.into_iter().map(|d| d.path).collect();
        vm.disks().flush_all().map_err(CheckpointError::Switch)?;
        let id = self.tree.next_id.max(1);
        let cdir = self.checkpoint_dir(id);
        let _ = std::fs::remove_dir_all(&cdir);
        saved::save_into(vm, &cdir, memory)?;
        let mut switched = Vec::new();
        for (index, path) in disks.iter().enumerate() {
            match self.branch(vm, index, path, &id.to_string()) {
                Ok(child) => switched.push(child),
                Err(e) => {
                    // Put the disks already moved back on their images.
                    for (i, child) in switched.iter().enumerate() {
                        let _ = vm.disks().switch(i, &disks[i]);
                        let _ = std::fs::remove_file(child);
                    }
                    let _ = std::fs::remove_dir_all(&cdir);
                    return Err(e);
                }
            }
        }
        let c = Checkpoint {
            id,
            name: name.to_string(),
            parent: self.tree.current,
            created_unix_ms: saved::now_ms(),
            memory,
            disks: disks.iter().map(|p| p.display().to_string()).collect(),
        };
        self.tree.checkpoints.push(c.clone());
        self.tree.current = id;
        self.tree.next_id = id + 1;
        self.save_tree()?;
        Ok(c)
    }

    /// Reverts the paused VM to checkpoint `id`.
    pub fn revert(&mut self, vm: &Vm, id: u64) -> Result<RevertOutcome, CheckpointError> {
        let c = self.find(id)?.clone();
        let now = vm.disks().status();
        if c.disks.len() != now.len() {
            return Err(CheckpointError::Mismatch {
                id,
                why: format!("it has {} disks, the VM {}", c.disks.len(), now.len()),
            });
        }
        let loaded = if c.memory {
            let l = saved::load(&self.checkpoint_dir(id), false)?;
            if l.config.vcpus != vm.config().vcpus || l.config.memory != vm.config().memory {
                return Err(CheckpointError::Mismatch {
                    id,
                    why: "vCPUs or memory size differ".into(),
                });
            }
            Some(l)
        } else {
            None
        };
        self.revert_seq += 1;
        let tag = format!("{id}r{}-{}", self.revert_seq, saved::now_ms());
        for (index, frozen) in c.disks.iter().enumerate() {
            let old = now[index].path.clone();
            let frozen = self.resolve(frozen);
            self.branch(vm, index, &frozen, &tag)?;
            if self.disposable(&old) {
                let _ = std::fs::remove_file(&old);
            }
        }
        if let Some(l) = &loaded {
            let mem = match &l.config.memory_source {
                tern_vmm::MemorySource::File { path, .. } => path.clone(),
                _ => unreachable!("load() always sets a memory file"),
            };
            vm.load_state(&l.state, &mem)
                .map_err(|e| CheckpointError::Load(id, e))?;
        }
        self.tree.current = id;
        self.save_tree()?;
        Ok(RevertOutcome { memory: c.memory })
    }

    /// Deletes checkpoint `id` (VM paused). Returns how many disks were
    /// merged into their frozen image.
    pub fn delete(&mut self, vm: &Vm, id: u64) -> Result<usize, CheckpointError> {
        let c = self.find(id)?.clone();
        // Children of the deleted checkpoint now hang from its parent.
        for k in self.tree.checkpoints.iter_mut() {
            if k.parent == id {
                k.parent = c.parent;
            }
        }
        self.tree.checkpoints.retain(|k| k.id != id);
        if self.tree.current == id {
            self.tree.current = c.parent;
        }
        let mut merged = 0;
        let now = vm.disks().status();
        for (index, frozen) in c.disks.iter().enumerate() {
            let frozen = &self.resolve(frozen);
            let Some(live) = now.get(index).map(|d| d.path.clone()) else {
                continue;
            };
            if !self.only_child_is_live(frozen, &live) {
                continue;
            }
            // The VM's image holds the changes since the checkpoint:
            // fold them into the frozen image and run on that.
            vm.disks().flush_all().map_err(CheckpointError::Switch)?;
            vm.disks()
                .close_one(index)
                .map_err(CheckpointError::Switch)?;
            let r = vhdx::merge::merge(&live);
            match r {
                Ok(_) => {
                    vm.disks()
                        .switch(index, frozen)
                        .map_err(CheckpointError::Switch)?;
                    let _ = std::fs::remove_file(&live);
                    merged += 1;
                }
                Err(source) => {
                    // The child is intact: go on running on it.
                    let _ = vm.disks().switch(index, &live);
                    return Err(CheckpointError::Vhdx {
                        index,
                        what: "merge",
                        path: live,
                        source,
                    });
                }
            }
        }
        self.save_tree()?;
        let _ = std::fs::remove_dir_all(self.checkpoint_dir(id));
        Ok(merged)
    }

    /// True when no remaining checkpoint keeps `frozen` or a child of it
    /// other than `live`, and `live` (a file this store made) is a child
    /// of `frozen`.
    fn only_child_is_live(&self, frozen: &Path, live: &Path) -> bool {
        if !self.disposable(live) {
            return false;
        }
        let parent_of = |p: &Path| -> Option<PathBuf> {
            let d = vhdx::Disk::open(p, false).ok()?;
            d.parent_path().map(Path::to_path_buf)
        };
        if !parent_of(live).is_some_and(|pp| same_file(&pp, frozen)) {
            return false;
        }
        let kept: Vec<PathBuf> = self
            .tree
            .checkpoints
            .iter()
            .flat_map(|c| &c.disks)
            .map(|d| self.resolve(d))
            .collect();
        // Another checkpoint froze this very image, or a child of it.
        !kept
            .iter()
            .any(|k| same_file(k, frozen) || parent_of(k).is_some_and(|pp| same_file(&pp, frozen)))
    }
}
