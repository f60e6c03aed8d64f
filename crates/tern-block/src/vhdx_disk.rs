//! VHDX disks (fixed, dynamic, differencing) through the `vhdx` crate.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use vhdx::{Disk, DiskType, ParentSource, Shrink};

use crate::lock::{self, LockKind};
use crate::{
    check_range, BlockBackend, BlockError, DiskFormat, DiskLayout, ResizePolicy, VhdxType,
};

/// An open VHDX, locked for the life of the value (and its direct parent
/// with a shared lock, so nobody writes it under a child).
pub struct VhdxDisk {
    // `None` once closed.
    disk: Mutex<Option<Disk>>,
    path: PathBuf,
    read_only: bool,
    id: String,
    _parent_lock: Option<File>,
}

fn vhdx_err(what: &'static str) -> impl FnOnce(vhdx::Error) -> BlockError {
    move |source| match source {
        vhdx::Error::OutOfRange { offset, len, size } => BlockError::OutOfRange {
            offset,
            len,
            capacity: size,
        },
        vhdx::Error::ReadOnly => BlockError::ReadOnly,
        vhdx::Error::ShrinkWouldDiscard { new_size, offset } => {
            BlockError::ShrinkAllocated { new_size, offset }
        }
        source => BlockError::VhdxIo { what, source },
    }
}

impl VhdxDisk {
    /// Opens and locks the VHDX at `path` with its parent chain. A dirty
    /// log is replayed (in memory when read-only).
    pub fn open(path: &Path, read_only: bool) -> Result<VhdxDisk, BlockError> {
        let file = crate::open_file(path, read_only)?;
        let kind = if read_only {
            LockKind::Shared
        } else {
            LockKind::Exclusive
        };
        // Lock before reading anything: another writer may be mid-update.
        lock::lock(&file, path, kind)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let disk = Disk::open_storage(Box::new(file), !read_only, ParentSource::Resolve(dir))
            .map_err(|source| BlockError::Vhdx {
                path: path.into(),
                source,
            })?;
        let parent_lock = match disk.parent_path() {
            Some(pp) => {
                let f = crate::open_file(pp, true)?;
                lock::lock(&f, pp, LockKind::Shared)?;
                Some(f)
            }
            None => None,
        };
        Ok(VhdxDisk {
            disk: Mutex::new(Some(disk)),
            path: path.into(),
            read_only,
            id: crate::id_from_path(path),
            _parent_lock: parent_lock,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Disk) -> Result<T, vhdx::Error>,
    ) -> Result<T, BlockError> {
        let mut g = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        let d = g.as_mut().ok_or(BlockError::Closed)?;
        f(d).map_err(vhdx_err(what))
    }
}

impl BlockBackend for VhdxDisk {
    fn capacity(&self) -> u64 {
        let g = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map_or(0, Disk::virtual_size)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn format(&self) -> DiskFormat {
        DiskFormat::Vhdx
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.with("read", |d| d.read_at(buf, offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        self.with("write", |d| d.write_at(buf, offset))
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.with("flush", Disk::flush)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let cap = self.capacity();
        check_range(offset, len, cap)?;
        self.with("trim", |d| d.trim(offset, len))
    }

    fn resize(&self, new_size: u64, policy: &ResizePolicy) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut g = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        let d = g.as_mut().ok_or(BlockError::Closed)?;
        policy.check(d.virtual_size(), new_size)?;
        d.resize(new_size, Shrink::Refuse)
            .map_err(vhdx_err("resize"))
    }

    /// The blocks that hold data anywhere in the chain: this file's
    /// stored blocks and, for a differencing disk, every ancestor's (what
    /// a flat copy of what the guest reads needs). Blocks the BAT says are
    /// zero, and unallocated ones, are left out; a block a child zeroes
    /// over a parent's data is listed (it reads zeros, a harmless extra).
    fn allocated(&self) -> Result<Vec<std::ops::Range<u64>>, BlockError> {
        let (mut ranges, mut parent) = {
            let mut g = self.disk.lock().unwrap_or_else(|p| p.into_inner());
            let d = g.as_mut().ok_or(BlockError::Closed)?;
            (
                data_extents(d).map_err(vhdx_err("listing extents"))?,
                d.parent_path().map(Path::to_path_buf),
            )
        };
        // Each ancestor is opened read-only on its own: its extents are
        // what its file defines. We hold the direct parent's shared lock;
        // nobody may write any of them under a child.
        while let Some(pp) = parent {
            let mut d = Disk::open(&pp, false).map_err(|source| BlockError::Vhdx {
                path: pp.clone(),
                source,
            })?;
            ranges.extend(data_extents(&mut d).map_err(vhdx_err("listing extents"))?);
            parent = d.parent_path().map(Path::to_path_buf);
        }
        Ok(crate::merge_ranges(ranges))
    }

    fn layout(&self) -> DiskLayout {
        let g = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        let Some(d) = g.as_ref() else {
            return DiskLayout {
                format: DiskFormat::Vhdx,
                ..DiskLayout::raw(0)
            };
        };
        let info = d.info();
        DiskLayout {
            format: DiskFormat::Vhdx,
            capacity: info.virtual_size,
            vhdx_block_size: Some(info.block_size),
            logical_sector: info.logical_sector_size,
            physical_sector: info.physical_sector_size,
            vhdx_type: Some(match info.disk_type {
                DiskType::Dynamic => VhdxType::Dynamic,
                DiskType::Fixed => VhdxType::Fixed,
                DiskType::Differencing => VhdxType::Differencing,
            }),
        }
    }

    fn close(&self) -> Result<(), BlockError> {
        let taken = self.disk.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(d) => d.close().map_err(vhdx_err("close")),
            None => Ok(()),
        }
    }
}

/// The runs `d`'s file stores data for (not the BAT's zero runs).
fn data_extents(d: &mut Disk) -> Result<Vec<std::ops::Range<u64>>, vhdx::Error> {
    Ok(d.extents()?
        .into_iter()
        .filter(|e| !e.zero)
        .map(|e| e.offset..e.offset + e.length)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhdx::CreateOptions;

    fn dynamic(dir: &Path, name: &str, size: u64) -> PathBuf {
        let p = dir.join(name);
        vhdx::create(&p, &CreateOptions::dynamic(size).block_size(1 << 20))
            .unwrap()
            .close()
            .unwrap();
        p
    }

    #[test]
    fn round_trip_survives_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dynamic(dir.path(), "d.vhdx", 16 << 20);
        let d = VhdxDisk::open(&p, false).unwrap();
        assert_eq!(d.capacity(), 16 << 20);
        assert_eq!(d.format(), DiskFormat::Vhdx);
        assert_eq!(d.layout().vhdx_block_size, Some(1 << 20));
        assert_eq!(d.layout().vhdx_type, Some(VhdxType::Dynamic));
        assert!(d.allocated().unwrap().is_empty());
        let data: Vec<u8> = (0..12288).map(|i| (i % 251) as u8).collect();
        d.write_at(&data, (3 << 20) - 4096).unwrap();
        assert_eq!(d.allocated().unwrap(), vec![2 << 20..4 << 20]);
        d.flush().unwrap();
        assert!(matches!(
            d.read_at(&mut [0u8; 512], 16 << 20),
            Err(BlockError::OutOfRange { .. })
        ));
        d.close().unwrap();
        assert!(matches!(
            d.read_at(&mut [0u8; 1], 0),
            Err(BlockError::Closed)
        ));
        drop(d);
        let d = VhdxDisk::open(&p, true).unwrap();
        let mut back = vec![0u8; 12288];
        d.read_at(&mut back, (3 << 20) - 4096).unwrap();
        assert_eq!(back, data);
        assert!(matches!(d.write_at(&data, 0), Err(BlockError::ReadOnly)));
    }

    #[test]
    fn differencing_reads_parent_and_locks_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dynamic(dir.path(), "base.vhdx", 8 << 20);
        {
            let b = VhdxDisk::open(&base, false).unwrap();
            b.write_at(&[0x11; 4096], 0).unwrap();
            b.close().unwrap();
        }
        let child = dir.path().join("child.avhdx");
        vhdx::create(&child, &CreateOptions::differencing(&base))
            .unwrap()
            .close()
            .unwrap();
        let c = VhdxDisk::open(&child, false).unwrap();
        c.write_at(&[0x22; 512], 512).unwrap();
        c.write_at(&[0x33; 512], 5 << 20).unwrap();
        // The chain's data: the parent's first 1 MiB block (the child's
        // sector inside it merges in) and the child's sector at 5 MiB (a
        // child's blocks are partly present, sector by sector).
        assert_eq!(
            c.allocated().unwrap(),
            vec![0..1 << 20, 5 << 20..(5 << 20) + 512]
        );
        let l = c.layout();
        assert_eq!(l.vhdx_type, Some(VhdxType::Differencing));
        assert_eq!(l.capacity, 8 << 20);
        let mut b = vec![0u8; 1536];
        c.read_at(&mut b, 0).unwrap();
        assert!(b[..512].iter().all(|&x| x == 0x11));
        assert!(b[512..1024].iter().all(|&x| x == 0x22));
        assert!(b[1024..].iter().all(|&x| x == 0x11));
        // The parent is held shared: nobody may open it for writing.
        assert!(matches!(
            VhdxDisk::open(&base, false),
            Err(BlockError::Locked(_))
        ));
        VhdxDisk::open(&base, true).unwrap();
        c.close().unwrap();
    }

