//! Where a logical unit's persistent reservation state lives.
//!
//! [`MemoryStore`] keeps it in the process (one worker, saved with the
//! target and migrated with the VM). [`FileStore`] keeps it in a file
//! beside the disk image so that every worker that opens the image (on
//! this host or on another host sharing the storage) sees one state: each
//! change takes an exclusive `flock` on a lock file, rereads the state,
//! applies the change and replaces the state file atomically (write,
//! fsync, rename, fsync of the directory); readers take the lock shared
//! and reread only when the file was replaced since their last read.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::FlockOperation;

use crate::pr::{PrSaved, PrState, SavedPrError};

/// Errors of a reservation store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("reservation store {}: {what} failed", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not valid JSON of the saved form.
    #[error("reservation store {} is not a valid reservation state", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The state is readable but unusable.
    #[error("reservation store {} holds an unusable state", path.display())]
    Saved {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SavedPrError,
    },
    /// A store implementation did not call back (a bug in that store).
    #[error("reservation store did not run the operation")]
    NoCallback,
    /// A saved state given to restore is unusable.
    #[error("saved reservation state is unusable")]
    Restore(#[source] SavedPrError),
}

/// A logical unit's persistent reservation state, possibly shared.
pub trait ReservationStore: Send + Sync {
    /// Calls `f` with the current state.
    fn view(&self, f: &mut dyn FnMut(&PrState)) -> Result<(), StoreError>;
    /// Calls `f` with the latest state, exclusively; when it returns true
    /// the changed state is stored before `update` returns.
    fn update(&self, f: &mut dyn FnMut(&mut PrState) -> bool) -> Result<(), StoreError>;
    /// The state to put in the target's saved state: `Some` when the store
    /// is private to this target (memory), `None` when the state lives
    /// elsewhere and survives the target by itself (a file).
    fn saved(&self) -> Result<Option<PrSaved>, StoreError>;
    /// Puts back what [`ReservationStore::saved`] returned.
    fn restore(&self, saved: &PrSaved) -> Result<(), StoreError>;
}

/// Reads the state through `store`, returning what `f` computes.
pub fn read<R>(
    store: &dyn ReservationStore,
    f: impl FnOnce(&PrState) -> R,
) -> Result<R, StoreError> {
    let mut f = Some(f);
    let mut out = None;
    store.view(&mut |s| {
        if let Some(f) = f.take() {
            out = Some(f(s));
        }
    })?;
    // A store whose `view` did not call back is broken; say so.
    out.ok_or(StoreError::NoCallback)
}

/// Changes the state through `store`: `f` returns whether it changed the
/// state and a result.
pub fn modify<R>(
    store: &dyn ReservationStore,
    f: impl FnOnce(&mut PrState) -> (bool, R),
) -> Result<R, StoreError> {
    let mut f = Some(f);
    let mut out = None;
    store.update(&mut |s| match f.take() {
        Some(f) => {
            let (changed, r) = f(s);
            out = Some(r);
            changed
        }
        None => false,
    })?;
    out.ok_or(StoreError::NoCallback)
}

/// State kept in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<PrState>,
}

