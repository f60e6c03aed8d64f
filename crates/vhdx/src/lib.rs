//! The VHDX virtual disk format (MS-VHDX) in pure Rust.
//!
//! Fixed, dynamic and differencing disks; every metadata change (BAT,
//! sector bitmaps, metadata region, region table) goes through the VHDX log
//! and a dirty log is replayed on open. Also trim, resize (grow and shrink),
//! merge of a differencing disk into its parent, conversion and checking.
//!
//! Start with [`Disk::open`] or [`create::create`]. The file layout, one
//! module each: [`header`] (identifier, headers), [`region`] (region table),
//! [`log`], [`metadata`], [`bat`] (block allocation table); [`storage`] is
//! the byte store underneath (a file, memory, or a test's fault injector).
#![forbid(unsafe_code)]

pub mod bat;
pub mod check;
pub mod convert;
pub mod crc;
pub mod create;
mod disk;
#[doc(hidden)]
pub mod fuzzing;
pub mod guid;
pub mod header;
pub mod log;
pub mod merge;
pub mod metadata;
pub mod region;
mod resize;
pub mod storage;

pub use create::{create, CreateOptions};
pub use disk::{parent_candidates, Disk, DiskType, Extent, Info, ParentSource};
pub use guid::Guid;
pub use resize::Shrink;
pub use storage::{MemStorage, Storage};

use std::path::PathBuf;

/// Everything that can go wrong with a VHDX.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error while doing `what`.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Opening a file failed.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A header or the identifier is invalid.
    #[error(transparent)]
    Header(#[from] header::HeaderError),
    /// The region table is invalid.
    #[error(transparent)]
    Region(#[from] region::RegionError),
    /// The metadata region is invalid.
    #[error(transparent)]
    Metadata(#[from] metadata::MetadataError),
    /// The BAT is invalid.
    #[error(transparent)]
    Bat(#[from] bat::BatError),
    /// The log cannot be replayed.
    #[error("log replay failed")]
    Log(#[from] log::LogError),
    /// The file is too short to be a VHDX.
    #[error("file is {0} bytes, too short for a VHDX")]
    TooShort(u64),
    /// A structure lies outside the file.
    #[error("{what} at {offset}+{len} lies outside the file ({file_len} bytes)")]
    OutsideFile {
        /// Which structure.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A write to a disk opened read-only.
    #[error("disk is open read-only")]
    ReadOnly,
    /// An access beyond the disk's end.
    #[error("range {offset}+{len} is beyond the disk's {size} bytes")]
    OutOfRange {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// The disk's size.
        size: u64,
    },
    /// A parameter out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// Shrinking would drop data.
    #[error("shrinking to {new_size} bytes would discard data at offset {offset} (say the blocks are free to force it)")]
    ShrinkWouldDiscard {
        /// The size asked for.
        new_size: u64,
        /// The first offset holding data beyond it.
        offset: u64,
    },
    /// No parent file found.
    #[error("parent disk not found (tried: {tried})")]
    ParentNotFound {
        /// Paths tried.
        tried: String,
    },
    /// The parent found is not the one the child was made from.
    #[error("parent {} has DataWriteGuid {found}, the child expects {expected}", path.display())]
    ParentMismatch {
        /// The candidate parent.
        path: PathBuf,
        /// Its DataWriteGuid.
        found: Guid,
        /// The child's parent_linkage.
        expected: Guid,
    },
    /// Opening the parent failed.
    #[error("parent {}", path.display())]
    Parent {
        /// The parent.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
    /// A differencing disk opened without its parent.
    #[error("differencing disk has no parent attached")]
    NoParent,
    /// An operation that needs a differencing disk.
    #[error("not a differencing disk")]
    NotDifferencing,
}

impl Error {
    pub(crate) fn io(what: &'static str, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}