    #[test]
    fn shrink_refused_over_allocated_blocks_until_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dynamic(dir.path(), "d.vhdx", 8 << 20);
        let d = VhdxDisk::open(&p, false).unwrap();
        let pol = ResizePolicy::default();
        d.write_at(&[5u8; 4096], 6 << 20).unwrap();
        let e = d.resize(4 << 20, &pol).unwrap_err();
        assert!(matches!(e, BlockError::ShrinkAllocated { .. }), "{e}");
        assert!(e.to_string().contains("trim it in the guest"), "{e}");
        d.discard(4 << 20, 4 << 20).unwrap();
        d.resize(4 << 20, &pol).unwrap();
        assert_eq!(d.capacity(), 4 << 20);
        d.resize(32 << 20, &pol).unwrap();
        assert_eq!(d.capacity(), 32 << 20);
        let mut b = [1u8; 4096];
        d.read_at(&mut b, 6 << 20).unwrap();
        assert_eq!(b, [0u8; 4096]);
        let pol = ResizePolicy {
            guest_in_use_end: Some(20 << 20),
        };
        assert!(matches!(
            d.resize(16 << 20, &pol),
            Err(BlockError::ShrinkInUse { .. })
        ));
        d.close().unwrap();
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.vhdx");
        std::fs::write(&p, vec![0x5au8; 1 << 20]).unwrap();
        let e = VhdxDisk::open(&p, false).err().unwrap();
        assert!(matches!(e, BlockError::Vhdx { .. }), "{e}");
        assert!(e.to_string().contains("cannot open VHDX disk"), "{e}");
    }
}
