//! Tern's block layer: disk backends under the virtio-blk device.
//!
//! A [`BlockBackend`] is a byte-addressed disk: [`raw::RawDisk`] (a plain
//! file) or [`vhdx_disk::VhdxDisk`] (any VHDX, differencing chains
//! included). [`open`] picks one, takes an OFD lock on the file
//! ([`lock`]), and refuses a disk another process holds. [`qos`] throttles
//! in Hyper-V's normalized IOPS and watches minimum reservations;
//! [`ResizePolicy`] says when a running disk may shrink.
//!
//! Mirroring a running disk (storage live migration, shared-nothing
//! migration) uses [`dirty`] (the blocks the guest wrote since a point),
//! [`BlockBackend::allocated`] (what a first full pass must copy) and
//! [`create()`] with a [`DiskLayout`] (an empty copy of the same format
//! and block size, so a dynamic VHDX stays sparse).
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

pub mod create;
pub mod dirty;
pub mod lock;
pub mod qos;
pub mod raw;
pub mod vhdx_disk;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use create::create;
pub use dirty::{DirtyBitmap, DirtyLog};

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
    /// A new disk file cannot be created.
    #[error("cannot create disk {}", path.display())]
    Create {
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

/// The kind of a VHDX file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VhdxType {
    /// Blocks allocated on first write.
    Dynamic,
    /// Every block allocated up front.
    Fixed,
    /// Blocks not written here come from a parent chain.
    Differencing,
}

impl VhdxType {
    /// Lower-case name (`dynamic`, `fixed`, `differencing`).
    pub fn name(self) -> &'static str {
        match self {
            VhdxType::Dynamic => "dynamic",
            VhdxType::Fixed => "fixed",
            VhdxType::Differencing => "differencing",
        }
    }
}

/// How a disk is laid out: enough to create a copy of the same format,
/// size and block size ([`create()`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLayout {
    /// The format.
    pub format: DiskFormat,
    /// Size the guest sees, in bytes.
    pub capacity: u64,
    /// A VHDX's payload block size.
    pub vhdx_block_size: Option<u32>,
    /// Logical sector size in bytes.
    pub logical_sector: u32,
    /// Physical sector size in bytes.
    pub physical_sector: u32,
    /// A VHDX's kind.
    pub vhdx_type: Option<VhdxType>,
}

impl DiskLayout {
    /// A raw image of `capacity` bytes (512-byte sectors, 4 KiB physical).
    pub fn raw(capacity: u64) -> DiskLayout {
        DiskLayout {
            format: DiskFormat::Raw,
            capacity,
            vhdx_block_size: None,
            logical_sector: 512,
            physical_sector: 4096,
            vhdx_type: None,
        }
    }

    /// The same disk in `format`: sizes kept; a new VHDX is dynamic with
    /// the VHDX default block size unless this one was a VHDX already.
    pub fn with_format(self, format: DiskFormat) -> DiskLayout {
        if format == self.format {
            return self;
        }
        match format {
            DiskFormat::Raw => DiskLayout {
                logical_sector: self.logical_sector,
                physical_sector: self.physical_sector,
                ..DiskLayout::raw(self.capacity)
            },
            DiskFormat::Vhdx => DiskLayout {
                format,
                vhdx_block_size: None,
                vhdx_type: Some(VhdxType::Dynamic),
                ..self
            },
        }
    }
}

/// Merges `ranges` into ascending, disjoint, non-adjacent ones.
pub fn merge_ranges(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
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
    /// The byte ranges that may hold data, ascending and disjoint; the
    /// rest reads as zeros. A copy that starts from zeros needs only
    /// these. The default is the whole disk.
    fn allocated(&self) -> Result<Vec<Range<u64>>, BlockError> {
        let cap = self.capacity();
        Ok(std::iter::once(0..cap).filter(|r| !r.is_empty()).collect())
    }
    /// The layout ([`DiskLayout`]); the default is a raw-like one of
    /// this format and capacity.
    fn layout(&self) -> DiskLayout {
        DiskLayout {
            format: self.format(),
            ..DiskLayout::raw(self.capacity())
        }
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
    fn ranges_merge() {
        assert_eq!(
            merge_ranges(vec![10..20, 0..5, 5..7, 15..30, 40..40, 50..60]),
            vec![0..7, 10..30, 50..60]
        );
        assert!(merge_ranges(Vec::new()).is_empty());
    }

    #[test]
    fn layout_changes_format() {
        let raw = DiskLayout::raw(1 << 30);
        let v = raw.with_format(DiskFormat::Vhdx);
        assert_eq!(v.vhdx_type, Some(VhdxType::Dynamic));
        assert_eq!((v.capacity, v.vhdx_block_size), (1 << 30, None));
        assert_eq!(v.with_format(DiskFormat::Raw), raw);
        assert_eq!(raw.with_format(DiskFormat::Raw), raw);
    }

    #[test]
    fn ranges_are_checked_without_overflow() {
        assert!(check_range(0, 512, 512).is_ok());
        assert!(check_range(1, 512, 512).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
    }
}
