//! Raw image files: byte `n` of the file is byte `n` of the disk.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::lock::{self, LockKind};
use crate::{check_range, BlockBackend, BlockError, DiskFormat, ResizePolicy, SECTOR_SIZE};

/// A raw image file, locked for the life of the value.
pub struct RawDisk {
    // The size lives under the lock: I/O holds it shared, resize exclusive,
    // so no write can extend a file that is being cut.
    file: RwLock<(File, u64)>,
    path: PathBuf,
    read_only: bool,
    /// Opened shared: other workers write it too, its size is fixed.
    shared: bool,
    id: String,
}

impl RawDisk {
    /// Opens and locks `path`. Its size is rounded down to whole sectors.
    pub fn open(path: &Path, read_only: bool) -> Result<RawDisk, BlockError> {
        Self::open_locked(path, read_only, false)
    }

    /// Opens `path` under a shared lock, read-write unless `read_only`:
    /// every other shared or read-only open may hold it too, an exclusive
    /// open may not (see the crate docs).
    pub fn open_shared(path: &Path, read_only: bool) -> Result<RawDisk, BlockError> {
        Self::open_locked(path, read_only, true)
    }

    fn open_locked(path: &Path, read_only: bool, shared: bool) -> Result<RawDisk, BlockError> {
        let file = crate::open_file(path, read_only)?;
        let kind = if read_only || shared {
            LockKind::Shared
        } else {
            LockKind::Exclusive
        };
        lock::lock(&file, path, kind)?;
        let len = file
            .metadata()
            .map_err(BlockError::io("reading disk size"))?
            .len();
        Ok(RawDisk {
            file: RwLock::new((file, len / SECTOR_SIZE * SECTOR_SIZE)),
            path: path.into(),
            read_only,
            shared,
            id: crate::id_from_path(path),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_guard(&self) -> std::sync::RwLockReadGuard<'_, (File, u64)> {
        self.file.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `lseek(fd, from, whence)` for SEEK_DATA/SEEK_HOLE: `Ok(None)` past
    /// the last data (ENXIO), `Err(None)` when the file system cannot
    /// tell (everything then counts as data).
    fn seek(
        file: &File,
        from: u64,
        whence: libc::c_int,
    ) -> Result<Option<u64>, Option<std::io::Error>> {
        let Ok(off) = libc::off_t::try_from(from) else {
            return Ok(None);
        };
        // SAFETY: lseek on an open fd has no memory effects; Tern never
        // uses the file offset (all I/O is positioned).
        let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Err(None),
                _ => Err(Some(e)),
            };
        }
        Ok(Some(r as u64))
    }

    /// First byte at or after `from` (below `end`) that the file system
    /// holds data for, if any.
    fn first_data(file: &File, from: u64, end: u64) -> Result<Option<u64>, BlockError> {
        match Self::seek(file, from, libc::SEEK_DATA) {
            Ok(r) => Ok(r.filter(|&r| r < end)),
            // No SEEK_DATA here: everything counts as data.
            Err(None) => Ok((from < end).then_some(from)),
            Err(Some(source)) => Err(BlockError::Io {
                what: "looking for data beyond the new end",
                source,
            }),
        }
    }
}

impl BlockBackend for RawDisk {
    fn capacity(&self) -> u64 {
        self.read_guard().1
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn format(&self) -> DiskFormat {
        DiskFormat::Raw
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let g = self.read_guard();
        check_range(offset, buf.len() as u64, g.1)?;
        g.0.read_exact_at(buf, offset)
            .map_err(BlockError::io("reading the disk"))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let g = self.read_guard();
        check_range(offset, buf.len() as u64, g.1)?;
        g.0.write_all_at(buf, offset)
            .map_err(BlockError::io("writing the disk"))
    }

    fn flush(&self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.read_guard()
            .0
            .sync_data()
            .map_err(BlockError::io("flushing the disk"))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let g = self.read_guard();
        check_range(offset, len, g.1)?;
        if len == 0 {
            return Ok(());
        }
        let (Ok(o), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: fallocate on an open fd has no memory effects; KEEP_SIZE
        // means the file never changes length here.
        let r = unsafe {
            libc::fallocate(
                g.0.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                o,
                l,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            // Discard is a hint: a file system without hole punching keeps the data.
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(BlockError::Io {
                    what: "discarding",
                    source: e,
                });
            }
        }
        Ok(())
    }

    fn resize(&self, new_size: u64, policy: &ResizePolicy) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        if self.shared {
            return Err(BlockError::SharedResize(self.path.clone()));
        }
        let mut g = self.file.write().unwrap_or_else(|p| p.into_inner());
        let old = g.1;
        policy.check(old, new_size)?;
        if new_size < old {
            // Refuse to cut data: the tail must be holes (trimmed) or zeros.
            // The file system block holding `new_size` may be partly ours,
            // so its bytes past the new end are compared instead.
            let fs_block = 4096;
            let aligned = new_size.div_ceil(fs_block) * fs_block;
            let head_end = aligned.min(old);
            if head_end > new_size {
                let mut b = vec![0u8; (head_end - new_size) as usize];
                g.0.read_exact_at(&mut b, new_size)
                    .map_err(BlockError::io("reading the disk's tail"))?;
                if let Some(i) = b.iter().position(|&x| x != 0) {
                    return Err(BlockError::ShrinkAllocated {
                        new_size,
                        offset: new_size + i as u64,
                    });
                }
            }
            if let Some(off) = Self::first_data(&g.0, head_end, old)? {
                return Err(BlockError::ShrinkAllocated {
                    new_size,
                    offset: off,
                });
            }
        }
        g.0.set_len(new_size)
            .map_err(BlockError::io("resizing the disk file"))?;
        g.1 = new_size;
        Ok(())
    }

    /// The file's data extents (SEEK_DATA/SEEK_HOLE), in file-system
    /// blocks; the whole disk where the file system cannot tell.
    fn allocated(&self) -> Result<Vec<std::ops::Range<u64>>, BlockError> {
        let g = self.read_guard();
        let cap = g.1;
        let err = |source| BlockError::Io {
            what: "listing the disk's data extents",
            source,
        };
        let mut out = Vec::new();
        let mut from = 0;
        while from < cap {
            let data = match Self::seek(&g.0, from, libc::SEEK_DATA) {
                Ok(Some(d)) if d < cap => d,
                Ok(_) => break,
                Err(None) => {
                    out.push(from..cap);
                    break;
                }
                Err(Some(e)) => return Err(err(e)),
            };
            let hole = match Self::seek(&g.0, data, libc::SEEK_HOLE) {
                Ok(Some(h)) => h.min(cap),
                Ok(None) | Err(None) => cap,
                Err(Some(e)) => return Err(err(e)),
            };
            if hole <= data {
                break;
            }
            out.push(data..hole);
            from = hole;
        }
        Ok(out)
    }

    fn layout(&self) -> crate::DiskLayout {
        crate::DiskLayout::raw(self.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(len: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img");
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        (dir, p)
    }

    #[test]
    fn shared_opens_write_together_and_exclude_exclusive_ones() {
        let (_d, p) = disk(1 << 20);
        let a = RawDisk::open_shared(&p, false).unwrap();
        let b = RawDisk::open_shared(&p, false).unwrap();
        a.write_at(&[0xA5; 512], 0).unwrap();
        let mut got = [0u8; 512];
        b.read_at(&mut got, 0).unwrap();
        assert_eq!(got, [0xA5; 512], "one user's write is the other's read");
        b.write_at(&[0x5A; 512], 512).unwrap();
        assert!(matches!(
            RawDisk::open(&p, false),
            Err(BlockError::Locked(_))
        ));
        let e = a.resize(2 << 20, &ResizePolicy::default()).unwrap_err();
        assert!(matches!(e, BlockError::SharedResize(_)), "{e}");
        drop((a, b));
        let x = RawDisk::open(&p, false).unwrap();
        assert!(matches!(
            RawDisk::open_shared(&p, false),
            Err(BlockError::Locked(_))
        ));
        drop(x);
        // VHDX cannot be shared: refused by name, before anything is read.
        let v = p.with_extension("vhdx");
        let Err(e) = crate::open(&crate::OpenOptions::new(&v).shared(true)) else {
            panic!("a VHDX opened shared");
        };
        assert!(matches!(e, BlockError::SharedUnsupported(_)), "{e}");
        assert!(e.to_string().contains("only raw images"), "{e}");
    }

    #[test]
    fn round_trip_and_bounds() {
        let (_d, p) = disk(1 << 20);
        let d = RawDisk::open(&p, false).unwrap();
        assert_eq!(d.capacity(), 1 << 20);
        assert_eq!(d.id(), "d.img");
        let data: Vec<u8> = (0..8192).map(|i| (i * 7) as u8).collect();
        d.write_at(&data, 4096).unwrap();
        d.flush().unwrap();
        let mut back = vec![0u8; 8192];
        d.read_at(&mut back, 4096).unwrap();
        assert_eq!(back, data);
        assert!(matches!(
            d.read_at(&mut back, (1 << 20) - 4096),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.write_at(&data, u64::MAX - 10),
            Err(BlockError::OutOfRange { .. })
        ));
        assert_eq!(std::fs::read(&p).unwrap()[4096..12288], data[..]);
    }

    #[test]
    fn read_only_refuses_changes_and_shares_the_lock() {
        let (_d, p) = disk(1 << 20);
        let a = RawDisk::open(&p, true).unwrap();
        let b = RawDisk::open(&p, true).unwrap();
        assert!(a.read_only());
        assert!(matches!(a.write_at(&[1], 0), Err(BlockError::ReadOnly)));
        assert!(matches!(a.discard(0, 512), Err(BlockError::ReadOnly)));
        assert!(matches!(
            a.resize(2 << 20, &ResizePolicy::default()),
            Err(BlockError::ReadOnly)
        ));
        assert!(matches!(
            RawDisk::open(&p, false),
            Err(BlockError::Locked(_))
        ));
        drop((a, b));
        let w = RawDisk::open(&p, false).unwrap();
        assert!(matches!(
            RawDisk::open(&p, true),
            Err(BlockError::Locked(_))
        ));
        drop(w);
    }

    #[test]
    fn missing_file_is_not_found() {
        let e = RawDisk::open(Path::new("/nonexistent/x.img"), false)
            .err()
            .unwrap();
        assert!(matches!(e, BlockError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("not found"));
    }

    #[test]
    fn grow_then_shrink_only_over_holes() {
        let (_d, p) = disk(4 << 20);
        let d = RawDisk::open(&p, false).unwrap();
        let pol = ResizePolicy::default();
        d.resize(8 << 20, &pol).unwrap();
        assert_eq!(d.capacity(), 8 << 20);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8 << 20);
        d.write_at(&[0xab; 4096], 6 << 20).unwrap();
        let e = d.resize(2 << 20, &pol).unwrap_err();
        assert!(
            matches!(e, BlockError::ShrinkAllocated { offset, .. } if offset == 6 << 20),
            "{e}"
        );
        assert_eq!(d.capacity(), 8 << 20);
        // A non-zero byte in the file system block cut in two.
        d.write_at(&[1], (2 << 20) + 600).unwrap();
        d.discard(6 << 20, 4096).unwrap();
        let e = d.resize((2 << 20) + 512, &pol).unwrap_err();
        assert!(
            matches!(e, BlockError::ShrinkAllocated { offset, .. } if offset == (2 << 20) + 600),
            "{e}"
        );
        d.discard(2 << 20, 6 << 20).unwrap();
        d.resize(2 << 20, &pol).unwrap();
        assert_eq!(d.capacity(), 2 << 20);
        // The guest's own claim is honoured too.
        let pol = ResizePolicy {
            guest_in_use_end: Some(1 << 20),
        };
        assert!(matches!(
            d.resize(512 << 10, &pol),
            Err(BlockError::ShrinkInUse { .. })
        ));
        d.resize(1 << 20, &pol).unwrap();
    }

    #[test]
    fn allocated_lists_data_not_holes() {
        let (_d, p) = disk(8 << 20);
        let d = RawDisk::open(&p, false).unwrap();
        assert!(d.allocated().unwrap().is_empty());
        d.write_at(&[1u8; 4096], 1 << 20).unwrap();
        d.write_at(&[2u8; 8192], 5 << 20).unwrap();
        d.write_at(&[3u8; 512], (8 << 20) - 512).unwrap();
        let a = d.allocated().unwrap();
        // File systems may allocate more than was written, never less.
        for w in [(1 << 20)..(1 << 20) + 4096, (5 << 20)..(5 << 20) + 8192] {
            assert!(
                a.iter().any(|r| r.start <= w.start && w.end <= r.end),
                "{w:?} not in {a:?}"
            );
        }
        assert_eq!(a.last().unwrap().end, 8 << 20);
        let total: u64 = a.iter().map(|r| r.end - r.start).sum();
        assert!(total < 4 << 20, "holes are left out: {a:?}");
        assert_eq!(d.layout(), crate::DiskLayout::raw(8 << 20));
    }

    #[test]
    fn discard_reads_back_zeros() {
        let (_d, p) = disk(1 << 20);
        let d = RawDisk::open(&p, false).unwrap();
        d.write_at(&[9u8; 65536], 0).unwrap();
        d.discard(0, 65536).unwrap();
        let mut b = vec![1u8; 65536];
        d.read_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert!(d.discard(1 << 20, 1).is_err());
    }
}
