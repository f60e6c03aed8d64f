//! The source side of shared-nothing migration: mirrors the VM's disks to
//! the destination over the data channels while memory is copied.
//!
//! The first pass copies every allocated range (a dynamic VHDX stays
//! sparse: unallocated blocks are never read, and all-zero windows of
//! allocated ones are skipped, since the destination's new image reads
//! zeros there); each later round copies the ranges the guest wrote in
//! the meantime (the block layer's dirty log); the last round runs inside
//! the pause, once the queues are held and flushed, from the images
//! opened read-only. The source only ever reads its images: whatever
//! happens, it runs on with them, and it keeps them after a success.

use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tern_block::{BlockBackend, BlockError, DiskFormat};
use tern_vmm::devices::DiskError;
use tern_vmm::Vm;

use crate::compress::Compressor;
use crate::disk_wire::{
    disk_channel, split_windows, DiskAcceptance, DiskChunkHeader, DiskOffer, DISK_CHUNK_HEADER,
    DISK_WINDOW,
};
use crate::wire::{Codec, Kind};

/// Bytes one bit of a disk's dirty log covers: small enough that a
/// guest's 4 KiB writes resend little, large enough that the log of a
/// 4 GiB disk is 8 KiB.
pub const DIRTY_GRANULARITY: u64 = 64 << 10;

/// Errors mirroring the disks.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The VM's disk layer refused (layout, log, read).
    #[error("disk {index}")]
    Disk {
        /// The disk.
        index: usize,
        /// Why.
        #[source]
        source: DiskError,
    },
    /// A disk image could not be opened or read for the last round.
    #[error("disk {index}: cannot read {}", path.display())]
    Image {
        /// The disk.
        index: usize,
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// A disk's image has no file name to recreate at the destination.
    #[error("disk {index}: {} has no file name", path.display())]
    NoName {
        /// The disk.
        index: usize,
        /// The image.
        path: PathBuf,
    },
    /// The destination does not mirror disks (it speaks an older
    /// protocol, or was started without a directory for them).
    #[error("the destination does not take disks (an older Tern, or no --dest-dir there)")]
    NotOffered,
    /// The destination refused the disks.
    #[error("the destination refused the disks: {0}")]
    Refused(String),
    /// Sending a chunk failed.
    #[error("sending disk data failed")]
    Io(#[from] std::io::Error),
}

/// One range of one disk to send, inside one window.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Piece {
    disk: u32,
    range: Range<u64>,
}

/// The images opened read-only for the last round, in disk order.
type Images = Arc<Vec<Arc<dyn BlockBackend>>>;

/// A disk being mirrored.
struct Mirrored {
    index: usize,
    path: PathBuf,
    format: DiskFormat,
    capacity: u64,
}

/// The mirror of every disk of a VM, shared by the channel threads.
pub struct DiskMirror<'a> {
    vm: &'a Vm,
    disks: Vec<Mirrored>,
    /// What the current round sends.
    round: Mutex<Arc<Vec<Piece>>>,
    /// The current round is the first pass (zero windows are skipped).
    first: AtomicBool,
    /// Images opened read-only for the last round (the VM's are closed).
    images: Mutex<Option<Images>>,
    logging: AtomicBool,
    /// Bytes of disk the first pass covers.
    total: u64,
    /// Bytes of disk sent so far (all rounds).
    sent: AtomicU64,
    /// Wire bytes of disk chunks so far.
    wire: AtomicU64,
}

