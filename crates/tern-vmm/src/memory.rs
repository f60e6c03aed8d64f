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
/// Smallest guest memory Tern accepts.
pub const MIN_MEMORY: u64 = 1 << 20;

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
        if size % 4096 != 0 {
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
    fn memfd_backing_is_shared_with_the_file() {
        use std::os::unix::fs::FileExt;
        let ram = GuestRam::new(4 << 20, Backing::Memfd).unwrap();
        ram.mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000)).unwrap();
        let mut buf = [0u8; 4];
        ram.memfd.as_ref().unwrap().read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(ram.mem.num_regions(), 1);
    }
}
