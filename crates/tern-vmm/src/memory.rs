//! Guest memory: layout, allocation (anonymous or memfd), dirty tracking of
//! the VMM's own writes.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use tern_probe_abi::MemRegion;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Guest memory as the VMM sees it. The bitmap records every write the VMM
/// itself makes through the `GuestMemory` API, so dirty tracking can add
/// them to what KVM reports for the guest.
pub type GuestMem = GuestMemoryMmap<AtomicBitmap>;

/// Start of the hole below 4 GiB kept free of RAM for MMIO devices.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Largest piece of guest memory copied from or to a file in one call.
const COPY_CHUNK: u64 = 1 << 30;
/// Smallest guest memory Tern accepts.
pub const MIN_MEMORY: u64 = 1 << 20;

/// Where a VM's initial memory contents come from.
#[derive(Clone, Debug, Default)]
pub enum MemorySource {
    /// Zeroed memory, backed as [`Backing`] says.
    #[default]
    Fresh,
    /// A memory image file (regions back to back). `lazy`: map it
    /// copy-on-write, pages are read on first touch; otherwise copy it all
    /// in before the VM runs.
    File {
        /// The image.
        path: std::path::PathBuf,
        /// Map instead of copy.
        lazy: bool,
    },
    /// Another process's guest memory, handed over as a memfd (same-host
    /// zero-copy migration): mapped shared, nothing is copied.
    Memfd(std::sync::Arc<File>),
    /// Guest RAM already made and filled here (a migration streamed in):
    /// the VM takes it as it is. It can be taken once.
    Prepared(PreparedRam),
}

/// Guest RAM handed to the VM that will use it (see
/// [`MemorySource::Prepared`]).
#[derive(Clone)]
pub struct PreparedRam(std::sync::Arc<std::sync::Mutex<Option<GuestRam>>>);

impl PreparedRam {
    /// Wraps `ram` for a VM to take.
    pub fn new(ram: GuestRam) -> Self {
        PreparedRam(std::sync::Arc::new(std::sync::Mutex::new(Some(ram))))
    }

    /// The RAM, unless a VM took it already.
    fn take(&self) -> Option<GuestRam> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for PreparedRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreparedRam")
    }
}

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backing {
    /// Private anonymous memory.
    #[default]
    Anonymous,
    /// A memfd mapped shared, so the memory can be handed to another process.
    Memfd,
}