impl<'a> DiskMirror<'a> {
    /// A mirror of `vm`'s disks and the offers that describe them to the
    /// destination.
    pub fn new(vm: &'a Vm) -> Result<(DiskMirror<'a>, Vec<DiskOffer>), MirrorError> {
        let disks = vm.disks();
        let mut mirrored = Vec::new();
        let mut offers = Vec::new();
        let mut total = 0;
        for index in 0..disks.len() {
            let err = |source| MirrorError::Disk { index, source };
            let layout = disks.layout(index).map_err(err)?;
            let path = disks.path(index).map_err(err)?;
            let allocated: u64 = disks
                .allocated(index)
                .map_err(err)?
                .iter()
                .map(|r| r.end.min(layout.capacity).saturating_sub(r.start))
                .sum();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| MirrorError::NoName {
                    index,
                    path: path.clone(),
                })?
                .to_string();
            total += allocated;
            offers.push(DiskOffer {
                index: index as u32,
                name,
                format: layout.format.name().into(),
                capacity: layout.capacity,
                vhdx_block_size: layout.vhdx_block_size.unwrap_or(0),
                logical_sector: layout.logical_sector,
                physical_sector: layout.physical_sector,
                vhdx_type: match layout.format {
                    DiskFormat::Raw => String::new(),
                    // A differencing chain is copied flattened.
                    DiskFormat::Vhdx => match layout.vhdx_type {
                        Some(tern_block::VhdxType::Fixed) => "fixed".into(),
                        _ => "dynamic".into(),
                    },
                },
                allocated,
            });
            mirrored.push(Mirrored {
                index,
                path,
                format: layout.format,
                capacity: layout.capacity,
            });
        }
        Ok((
            DiskMirror {
                vm,
                disks: mirrored,
                round: Mutex::new(Arc::new(Vec::new())),
                first: AtomicBool::new(true),
                images: Mutex::new(None),
                logging: AtomicBool::new(false),
                total,
                sent: AtomicU64::new(0),
                wire: AtomicU64::new(0),
            },
            offers,
        ))
    }

    /// Checks the destination's answer to the offers.
    pub fn check_acceptance(answer: Option<&DiskAcceptance>) -> Result<(), MirrorError> {
        match answer {
            None => Err(MirrorError::NotOffered),
            Some(a) if !a.accepted => Err(MirrorError::Refused(a.error.clone())),
            Some(_) => Ok(()),
        }
    }

    /// Bytes the first pass copies.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes of disk sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Wire bytes of disk chunks so far.
    pub fn wire(&self) -> u64 {
        self.wire.load(Ordering::Relaxed)
    }

    /// Starts the dirty logs, then makes the first pass (every allocated
    /// range) the current round: a write after this is in a later round.
    pub fn start(&self) -> Result<u64, MirrorError> {
        let disks = self.vm.disks();
        for d in &self.disks {
            disks
                .start_dirty_log(d.index, DIRTY_GRANULARITY)
                .map_err(|source| MirrorError::Disk {
                    index: d.index,
                    source,
                })?;
            self.logging.store(true, Ordering::SeqCst);
        }
        let mut pieces = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            let ranges = disks
                .allocated(d.index)
                .map_err(|source| MirrorError::Disk {
                    index: d.index,
                    source,
                })?;
            push_pieces(&mut pieces, i as u32, ranges, d.capacity);
        }
        self.first.store(true, Ordering::SeqCst);
        Ok(self.set_round(pieces))
    }

    /// Makes what the guest wrote since the last round the current round;
    /// returns its bytes.
    pub fn next_round(&self) -> Result<u64, MirrorError> {
        let disks = self.vm.disks();
        let mut pieces = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            let dirty = disks
                .take_dirty(d.index)
                .map_err(|source| MirrorError::Disk {
                    index: d.index,
                    source,
                })?;
            if let Some(bitmap) = dirty {
                push_pieces(&mut pieces, i as u32, bitmap.ranges(), d.capacity);
            }
        }
        self.first.store(false, Ordering::SeqCst);
        Ok(self.set_round(pieces))
    }

    /// The last round, inside the pause after the VM's disks were
    /// released (queues held, flushed, images closed): the last writes,
    /// read from the images opened read-only.
    pub fn final_round(&self) -> Result<u64, MirrorError> {
        let mut images = Vec::new();
        for d in &self.disks {
            let opts = tern_block::OpenOptions {
                format: Some(d.format),
                ..tern_block::OpenOptions::new(&d.path).read_only(true)
            };
            let image = tern_block::open(&opts).map_err(|source| MirrorError::Image {
                index: d.index,
                path: d.path.clone(),
                source,
            })?;
            images.push(image);
        }
        *self.images.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(images));
        // What the last precopy round left (taken from the log to judge
        // convergence, never sent), then what the guest wrote since.
        let unsent = self.round.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.next_round()?;
        let mut round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Piece> = unsent.iter().cloned().collect();
        all.extend(round.iter().cloned());
        *round = Arc::new(all);
        Ok(round.iter().map(|p| p.range.end - p.range.start).sum())
    }

    fn set_round(&self, pieces: Vec<Piece>) -> u64 {
        let bytes = pieces.iter().map(|p| p.range.end - p.range.start).sum();
        *self.round.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(pieces);
        bytes
    }

    /// Sends the current round's pieces that belong to channel `index` of
    /// `n`. `codec` says how to compress, `cancelled` is asked before each
    /// chunk, `pace` before each write with its wire bytes (the bandwidth
    /// cap). Returns the wire bytes written.
    pub fn send_channel(
        &self,
        stream: &mut impl Write,
        index: u64,
        n: u64,
        codec: &dyn Fn() -> Codec,
        cancelled: &dyn Fn() -> bool,
        pace: &dyn Fn(u64),
    ) -> Result<u64, MirrorError> {
        let round = self.round.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let images = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let first = self.first.load(Ordering::SeqCst);
        let mut enc = Encoder::default();
        let mut wire = 0;
        for p in round
            .iter()
            .filter(|p| disk_channel(p.disk, p.range.start, n) == index)
        {
            if cancelled() {
                return Err(std::io::Error::other("cancelled").into());
            }
            let d = &self.disks[p.disk as usize];
            let len = (p.range.end - p.range.start) as usize;
            enc.raw.resize(len, 0);
            match &images {
                Some(imgs) => imgs[p.disk as usize]
                    .read_at(&mut enc.raw, p.range.start)
                    .map_err(|source| MirrorError::Image {
                        index: d.index,
                        path: d.path.clone(),
                        source,
                    })?,
                None => self
                    .vm
                    .disks()
                    .read_at(d.index, &mut enc.raw, p.range.start)
                    .map_err(|source| MirrorError::Disk {
                        index: d.index,
                        source,
                    })?,
            }
            let zero = enc.raw.iter().all(|&b| b == 0);
            if zero && first {
                // The destination's new image reads zeros there already.
                self.sent.fetch_add(len as u64, Ordering::Relaxed);
                continue;
            }
            let frame = enc.frame(p, zero, codec());
            pace(frame.len() as u64);
            stream.write_all(frame)?;
            wire += frame.len() as u64;
            self.sent.fetch_add(len as u64, Ordering::Relaxed);
            self.wire.fetch_add(frame.len() as u64, Ordering::Relaxed);
        }
        Ok(wire)
    }

    /// Ends the mirror: closes the images of the last round and stops the
    /// dirty logs. Whatever happened, the VM's own images were only read.
    pub fn finish(&self) {
        *self.images.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if self.logging.swap(false, Ordering::SeqCst) {
            for d in &self.disks {
                let _ = self.vm.disks().stop_dirty_log(d.index);
            }
        }
    }
}

