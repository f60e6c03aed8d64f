//! Tern's block layer: disk backends under the virtio-blk device.
//!
//! A [`BlockBackend`] is a byte-addressed disk: [`raw::RawDisk`] (a plain
//! file) or [`vhdx_disk::VhdxDisk`] (any VHDX, differencing chains
//! included). [`open`] picks one, takes an OFD lock on the file
//! ([`lock`]), and refuses a disk another process holds. [`qos`] throttles
//! in Hyper-V's normalized IOPS and watches minimum reservations;
//! [`ResizePolicy`] says when a running disk may shrink.
//!
//! A shared open ([`OpenOptions::shared`]) lets several workers write one
//! image at once (a shared disk whose users arbitrate with SCSI
//! persistent reservations): it takes a shared lock, which conflicts with
//! every exclusive (read-write) open but not with other shared or
//! read-only opens. Only images that need no metadata writes can be
//! shared: raw files, whose size is then fixed (resize is refused, since
//! the other users would not see it). VHDX images are refused: a
//! writable VHDX updates its headers at its first write and its BAT and
//! log when blocks are allocated, and other users' cached copies of them
//! would go stale (docs/scsi.md).
//!
//! Every backend is `Send + Sync` and takes `&self`: the device model, the
//! control socket (resize) and a QoS timer thread may all hold it.

pub mod lock;
pub mod qos;
pub mod raw;
pub mod vhdx_disk;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Sector size the guest addresses the disk in (virtio-blk's unit).
pub const SECTOR_SIZE: u64 = 512;

/// Errors of the block layer.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk file does not exist.
    #[error("disk {} not found", .0.display())]
    NotFound(PathBuf),
    /// The disk file cannot be opened.
    #[error("cannot open disk {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A shared open of a format that cannot be shared.
    #[error("disk {} cannot be opened shared: only raw images can (a VHDX writes its headers, BAT and log, which other users cache); convert it with `tern disk convert` to raw", .0.display())]
    SharedUnsupported(PathBuf),
    /// Resizing a disk opened shared.
    #[error("disk {} is open shared and cannot be resized (its other users would not see the new size)", .0.display())]
    SharedResize(PathBuf),
    /// Another process holds a conflicting lock.
    #[error("disk {} is locked by another process (it is in use by another VM worker on this host)", .0.display())]
    Locked(PathBuf),
    /// Taking the lock failed for another reason.
    #[error("cannot lock disk {}", path.display())]
    Lock {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VHDX file is invalid or cannot be opened.
    #[error("cannot open VHDX disk {}", path.display())]
    Vhdx {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: vhdx::Error,
    },
    /// A VHDX operation failed on an open disk.
    #[error("VHDX {what} failed")]
    VhdxIo {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: vhdx::Error,
    },
    /// An I/O error.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An access beyond the disk's end.
    #[error("access {offset}+{len} is beyond the disk's end ({capacity} bytes)")]
    OutOfRange {
        /// Byte offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Disk size.
        capacity: u64,
    },
    /// A write, discard or resize of a read-only disk.
    #[error("disk is read-only")]
    ReadOnly,
    /// A size that is zero or not a multiple of the sector size.
    #[error("size {0} is not a positive multiple of {SECTOR_SIZE} bytes")]
    BadSize(u64),
    /// The disk was closed.
    #[error("disk is closed")]
    Closed,
    /// A shrink that would cut data the guest still uses.
    #[error("cannot shrink to {new_size} bytes: the guest still uses the disk up to byte {in_use_end} (release the tail in the guest first)")]
    ShrinkInUse {
        /// Size asked for.
        new_size: u64,
        /// End of the range the guest uses.
        in_use_end: u64,
    },
    /// A shrink that would cut allocated data.
    #[error("cannot shrink to {new_size} bytes: data is allocated at byte {offset} (trim it in the guest first)")]
    ShrinkAllocated {
        /// Size asked for.
        new_size: u64,
        /// First allocated byte beyond the new end.
        offset: u64,
    },
}

impl BlockError {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BlockError {
        move |source| BlockError::Io { what, source }
    }
}

/// The on-disk format of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// A plain image: byte `n` of the file is byte `n` of the disk.
    Raw,
    /// A VHDX file (fixed, dynamic or differencing).
    Vhdx,
}

impl DiskFormat {
    /// The format's name (`raw`, `vhdx`).
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Vhdx => "vhdx",
        }
    }

    /// The format a file name says: `.vhdx`/`.avhdx` is VHDX, anything else
    /// raw. By name, not content: a guest can write a VHDX signature into a
    /// raw disk, and the next open must not read it as one.
    pub fn from_path(path: &Path) -> DiskFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("vhdx") || e.eq_ignore_ascii_case("avhdx") => {
                DiskFormat::Vhdx
            }
            _ => DiskFormat::Raw,
        }
    }
}

/// What limits a shrink of a running disk beyond the backend's own rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResizePolicy {
    /// End of the range the guest says it uses (bytes); a shrink below it is
    /// refused. `None` when the guest does not report one.
    pub guest_in_use_end: Option<u64>,
}