/// Errors setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is not usable.
    #[error("guest memory size {size} bytes is invalid: {why}")]
    BadSize {
        /// Requested size.
        size: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// memfd creation or sizing failed.
    #[error("cannot create the guest memory file")]
    Memfd(#[source] std::io::Error),
    /// Mapping failed.
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// Mapping a file region failed.
    #[error("cannot map guest memory from a file")]
    MapFile(#[source] vm_memory::mmap::MmapRegionError),
    /// The memory image cannot be used.
    #[error("memory image {path}")]
    Image {
        /// The image.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The memory image is smaller than the VM's memory.
    #[error("memory image {path} has {have} bytes, the VM needs {need}")]
    ImageSize {
        /// The image.
        path: std::path::PathBuf,
        /// Its size.
        have: u64,
        /// The VM's memory size.
        need: u64,
    },
    /// Prepared RAM (from an incoming migration) was taken by another VM
    /// already, or has another size.
    #[error("the prepared guest memory is gone or has another size")]
    PreparedGone,
    /// Allocating memory up front failed.
    #[error("cannot preallocate guest memory (needs Linux 5.14 or later)")]
    Populate(#[source] std::io::Error),
    /// Copying memory to or from a file failed.
    #[error("cannot copy guest memory {what}")]
    Copy {
        /// "to FILE" / "from FILE".
        what: String,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The RAM ranges for a guest of `size` bytes: everything below the MMIO
/// hole, the rest above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<MemRegion> {
    let low = size.min(MMIO_HOLE_START);
    let mut out = vec![MemRegion { start: 0, len: low }];
    if size > low {
        out.push(MemRegion {
            start: MMIO_HOLE_END,
            len: size - low,
        });
    }
    out
}

/// Guest RAM plus what backs it.
pub struct GuestRam {
    /// The mapped memory.
    pub mem: GuestMem,
    /// RAM ranges, ascending.
    pub regions: Vec<MemRegion>,
    /// The memfd when backed by one (regions laid out back to back in it).
    pub memfd: Option<File>,
}

impl GuestRam {
    /// Allocates `size` bytes of guest RAM.
    pub fn new(size: u64, backing: Backing) -> Result<Self, MemoryError> {
        if size < MIN_MEMORY {
            return Err(MemoryError::BadSize {
                size,
                why: "must be at least 1 MiB",
            });
        }
        if !size.is_multiple_of(4096) {
            return Err(MemoryError::BadSize {
                size,
                why: "must be a multiple of 4 KiB",
            });
        }
        let regions = ram_regions(size);
        let memfd = match backing {
            Backing::Anonymous => None,
            Backing::Memfd => Some(create_memfd(size)?),
        };
        let mut offset = 0u64;
        let ranges: Vec<(GuestAddress, usize, Option<FileOffset>)> = regions
            .iter()
            .map(|r| {
                let fo = memfd.as_ref().map(|f| {
                    // The clone shares the open file description; each region maps its slice.
                    FileOffset::new(f.try_clone().expect("dup of memfd"), offset)
                });
                offset += r.len;
                (GuestAddress(r.start), r.len as usize, fo)
            })
            .collect();
        let mem = GuestMem::from_ranges_with_files(ranges).map_err(MemoryError::Map)?;
        // Transparent huge pages where the host allows them (for a memfd:
        // shmem_enabled advise or more): a fault then fills 2 MiB, and the
        // guest runs with fewer TLB misses. Advice only: failure changes
        // nothing.
        let _ = advise(&mem, libc::MADV_HUGEPAGE);
        Ok(GuestRam {
            mem,
            regions,
            memfd,
        })
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }

    /// Guest RAM with its initial contents from `source`.
    pub fn with_source(
        size: u64,
        backing: Backing,
        source: &MemorySource,
    ) -> Result<Self, MemoryError> {
        match source {
            MemorySource::Fresh => Self::new(size, backing),
            MemorySource::Memfd(f) => Self::map_file(size, f, libc::MAP_SHARED, true),
            MemorySource::Prepared(p) => match p.take() {
                Some(ram) if ram.size() == size => Ok(ram),
                _ => Err(MemoryError::PreparedGone),
            },
            MemorySource::File { path, lazy } => {
                let img_err = |source| MemoryError::Image {
                    path: path.clone(),
                    source,
                };
                let file = File::open(path).map_err(img_err)?;
                let have = file.metadata().map_err(img_err)?.len();
                if have < size {
                    return Err(MemoryError::ImageSize {
                        path: path.clone(),
                        have,
                        need: size,
                    });
                }
                if *lazy {
                    // Copy-on-write: the image file is never written.
                    Self::map_file(size, &file, libc::MAP_PRIVATE, false)
                } else {
                    let ram = Self::new(size, backing)?;
                    ram.load_from(&file, path)?;
                    Ok(ram)
                }
            }
        }
    }

    /// Maps `file` (regions back to back) as guest RAM.
    fn map_file(size: u64, file: &File, flags: i32, keep: bool) -> Result<Self, MemoryError> {
        use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
        use vm_memory::GuestRegionMmap;
        let regions = ram_regions(size);
        let mut offset = 0u64;
        let mut mapped = Vec::new();
        for r in &regions {
            let f = file.try_clone().map_err(MemoryError::Memfd)?;
            let mmap = MmapRegionBuilder::new_with_bitmap(
                r.len as usize,
                AtomicBitmap::with_len(r.len as usize),
            )
            .with_file_offset(FileOffset::new(f, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags | libc::MAP_NORESERVE)
            .build()
            .map_err(MemoryError::MapFile)?;
            mapped.push(GuestRegionMmap::new(mmap, GuestAddress(r.start)).ok_or(
                MemoryError::BadSize {
                    size,
                    why: "region overflows the address space",
                },
            )?);
            offset += r.len;
        }
        let mem = GuestMem::from_regions(mapped)
            .map_err(|e| MemoryError::Map(vm_memory::mmap::FromRangesError::Collection(e)))?;
        Ok(GuestRam {
            mem,
            regions,
            memfd: if keep {
                Some(file.try_clone().map_err(MemoryError::Memfd)?)
            } else {
                None
            },
        })
    }

    /// Copies a memory image (regions back to back) into guest memory.
    pub fn load_from(&self, file: &File, path: &std::path::Path) -> Result<(), MemoryError> {
        use std::io::{Seek, SeekFrom};
        use vm_memory::Bytes;
        let mut f = file.try_clone().map_err(MemoryError::Memfd)?;
        f.seek(SeekFrom::Start(0))
            .map_err(|source| MemoryError::Image {
                path: path.into(),
                source,
            })?;
        for r in &self.regions {
            // One read(2) moves at most 2 GiB - 4 KiB: copy large regions
            // in pieces.
            let mut done = 0;
            while done < r.len {
                let n = (r.len - done).min(COPY_CHUNK);
                self.mem
                    .read_exact_volatile_from(GuestAddress(r.start + done), &mut f, n as usize)
                    .map_err(|source| MemoryError::Copy {
                        what: format!("from {}", path.display()),
                        source,
                    })?;
                done += n;
            }
        }
        Ok(())
    }

    /// Allocates and maps every page of RAM now, so touching it later
    /// costs no page fault: QEMU's `prealloc=on`, Cloud Hypervisor's
    /// `prefault`. Contents are unchanged, and it is safe while other
    /// threads write the same memory.
    pub fn populate(&self) -> Result<(), MemoryError> {
        advise(&self.mem, libc::MADV_POPULATE_WRITE).map_err(MemoryError::Populate)
    }

    /// Writes guest memory (regions back to back) to `file` from offset 0.
    pub fn save_to(&self, file: &mut File, path: &std::path::Path) -> Result<(), MemoryError> {
        use std::io::{Seek, SeekFrom};
        use vm_memory::Bytes;
        file.seek(SeekFrom::Start(0))
            .map_err(|source| MemoryError::Image {
                path: path.into(),
                source,
            })?;
        for r in &self.regions {
            let mut done = 0;
            while done < r.len {
                let n = (r.len - done).min(COPY_CHUNK);
                self.mem
                    .write_all_volatile_to(GuestAddress(r.start + done), file, n as usize)
                    .map_err(|source| MemoryError::Copy {
                        what: format!("to {}", path.display()),
                        source,
                    })?;
                done += n;
            }
        }
        Ok(())
    }
}

/// Gives every region of `mem`, whole, the `madvise` advice `advice`:
/// one that only changes how pages are backed (huge pages, faulting in),
/// never their contents or the mapping.
fn advise(mem: &GuestMem, advice: libc::c_int) -> std::io::Result<()> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for region in mem.iter() {
        // SAFETY: the region's own live mapping, whole; the callers' advice
        // neither unmaps it nor alters data.
        let rc = unsafe { libc::madvise(region.as_ptr().cast(), region.len() as usize, advice) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn create_memfd(size: u64) -> Result<File, MemoryError> {
    let name = c"tern-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no
    // other memory arguments and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Memfd)?;
    debug_assert!(file.as_raw_fd() >= 0);
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn populate_allocates_without_changing_contents() {
        use vm_memory::Bytes;
        for backing in [Backing::Anonymous, Backing::Memfd] {
            let ram = GuestRam::new(8 << 20, backing).unwrap();
            ram.mem.write_obj(0x5au8, GuestAddress(0x1234)).unwrap();
            let allocated = || {
                use std::os::unix::fs::MetadataExt;
                ram.memfd
                    .as_ref()
                    .map(|f| f.metadata().unwrap().blocks() * 512)
            };
            assert!(allocated().is_none_or(|b| b < 1 << 20), "{backing:?}");
            ram.populate().unwrap();
            assert!(allocated().is_none_or(|b| b == 8 << 20), "{backing:?}");
            // Again: nothing changes, no error.
            ram.populate().unwrap();
            assert!(allocated().is_none_or(|b| b == 8 << 20), "{backing:?}");
            let b: u8 = ram.mem.read_obj(GuestAddress(0x1234)).unwrap();
            assert_eq!(b, 0x5a);
            let z: u8 = ram.mem.read_obj(GuestAddress(0x7f_ffff)).unwrap();
            assert_eq!(z, 0);
        }
    }

    #[test]
    fn prepared_ram_is_taken_once_and_only_at_its_size() {
        use vm_memory::Bytes;
        let ram = GuestRam::new(4 << 20, Backing::Anonymous).unwrap();
        ram.mem.write_obj(7u8, GuestAddress(0x2000)).unwrap();
        let src = MemorySource::Prepared(PreparedRam::new(ram));
        assert!(matches!(
            GuestRam::with_source(8 << 20, Backing::Anonymous, &src),
            Err(MemoryError::PreparedGone)
        ));
        let filled = GuestRam::new(4 << 20, Backing::Anonymous).unwrap();
        filled.mem.write_obj(9u8, GuestAddress(0x3000)).unwrap();
        let src = MemorySource::Prepared(PreparedRam::new(filled));
        let ram = GuestRam::with_source(4 << 20, Backing::Anonymous, &src).unwrap();
        assert_eq!(ram.mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), 9);
        assert!(matches!(
            GuestRam::with_source(4 << 20, Backing::Anonymous, &src.clone()),
            Err(MemoryError::PreparedGone)
        ));
    }

    #[test]
    fn small_guests_have_one_region() {
        assert_eq!(
            ram_regions(512 << 20),
            vec![MemRegion {
                start: 0,
                len: 512 << 20
            }]
        );
    }

    #[test]
    fn large_guests_skip_the_mmio_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].start + r[0].len, MMIO_HOLE_START);
        assert_eq!(r[1].start, MMIO_HOLE_END);
        assert_eq!(r[0].len + r[1].len, 4 << 30);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(GuestRam::new(0, Backing::Anonymous).is_err());
        assert!(GuestRam::new((2 << 20) + 1, Backing::Anonymous).is_err());
    }

    #[test]
    fn images_load_eagerly_or_lazily_and_save_back() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("mem.img");
        let mut data = vec![0u8; 4 << 20];
        data[0x3000] = 0xab;
        data[(4 << 20) - 1] = 0xcd;
        std::fs::write(&img, &data).unwrap();
        for lazy in [false, true] {
            let src = MemorySource::File {
                path: img.clone(),
                lazy,
            };
            let ram = GuestRam::with_source(4 << 20, Backing::Anonymous, &src).unwrap();
            let b: u8 = ram.mem.read_obj(GuestAddress(0x3000)).unwrap();
            assert_eq!(b, 0xab, "lazy={lazy}");
            // Writes never reach the image.
            ram.mem.write_obj(0x11u8, GuestAddress(0x3000)).unwrap();
            let out = dir.path().join(format!("out-{lazy}"));
            let mut f = File::create(&out).unwrap();
            ram.save_to(&mut f, &out).unwrap();
            let saved = std::fs::read(&out).unwrap();
            assert_eq!(saved.len(), 4 << 20);
            assert_eq!((saved[0x3000], saved[(4 << 20) - 1]), (0x11, 0xcd));
        }
        assert_eq!(std::fs::read(&img).unwrap(), data, "image untouched");
        let short = MemorySource::File {
            path: img.clone(),
            lazy: true,
        };
        let e = GuestRam::with_source(8 << 20, Backing::Anonymous, &short)
            .err()
            .unwrap();
        assert!(e.to_string().contains("needs"), "{e}");
    }

    #[test]
    fn memfd_backing_is_shared_with_the_file() {
        use std::os::unix::fs::FileExt;
        let ram = GuestRam::new(4 << 20, Backing::Memfd).unwrap();
        ram.mem
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.memfd
            .as_ref()
            .unwrap()
            .read_exact_at(&mut buf, 0x1000)
            .unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.mem.num_regions(), 1);
    }
}