impl Drop for DiskMirror<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Adds `ranges` of disk `disk` (clipped to `capacity`, split at windows).
fn push_pieces(
    out: &mut Vec<Piece>,
    disk: u32,
    ranges: impl IntoIterator<Item = Range<u64>>,
    capacity: u64,
) {
    for r in ranges {
        let r = r.start.min(capacity)..r.end.min(capacity);
        out.extend(split_windows(r).map(|range| Piece { disk, range }));
    }
}

/// Buffers of one sending thread.
#[derive(Default)]
struct Encoder {
    raw: Vec<u8>,
    packed: Vec<u8>,
    frame: Vec<u8>,
    compressor: Option<Compressor>,
}

impl Encoder {
    /// The frame (head, chunk header, data) of `p`, whose data is in
    /// `self.raw`.
    fn frame(&mut self, p: &Piece, zero: bool, codec: Codec) -> &[u8] {
        // Disk chunks are compressed one by one: the memory channels'
        // zstd stream (and page deltas) do not apply to them, plain zstd
        // does.
        let codec = match codec {
            Codec::StreamZstd => Codec::Zstd,
            Codec::Delta => Codec::None,
            c => c,
        };
        let packed = !zero
            && codec != Codec::None
            && self
                .compressor
                .get_or_insert_with(Compressor::new)
                .compress(codec, &self.raw, &mut self.packed);
        let data: &[u8] = match (zero, packed) {
            (true, _) => &[],
            (false, true) => &self.packed,
            (false, false) => &self.raw,
        };
        let h = DiskChunkHeader {
            disk: p.disk,
            offset: p.range.start,
            len: (p.range.end - p.range.start) as u32,
            codec: if packed { codec } else { Codec::None },
            zero,
        };
        self.frame.clear();
        let body = 1 + DISK_CHUNK_HEADER + data.len();
        self.frame.extend_from_slice(&(body as u32).to_le_bytes());
        self.frame.push(Kind::DiskChunk as u8);
        h.encode(&mut self.frame);
        self.frame.extend_from_slice(data);
        debug_assert!(data.len() as u64 <= DISK_WINDOW);
        &self.frame
    }
}
