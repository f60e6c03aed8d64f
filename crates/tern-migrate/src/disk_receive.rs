//! The destination side of shared-nothing migration: creates the offered
//! disks in its directory and writes the disk chunks the data channels
//! bring.
//!
//! Each image is created as an unnamed file in the directory (`O_TMPFILE`)
//! and gets its name only once the source has committed: an attempt that
//! fails, is aborted, or whose process is killed leaves no file behind
//! (the kernel frees an unnamed file with its last descriptor). Until
//! then the VM built here opens the image through `/proc/self/fd`.
//! Everything in a chunk is checked against the disk's capacity before
//! anything is written.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tern_block::{BlockBackend, BlockError, DiskFormat};

use crate::compress::{CompressError, Decompressor};
use crate::disk_wire::{
    plain_file_name, DiskAcceptance, DiskChunkHeader, DiskOffer, DISK_CHUNK_HEADER, DISK_WINDOW,
    MAX_DISKS,
};
use crate::transport::read_exact_fd;
use crate::wire::{Codec, WireError};

/// Errors creating the disks or applying their data.
#[derive(Debug, thiserror::Error)]
pub enum DiskReceiveError {
    /// The offer is not one this side can take.
    #[error("{0}")]
    Offer(String),
    /// An image could not be created.
    #[error("cannot create {} in {}", name, dir.display())]
    Create {
        /// The directory.
        dir: PathBuf,
        /// The file name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A VHDX could not be laid out.
    #[error("cannot lay out the VHDX {name}")]
    Vhdx {
        /// The file name.
        name: String,
        /// Why.
        #[source]
        source: vhdx::Error,
    },
    /// An image could not be opened, written, flushed or closed.
    #[error("disk {name}")]
    Block {
        /// The file name.
        name: String,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// A chunk is malformed.
    #[error("bad disk chunk")]
    Wire(#[from] WireError),
    /// A chunk names a disk or range the disks do not have.
    #[error("disk chunk for disk {disk} at {offset:#x}+{len:#x} is outside the disks offered")]
    OutOfRange {
        /// The disk index in the chunk.
        disk: u32,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u32,
    },
    /// A chunk's data does not decode.
    #[error("disk chunk data")]
    Decode(#[from] CompressError),
    /// Naming an image after the commit failed.
    #[error("cannot name the migrated image {}", path.display())]
    Link {
        /// Its name.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One disk being received.
struct Target {
    offer: DiskOffer,
    format: DiskFormat,
    /// The unnamed file; its descriptor keeps it alive.
    anchor: File,
    /// Where it gets its name after the commit.
    path: PathBuf,
    /// The image opened for the chunks (closed before the VM opens it).
    writer: RwLock<Option<Arc<dyn BlockBackend>>>,
}

impl Target {
    /// The image as this process reaches it before it has a name.
    fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.anchor.as_raw_fd()))
    }
}

/// The disks of an incoming shared-nothing migration.
pub struct DiskTargets {
    disks: Vec<Target>,
    received: AtomicU64,
}

impl std::fmt::Debug for DiskTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTargets")
            .field("disks", &self.disks.len())
            .field("received", &self.received)
            .finish()
    }
}

/// Checks an offer and says which format it asks for.
fn check_offer(o: &DiskOffer, disks: u32) -> Result<DiskFormat, String> {
    if o.index >= disks {
        return Err(format!("disk {} offered, the VM here has {disks}", o.index));
    }
    if !plain_file_name(&o.name) {
        return Err(format!(
            "disk {}: {:?} is not a plain file name",
            o.index, o.name
        ));
    }
    let format = match o.format.as_str() {
        "raw" => DiskFormat::Raw,
        "vhdx" => DiskFormat::Vhdx,
        f => return Err(format!("disk {}: unknown format {f:?}", o.index)),
    };
    if o.capacity == 0
        || !o.capacity.is_multiple_of(512)
        || o.capacity > vhdx::metadata::MAX_VIRTUAL_SIZE
    {
        return Err(format!(
            "disk {}: capacity {} is not usable",
            o.index, o.capacity
        ));
    }
    Ok(format)
}

impl DiskTargets {
    /// Creates the disks `offers` describe in `dir` (unnamed until the
    /// commit) for a VM with `disks` disks. Refused: an offer that does
    /// not fit that VM, a name that is taken in `dir`, a directory that
    /// cannot hold unnamed files.
    pub fn create(dir: &Path, offers: &[DiskOffer], disks: u32) -> Result<Self, DiskReceiveError> {
        if offers.len() > MAX_DISKS || offers.len() != disks as usize {
            return Err(DiskReceiveError::Offer(format!(
                "{} disks offered, the VM here has {disks}",
                offers.len()
            )));
        }
        let mut targets: Vec<Target> = Vec::new();
        for o in offers {
            let format = check_offer(o, disks).map_err(DiskReceiveError::Offer)?;
            if targets
                .iter()
                .any(|t| t.offer.index == o.index || t.offer.name == o.name)
            {
                return Err(DiskReceiveError::Offer(format!(
                    "disk {} ({}) offered twice",
                    o.index, o.name
                )));
            }
            let path = dir.join(&o.name);
            if path.symlink_metadata().is_ok() {
                return Err(DiskReceiveError::Offer(format!(
                    "{} exists already",
                    path.display()
                )));
            }
            let create_err = |source| DiskReceiveError::Create {
                dir: dir.into(),
                name: o.name.clone(),
                source,
            };
            let anchor = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_TMPFILE)
                .open(dir)
                .map_err(create_err)?;
            match format {
                DiskFormat::Raw => anchor.set_len(o.capacity).map_err(create_err)?,
                DiskFormat::Vhdx => {
                    let mut opts = if o.vhdx_type == "fixed" {
                        vhdx::CreateOptions::fixed(o.capacity)
                    } else {
                        vhdx::CreateOptions::dynamic(o.capacity)
                    };
                    if o.vhdx_block_size != 0 {
                        opts = opts.block_size(o.vhdx_block_size);
                    }
                    if o.logical_sector != 0 && o.physical_sector != 0 {
                        opts = opts.sectors(o.logical_sector, o.physical_sector);
                    }
                    let vhdx_err = |source| DiskReceiveError::Vhdx {
                        name: o.name.clone(),
                        source,
                    };
                    let storage = anchor.try_clone().map_err(create_err)?;
                    vhdx::create::create_on(Box::new(storage), &opts, None)
                        .and_then(vhdx::Disk::close)
                        .map_err(vhdx_err)?;
                }
            }
            let t = Target {
                offer: o.clone(),
                format,
                anchor,
                path,
                writer: RwLock::new(None),
            };
            let opts = tern_block::OpenOptions {
                format: Some(format),
                ..tern_block::OpenOptions::new(t.fd_path())
            };
            let w = tern_block::open(&opts).map_err(|source| DiskReceiveError::Block {
                name: o.name.clone(),
                source,
            })?;
            *t.writer.write().unwrap_or_else(|p| p.into_inner()) = Some(w);
            targets.push(t);
        }
        Ok(DiskTargets {
            disks: targets,
            received: AtomicU64::new(0),
        })
    }

