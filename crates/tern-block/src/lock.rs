//! Open-file-description locks (`F_OFD_SETLK`) on disk files.
//!
//! A read-write open takes an exclusive lock, a read-only open a shared one,
//! so two workers never write one disk and nobody writes a disk another
//! worker reads. OFD locks belong to the open file (not the process, unlike
//! POSIX record locks), so they are dropped when the file is closed, and a
//! second open in the same process conflicts too. They are host-local: a
//! disk on shared storage is not protected against another host.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::BlockError;

/// Kind of lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Readers only: many may hold it.
    Shared,
    /// One writer, no readers.
    Exclusive,
}

/// Locks all of `file` without waiting; [`BlockError::Locked`] when another
/// open file holds a conflicting lock.
pub fn lock(file: &File, path: &Path, kind: LockKind) -> Result<(), BlockError> {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        LockKind::Shared => libc::F_RDLCK,
        LockKind::Exclusive => libc::F_WRLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0, l_len = 0: the whole file, however it grows; l_pid must
    // be 0 for OFD locks.
    // SAFETY: `file` is an open fd for the duration of the call and `fl`
    // is a valid flock the kernel only reads.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(BlockError::Locked(path.into())),
        _ => Err(BlockError::Lock {
            path: path.into(),
            source: err,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path, write: bool) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .unwrap()
    }

    #[test]
    fn exclusive_conflicts_with_everything_shared_with_exclusive_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        std::fs::write(&p, [0u8; 512]).unwrap();

        let a = open(&p, true);
        lock(&a, &p, LockKind::Exclusive).unwrap();
        let b = open(&p, false);
        let e = lock(&b, &p, LockKind::Shared).unwrap_err();
        assert!(matches!(e, BlockError::Locked(_)), "{e}");
        assert!(e.to_string().contains("locked by another process"), "{e}");
        let c = open(&p, true);
        assert!(matches!(
            lock(&c, &p, LockKind::Exclusive),
            Err(BlockError::Locked(_))
        ));
        drop(a);
        // Closing the holder releases the lock.
        lock(&b, &p, LockKind::Shared).unwrap();
        let d = open(&p, false);
        lock(&d, &p, LockKind::Shared).unwrap();
        assert!(matches!(
            lock(&c, &p, LockKind::Exclusive),
            Err(BlockError::Locked(_))
        ));
        drop((b, d));
        lock(&c, &p, LockKind::Exclusive).unwrap();
    }
}