impl ResizePolicy {
    /// Checks the generic rules: a positive sector multiple, and not below
    /// what the guest uses.
    pub fn check(&self, current: u64, new_size: u64) -> Result<(), BlockError> {
        if new_size == 0 || !new_size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::BadSize(new_size));
        }
        if new_size < current {
            if let Some(end) = self.guest_in_use_end {
                if new_size < end {
                    return Err(BlockError::ShrinkInUse {
                        new_size,
                        in_use_end: end,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A disk addressed in bytes. Implementations check every range against
/// the current capacity; none panics on guest-controlled input.
pub trait BlockBackend: Send + Sync {
    /// Current size in bytes (a multiple of [`SECTOR_SIZE`]).
    fn capacity(&self) -> u64;
    /// True when writes, discards and resizes are refused.
    fn read_only(&self) -> bool;
    /// A stable id for the disk (at most 20 bytes for virtio's GET_ID).
    fn id(&self) -> &str;
    /// The format.
    fn format(&self) -> DiskFormat;
    /// Fills `buf` from byte `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError>;
    /// Writes `buf` at byte `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError>;
    /// Makes completed writes durable.
    fn flush(&self) -> Result<(), BlockError>;
    /// Tells the backend `[offset, offset+len)` is unused; it may free it.
    /// Reads of a discarded range return zeros or the old data.
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError>;
    /// Changes the size. A shrink is refused when it would cut data the
    /// guest uses (`policy`) or allocated data.
    fn resize(&self, new_size: u64, policy: &ResizePolicy) -> Result<(), BlockError>;
    /// Flushes and closes the file cleanly (a VHDX's log is emptied so
    /// other tools can open it); later I/O fails with [`BlockError::Closed`].
    /// The process may exit without running destructors, so the VMM calls
    /// this when the VM ends.
    fn close(&self) -> Result<(), BlockError> {
        self.flush()
    }
}

/// How to open a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    /// The file.
    pub path: PathBuf,
    /// Open read-only (shared lock) instead of read-write (exclusive lock).
    pub read_only: bool,
    /// Format; `None` decides by file name ([`DiskFormat::from_path`]).
    pub format: Option<DiskFormat>,
    /// Read-write with a shared lock: other shared opens may write too
    /// (see the crate docs); raw images only.
    pub shared: bool,
}

impl OpenOptions {
    /// Read-write, format by name.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        OpenOptions {
            path: path.into(),
            read_only: false,
            format: None,
            shared: false,
        }
    }

    /// Sets shared (read-write under a shared lock).
    pub fn shared(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// Sets read-only.
    pub fn read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }
}

/// Opens and locks a disk.
pub fn open(opts: &OpenOptions) -> Result<Arc<dyn BlockBackend>, BlockError> {
    let format = opts
        .format
        .unwrap_or_else(|| DiskFormat::from_path(&opts.path));
    if opts.shared {
        return match format {
            DiskFormat::Raw => Ok(Arc::new(raw::RawDisk::open_shared(
                &opts.path,
                opts.read_only,
            )?)),
            DiskFormat::Vhdx => Err(BlockError::SharedUnsupported(opts.path.clone())),
        };
    }
    Ok(match format {
        DiskFormat::Raw => Arc::new(raw::RawDisk::open(&opts.path, opts.read_only)?),
        DiskFormat::Vhdx => Arc::new(vhdx_disk::VhdxDisk::open(&opts.path, opts.read_only)?),
    })
}

/// Checks `[offset, offset+len)` against `capacity`.
pub(crate) fn check_range(offset: u64, len: u64, capacity: u64) -> Result<(), BlockError> {
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(BlockError::OutOfRange {
            offset,
            len,
            capacity,
        }),
    }
}

/// Opens `path` for a backend, turning "no such file" into [`BlockError::NotFound`].
pub(crate) fn open_file(path: &Path, read_only: bool) -> Result<std::fs::File, BlockError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                BlockError::NotFound(path.into())
            } else {
                BlockError::Open {
                    path: path.into(),
                    source,
                }
            }
        })
}

/// A 20-byte id from a path: the file name, cut to fit (virtio-blk ids are
/// 20 bytes, not NUL-terminated when full).
pub(crate) fn id_from_path(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut id = String::new();
    for c in name.chars() {
        if id.len() + c.len_utf8() > 20 {
            break;
        }
        id.push(c);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_by_name() {
        assert_eq!(
            DiskFormat::from_path(Path::new("a/b.VHDX")),
            DiskFormat::Vhdx
        );
        assert_eq!(
            DiskFormat::from_path(Path::new("b.avhdx")),
            DiskFormat::Vhdx
        );
        assert_eq!(DiskFormat::from_path(Path::new("b.img")), DiskFormat::Raw);
        assert_eq!(DiskFormat::from_path(Path::new("vhdx")), DiskFormat::Raw);
    }

    #[test]
    fn policy_refuses_shrink_below_guest_use() {
        let p = ResizePolicy {
            guest_in_use_end: Some(8 << 20),
        };
        assert!(p.check(16 << 20, 32 << 20).is_ok());
        assert!(p.check(16 << 20, 8 << 20).is_ok());
        assert!(matches!(
            p.check(16 << 20, 4 << 20),
            Err(BlockError::ShrinkInUse { .. })
        ));
        assert!(matches!(p.check(16 << 20, 0), Err(BlockError::BadSize(0))));
        assert!(matches!(
            p.check(16 << 20, 1000),
            Err(BlockError::BadSize(1000))
        ));
        assert!(ResizePolicy::default().check(16 << 20, 512).is_ok());
    }

    #[test]
    fn ids_fit_twenty_bytes() {
        assert_eq!(id_from_path(Path::new("/x/disk.img")), "disk.img");
        assert_eq!(
            id_from_path(Path::new("/x/a-very-long-disk-name.vhdx")),
            "a-very-long-disk-nam"
        );
    }

    #[test]
    fn ranges_are_checked_without_overflow() {
        assert!(check_range(0, 512, 512).is_ok());
        assert!(check_range(1, 512, 512).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }
}