    /// The answer to the source: accepted, and the paths.
    pub fn acceptance(&self) -> DiskAcceptance {
        DiskAcceptance {
            accepted: true,
            paths: self
                .disks
                .iter()
                .map(|t| t.path.display().to_string())
                .collect(),
            error: String::new(),
        }
    }

    /// Bytes of disk written so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Reads the rest of a disk chunk frame (`len` bytes after its kind)
    /// from `fd`, checks it and writes it. Returns the disk bytes written.
    pub fn apply(
        &self,
        fd: BorrowedFd<'_>,
        len: usize,
        bufs: &mut DiskApplier,
    ) -> Result<u64, DiskReceiveError> {
        if len < DISK_CHUNK_HEADER {
            return Err(WireError::BadFrame(format!("disk chunk of {len} bytes")).into());
        }
        let mut hb = [0u8; DISK_CHUNK_HEADER];
        read_exact_fd(fd, &mut hb).map_err(WireError::Io)?;
        let h = DiskChunkHeader::decode(&hb)?;
        let out_of_range = || DiskReceiveError::OutOfRange {
            disk: h.disk,
            offset: h.offset,
            len: h.len,
        };
        let t = self.disks.get(h.disk as usize).ok_or_else(out_of_range)?;
        let end = h
            .offset
            .checked_add(u64::from(h.len))
            .ok_or_else(out_of_range)?;
        if end > t.offer.capacity {
            return Err(out_of_range());
        }
        let data_len = len - DISK_CHUNK_HEADER;
        let raw_len = h.len as usize;
        let bad_len = |what: &str| {
            DiskReceiveError::Wire(WireError::BadFrame(format!(
                "disk chunk at {:#x}: {data_len} bytes of {what} data for {raw_len} bytes",
                h.offset
            )))
        };
        if (h.zero && data_len != 0)
            || (!h.zero && h.codec == Codec::None && data_len != raw_len)
            || data_len as u64 > DISK_WINDOW
        {
            return Err(bad_len(h.codec.name()));
        }
        bufs.raw.resize(raw_len, 0);
        if h.zero {
            bufs.raw.fill(0);
        } else if h.codec == Codec::None {
            read_exact_fd(fd, &mut bufs.raw).map_err(WireError::Io)?;
        } else {
            bufs.packed.resize(data_len, 0);
            read_exact_fd(fd, &mut bufs.packed).map_err(WireError::Io)?;
            bufs.decompressor
                .get_or_insert_with(Decompressor::new)
                .decompress(h.codec, &bufs.packed, &mut bufs.raw)?;
        }
        let w = t.writer.read().unwrap_or_else(|p| p.into_inner());
        let w = w.as_ref().ok_or_else(out_of_range)?;
        w.write_at(&bufs.raw, h.offset)
            .map_err(|source| DiskReceiveError::Block {
                name: t.offer.name.clone(),
                source,
            })?;
        self.received.fetch_add(u64::from(h.len), Ordering::Relaxed);
        Ok(u64::from(h.len))
    }