impl MemoryStore {
    /// An empty state.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A power loss: registrations survive only with APTPL.
    pub fn power_loss(&self) {
        self.lock().power_loss();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PrState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ReservationStore for MemoryStore {
    fn view(&self, f: &mut dyn FnMut(&PrState)) -> Result<(), StoreError> {
        f(&self.lock());
        Ok(())
    }

    fn update(&self, f: &mut dyn FnMut(&mut PrState) -> bool) -> Result<(), StoreError> {
        let mut g = self.lock();
        let mut copy = g.clone();
        if f(&mut copy) {
            *g = copy;
        }
        Ok(())
    }

    fn saved(&self) -> Result<Option<PrSaved>, StoreError> {
        Ok(Some(self.lock().save()))
    }

    fn restore(&self, saved: &PrSaved) -> Result<(), StoreError> {
        *self.lock() = PrState::restore(saved).map_err(StoreError::Restore)?;
        Ok(())
    }
}

/// What identifies one version of the state file: it is replaced, never
/// rewritten in place, so a new version is a new inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// State kept in `IMAGE.pr` beside a disk image, locked through `IMAGE.pr.lock`.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    lock_path: PathBuf,
    cache: Mutex<Option<(Option<Stamp>, PrState)>>,
}

impl FileStore {
    /// The store of the disk image at `image`.
    pub fn for_image(image: &Path) -> FileStore {
        let mut name = image
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".pr");
        let path = image.with_file_name(&name);
        name.push(".lock");
        let lock_path = image.with_file_name(name);
        FileStore {
            path,
            lock_path,
            cache: Mutex::new(None),
        }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            what,
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self, op: FlockOperation) -> Result<File, StoreError> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock_path)
            .map_err(self.io("opening the lock file"))?;
        rustix::fs::flock(&f, op).map_err(|e| StoreError::Io {
            what: "locking",
            path: self.lock_path.clone(),
            source: e.into(),
        })?;
        // Unlocked when the file is closed.
        Ok(f)
    }

    fn stamp(&self) -> Result<Option<Stamp>, StoreError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(Some(Stamp {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: m.mtime(),
                mtime_nsec: m.mtime_nsec(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("stat")(e)),
        }
    }

    /// Reads the file (the caller holds the lock).
    fn load(&self) -> Result<(Option<Stamp>, PrState), StoreError> {
        let stamp = self.stamp()?;
        if stamp.is_none() {
            return Ok((None, PrState::default()));
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((None, PrState::default()))
            }
            Err(e) => return Err(self.io("reading")(e)),
        };
        let saved: PrSaved =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
                path: self.path.clone(),
                source,
            })?;
        let state = PrState::restore(&saved).map_err(|source| StoreError::Saved {
            path: self.path.clone(),
            source,
        })?;
        Ok((stamp, state))
    }

    /// Replaces the file (the caller holds the lock exclusively).
    fn store(&self, state: &PrState) -> Result<Option<Stamp>, StoreError> {
        let json =
            serde_json::to_vec_pretty(&state.save()).map_err(|source| StoreError::Parse {
                path: self.path.clone(),
                source,
            })?;
        let mut tmp_name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = self.path.with_file_name(tmp_name);
        let mut f = File::create(&tmp).map_err(self.io("creating the new state file"))?;
        f.write_all(&json)
            .map_err(self.io("writing the new state file"))?;
        f.sync_all()
            .map_err(self.io("syncing the new state file"))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(self.io("replacing the state file"))?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("syncing the directory"))?;
        self.stamp()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Option<(Option<Stamp>, PrState)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ReservationStore for FileStore {
    fn view(&self, f: &mut dyn FnMut(&PrState)) -> Result<(), StoreError> {
        let stamp = self.stamp()?;
        let mut cache = self.cache();
        if let Some((s, state)) = cache.as_ref() {
            if *s == stamp {
                f(state);
                return Ok(());
            }
        }
        let _lock = self.lock(FlockOperation::LockShared)?;
        let (stamp, state) = self.load()?;
        f(&state);
        *cache = Some((stamp, state));
        Ok(())
    }

    fn update(&self, f: &mut dyn FnMut(&mut PrState) -> bool) -> Result<(), StoreError> {
        let mut cache = self.cache();
        let _lock = self.lock(FlockOperation::LockExclusive)?;
        let (mut stamp, mut state) = self.load()?;
        if f(&mut state) {
            stamp = self.store(&state)?;
        }
        *cache = Some((stamp, state));
        Ok(())
    }

    fn saved(&self) -> Result<Option<PrSaved>, StoreError> {
        Ok(None)
    }

    fn restore(&self, _saved: &PrSaved) -> Result<(), StoreError> {
        // The file is the state; nothing to put back.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::PrOutAction;
    use crate::nexus::NexusId;
    use crate::pr::PrOutParams;

    fn n(i: u32) -> NexusId {
        NexusId::Virtio {
            vm: format!("vm{i}"),
            controller: 0,
        }
    }

    fn register(store: &dyn ReservationStore, who: u32, key: u64) {
        modify(store, |s| {
            let r = s.out(
                &n(who),
                PrOutAction::RegisterAndIgnore,
                0,
                0,
                &PrOutParams {
                    key: 0,
                    sa_key: key,
                    aptpl: false,
                },
            );
            (r.is_ok(), r)
        })
        .unwrap()
        .unwrap();
    }

    #[test]
    fn two_file_stores_share_one_state() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("shared.vhdx");
        let a = FileStore::for_image(&image);
        let b = FileStore::for_image(&image);
        assert_eq!(read(&a, |s| s.registrations.len()).unwrap(), 0);
        register(&a, 1, 0x11);
        // b had nothing cached; a's change is visible.
        assert_eq!(read(&b, |s| s.key_of(&n(1))).unwrap(), Some(0x11));
        register(&b, 2, 0x22);
        // a's cache is stale: the file was replaced, so a rereads it.
        assert_eq!(read(&a, |s| s.key_of(&n(2))).unwrap(), Some(0x22));
        assert_eq!(read(&a, |s| s.generation).unwrap(), 2);
        assert!(a.saved().unwrap().is_none());
        assert_eq!(a.path(), dir.path().join("shared.vhdx.pr"));
        // A third opener (a restarted worker) finds both.
        let c = FileStore::for_image(&image);
        assert_eq!(read(&c, |s| s.registrations.len()).unwrap(), 2);
    }

    #[test]
    fn concurrent_writers_lose_no_change() {
        // Two "workers" (store instances with their own caches) register
        // 40 initiators each at the same time: every change must survive,
        // which needs the exclusive lock and the reread under it.
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("d.vhdx");
        let threads: Vec<_> = (0..2u32)
            .map(|w| {
                let image = image.clone();
                std::thread::spawn(move || {
                    let s = FileStore::for_image(&image);
                    for i in 0..40 {
                        register(&s, w * 100 + i, (w * 100 + i + 1) as u64);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = FileStore::for_image(&image);
        assert_eq!(read(&s, |s| s.registrations.len()).unwrap(), 80);
        assert_eq!(read(&s, |s| s.generation).unwrap(), 80);
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("d.img");
        let s = FileStore::for_image(&image);
        std::fs::write(s.path(), b"{not json").unwrap();
        assert!(matches!(read(&s, |_| ()), Err(StoreError::Parse { .. })));
        std::fs::write(
            s.path(),
            br#"{"version":7,"generation":0,"registrations":[],"reservation":null,"aptpl":false,"pending":[]}"#,
        )
        .unwrap();
        assert!(matches!(
            read(&s, |_| ()),
            Err(StoreError::Saved {
                source: SavedPrError::Version(7),
                ..
            })
        ));
    }

    #[test]
    fn memory_store_saves_and_restores() {
        let m = MemoryStore::new();
        register(&m, 1, 5);
        let saved = m.saved().unwrap().unwrap();
        let m2 = MemoryStore::new();
        m2.restore(&saved).unwrap();
        assert_eq!(read(&m2, |s| s.key_of(&n(1))).unwrap(), Some(5));
        m2.power_loss();
        assert_eq!(read(&m2, |s| s.key_of(&n(1))).unwrap(), None);
        // A refused change stores nothing.
        let r = modify(&m, |s| {
            s.registrations.clear();
            (false, ())
        });
        assert!(r.is_ok());
        assert_eq!(read(&m, |s| s.key_of(&n(1))).unwrap(), Some(5));
    }
}