    /// Makes what was written so far durable (at the source's `Sync`,
    /// before the pause: the flush inside it then covers only the last
    /// round).
    pub fn flush(&self) -> Result<(), DiskReceiveError> {
        for t in &self.disks {
            if let Some(w) = t.writer.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
                w.flush().map_err(|source| DiskReceiveError::Block {
                    name: t.offer.name.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Makes what was written durable and closes the images, so the VM
    /// built here can open (and lock) them.
    pub fn finish_writes(&self) -> Result<(), DiskReceiveError> {
        for t in &self.disks {
            if let Some(w) = t.writer.write().unwrap_or_else(|p| p.into_inner()).take() {
                w.flush()
                    .and_then(|()| w.close())
                    .map_err(|source| DiskReceiveError::Block {
                        name: t.offer.name.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Where the VM built here opens each disk before the commit: (the
    /// VM's disk index, the path, its format).
    pub fn open_paths(&self) -> Vec<(usize, PathBuf, DiskFormat)> {
        self.disks
            .iter()
            .map(|t| (t.offer.index as usize, t.fd_path(), t.format))
            .collect()
    }

    /// After the source's commit: gives every image its name. Returns
    /// (the VM's disk index, the path) of each. An image that cannot be
    /// named stays reachable through `/proc/self/fd` while the VM runs.
    pub fn commit(&self) -> Vec<(usize, Result<PathBuf, DiskReceiveError>)> {
        self.disks
            .iter()
            .map(|t| (t.offer.index as usize, link(t).map(|()| t.path.clone())))
            .collect()
    }
}

/// Names the unnamed file of `t` at `t.path` (never replacing a file).
fn link(t: &Target) -> Result<(), DiskReceiveError> {
    let err = |source| DiskReceiveError::Link {
        path: t.path.clone(),
        source,
    };
    let from = std::ffi::CString::new(t.fd_path().as_os_str().as_bytes())
        .map_err(|e| err(std::io::Error::other(e)))?;
    let to = std::ffi::CString::new(t.path.as_os_str().as_bytes())
        .map_err(|e| err(std::io::Error::other(e)))?;
    // SAFETY: both are NUL-terminated strings that outlive the call;
    // linkat only reads them. Following /proc/self/fd/N names the open
    // unnamed file (the documented way to link an O_TMPFILE file without
    // CAP_DAC_READ_SEARCH).
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Reusable buffers of one receiving thread.
#[derive(Default)]
pub struct DiskApplier {
    raw: Vec<u8>,
    packed: Vec<u8>,
    decompressor: Option<Decompressor>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk_mirror::DIRTY_GRANULARITY;
    use std::os::fd::AsFd;

    fn offer(name: &str, format: &str) -> DiskOffer {
        DiskOffer {
            index: 0,
            name: name.into(),
            format: format.into(),
            capacity: 8 << 20,
            vhdx_block_size: 1 << 20,
            logical_sector: 512,
            physical_sector: 4096,
            vhdx_type: "dynamic".into(),
            allocated: 0,
        }
    }

    fn frame(h: &DiskChunkHeader, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        h.encode(&mut b);
        b.extend_from_slice(data);
        b
    }

    /// Feeds `payload` through a pipe to `apply`.
    fn apply(t: &DiskTargets, payload: &[u8]) -> Result<u64, DiskReceiveError> {
        let (r, mut w) = std::io::pipe().unwrap();
        std::io::Write::write_all(&mut w, payload).unwrap();
        drop(w);
        t.apply(r.as_fd(), payload.len(), &mut DiskApplier::default())
    }

    #[test]
    fn chunks_land_and_nothing_stays_without_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        for format in ["vhdx", "raw"] {
            let name = format!("d.{format}");
            let t = DiskTargets::create(dir.path(), &[offer(&name, format)], 1).unwrap();
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "unnamed");
            let data = vec![0xa5u8; 4096];
            let h = DiskChunkHeader {
                disk: 0,
                offset: 3 << 20,
                len: 4096,
                codec: Codec::None,
                zero: false,
            };
            assert_eq!(apply(&t, &frame(&h, &data)).unwrap(), 4096);
            // Beyond the capacity, another disk, a short body: refused.
            let far = DiskChunkHeader {
                offset: 8 << 20,
                ..h.clone()
            };
            assert!(matches!(
                apply(&t, &frame(&far, &data)),
                Err(DiskReceiveError::OutOfRange { .. })
            ));
            let other = DiskChunkHeader {
                disk: 1,
                ..h.clone()
            };
            assert!(apply(&t, &frame(&other, &data)).is_err());
            assert!(apply(&t, &frame(&h, &data[..100])).is_err());
            t.finish_writes().unwrap();
            let (_, fd_path, f) = t.open_paths().remove(0);
            let img = tern_block::open(&tern_block::OpenOptions {
                format: Some(f),
                ..tern_block::OpenOptions::new(fd_path).read_only(true)
            })
            .unwrap();
            let mut back = vec![0u8; 4096];
            img.read_at(&mut back, 3 << 20).unwrap();
            assert_eq!(back, data);
            img.read_at(&mut back, DIRTY_GRANULARITY).unwrap();
            assert!(back.iter().all(|&b| b == 0));
            img.close().unwrap();
            drop(t);
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn a_commit_names_the_images() {
        let dir = tempfile::tempdir().unwrap();
        let t = DiskTargets::create(dir.path(), &[offer("a.vhdx", "vhdx")], 1).unwrap();
        t.finish_writes().unwrap();
        let named = t.commit();
        let path = named[0].1.as_ref().unwrap();
        assert_eq!(path, &dir.path().join("a.vhdx"));
        drop(t);
        let img = tern_block::open(&tern_block::OpenOptions::new(path)).unwrap();
        assert_eq!(img.capacity(), 8 << 20);
        img.close().unwrap();
    }

    #[test]
    fn bad_offers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("taken.vhdx"), b"x").unwrap();
        let refuse = |offers: &[DiskOffer], n| {
            DiskTargets::create(dir.path(), offers, n)
                .unwrap_err()
                .to_string()
        };
        assert!(refuse(&[offer("taken.vhdx", "vhdx")], 1).contains("exists"));
        assert!(refuse(&[offer("../x.vhdx", "vhdx")], 1).contains("plain file name"));
        assert!(refuse(&[offer("x.qcow2", "qcow2")], 1).contains("unknown format"));
        assert!(refuse(&[offer("x.vhdx", "vhdx")], 2).contains("1 disks offered"));
        let mut big = offer("x.vhdx", "vhdx");
        big.capacity = u64::MAX;
        assert!(refuse(&[big], 1).contains("capacity"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
