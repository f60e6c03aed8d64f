//! Mirroring a running disk: its dirty log, what it holds, and the pivot
//! onto a copy (storage live migration; shared-nothing migration reads
//! the same log). The guest's writes mark the log in [`Switchable`]
//! whichever image is under the device.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_block::{BlockBackend, BlockError, DirtyBitmap, DiskLayout, ResizePolicy};

use super::{lock, DiskError, Disks, Switchable};

/// Bytes moved per read/write while copying.
pub const COPY_CHUNK: usize = 1 << 20;

/// What [`Disks::pivot`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PivotReport {
    /// Bytes copied while the queue was held.
    pub final_bytes: u64,
    /// How long the queue was held.
    pub held: std::time::Duration,
}

fn mirror_err(index: usize, what: &'static str) -> impl FnOnce(BlockError) -> DiskError {
    move |source| DiskError::Mirror {
        index,
        what,
        source,
    }
}

/// Copies `range` from `src` to `dst` in [`COPY_CHUNK`] pieces. With
/// `skip_zeros`, all-zero pieces are not written (the caller knows `dst`
/// reads zeros there: a fresh image stays sparse). Returns the bytes read.
fn copy_range(
    index: usize,
    src: &Switchable,
    dst: &dyn BlockBackend,
    range: Range<u64>,
    skip_zeros: bool,
    buf: &mut Vec<u8>,
) -> Result<u64, DiskError> {
    buf.resize(COPY_CHUNK, 0);
    let mut off = range.start;
    while off < range.end {
        let n = (range.end - off).min(COPY_CHUNK as u64) as usize;
        let b = &mut buf[..n];
        src.read_at(b, off)
            .map_err(mirror_err(index, "reading the disk"))?;
        if !(skip_zeros && b.iter().all(|&x| x == 0)) {
            dst.write_at(b, off)
                .map_err(mirror_err(index, "writing the copy"))?;
        }
        off += n as u64;
    }
    Ok(range.end - range.start)
}

impl Disks {
    /// Starts disk `index`'s dirty log with blocks of `granularity` bytes
    /// (rounded up to a power of two, at least 4 KiB). One mirror at a
    /// time: refused while the log runs.
    pub fn start_dirty_log(&self, index: usize, granularity: u64) -> Result<(), DiskError> {
        let d = self.get(index)?;
        if !d.backend.log().start(d.backend.capacity(), granularity) {
            return Err(DiskError::MirrorBusy(index));
        }
        Ok(())
    }

    /// What the guest wrote or discarded on disk `index` since the log
    /// started or was last taken; `None` when the log is off.
    pub fn take_dirty(&self, index: usize) -> Result<Option<DirtyBitmap>, DiskError> {
        Ok(self.get(index)?.backend.log().take())
    }

    /// Stops disk `index`'s dirty log (nothing if it is off).
    pub fn stop_dirty_log(&self, index: usize) -> Result<(), DiskError> {
        self.get(index)?.backend.log().stop();
        Ok(())
    }

    /// True while disk `index`'s dirty log runs.
    pub fn dirty_log_active(&self, index: usize) -> Result<bool, DiskError> {
        Ok(self.get(index)?.backend.log().is_active())
    }

    /// The ranges of disk `index` that may hold data
    /// ([`BlockBackend::allocated`]).
    pub fn allocated(&self, index: usize) -> Result<Vec<Range<u64>>, DiskError> {
        self.get(index)?
            .backend
            .allocated()
            .map_err(mirror_err(index, "listing the allocated ranges"))
    }

    /// How disk `index`'s image is laid out.
    pub fn layout(&self, index: usize) -> Result<DiskLayout, DiskError> {
        Ok(self.get(index)?.backend.layout())
    }

    /// Reads disk `index` as the guest sees it.
    pub fn read_at(&self, index: usize, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.get(index)?
            .backend
            .read_at(buf, offset)
            .map_err(mirror_err(index, "reading the disk"))
    }

    /// Makes disk `index`'s completed writes durable.
    pub fn flush_one(&self, index: usize) -> Result<(), DiskError> {
        let d = self.get(index)?;
        let _t = lock(&d.transport);
        d.backend
            .flush()
            .map_err(|source| DiskError::Flush { index, source })
    }

    /// The image disk `index` runs on now.
    pub fn path(&self, index: usize) -> Result<PathBuf, DiskError> {
        Ok(lock(&self.get(index)?.path).clone())
    }

    /// The image disk `index` was configured with (the VM's launch
    /// options); differs from [`Disks::path`] while a checkpoint's
    /// differencing image is in use.
    pub fn configured_path(&self, index: usize) -> Result<PathBuf, DiskError> {
        Ok(self.get(index)?.config.path.clone())
    }

    /// Copies `range` of disk `index` (what the guest reads) into
    /// `target`; `skip_zeros` leaves all-zero pieces unwritten (a fresh
    /// target reads zeros there). Runs beside the guest's I/O; returns
    /// the bytes read.
    pub fn copy_to(
        &self,
        index: usize,
        target: &dyn BlockBackend,
        range: Range<u64>,
        skip_zeros: bool,
        buf: &mut Vec<u8>,
    ) -> Result<u64, DiskError> {
        let d = self.get(index)?;
        copy_range(index, &d.backend, target, range, skip_zeros, buf)
    }

    /// Moves disk `index` onto `target`, a copy made while its dirty log
    /// ran: holds the queue (requests wait in the ring; the vCPUs run on),
    /// copies what the log marked since its last take, follows a resize,
    /// puts it under the device (the guest sees the same
    /// id and size), stops the log and closes the old image (its lock
    /// released). On error the disk stays on its old image and the log
    /// keeps running with every mark it had.
    pub fn pivot(
        &self,
        index: usize,
        target: Arc<dyn BlockBackend>,
        target_path: &Path,
    ) -> Result<PivotReport, DiskError> {
        let d = self.get(index)?;
        if self.released() {
            return Err(DiskError::Mirror {
                index,
                what: "pivoting",
                source: BlockError::Closed,
            });
        }
        let started = std::time::Instant::now();
        lock(&d.transport).set_frozen(true);
        let mut taken = Vec::new();
        let r = self.pivot_held(index, &target, target_path, &mut taken);
        if r.is_err() {
            // The old image stays; what was taken must be copied again by
            // the next attempt.
            for b in &taken {
                for r in b.ranges() {
                    d.backend.log().mark(r.start, r.end - r.start);
                }
            }
        }
        let mut t = lock(&d.transport);
        t.set_frozen(false);
        drop(t);
        let held = started.elapsed();
        let (final_bytes, old) = r?;
        // Closed once the guest runs on: closing flushes it, and its
        // flush took most of a second with the guest's writes in it.
        if let Err(e) = old.close() {
            // The VM runs on the copy; the old image is left as it is.
            eprintln!("tern: disk {index}: closing the old image after a move: {e}");
        }
        Ok(PivotReport { final_bytes, held })
    }

    fn pivot_held(
        &self,
        index: usize,
        target: &Arc<dyn BlockBackend>,
        target_path: &Path,
        taken: &mut Vec<DirtyBitmap>,
    ) -> Result<(u64, Arc<dyn BlockBackend>), DiskError> {
        let d = self.get(index)?;
        let mut buf = Vec::new();
        let mut copied = 0;
        let not_active = || DiskError::Mirror {
            index,
            what: "pivoting (the dirty log is off)",
            source: BlockError::Closed,
        };
        taken.push(d.backend.log().take().ok_or_else(not_active)?);
        for r in taken[0].ranges() {
            copied += copy_range(index, &d.backend, &**target, r, false, &mut buf)?;
        }
        // Under the transport lock nothing else changes the disk: a
        // resize that raced in marked its tail, taken here.
        let _t = lock(&d.transport);
        taken.push(d.backend.log().take().ok_or_else(not_active)?);
        let cap = d.backend.capacity();
        if target.capacity() != cap {
            target
                .resize(cap, &ResizePolicy::default())
                .map_err(mirror_err(index, "resizing the copy"))?;
        }
        for r in taken[1].ranges() {
            copied += copy_range(index, &d.backend, &**target, r, false, &mut buf)?;
        }
        // No flush while the queue is held (an fsync here held it for
        // hundreds of ms): writes the guest completed but did not flush
        // were not durable on the old image either, and the guest's next
        // flush request flushes the copy. The caller flushes it
        // ([`Disks::flush_one`]) before it removes the old image.
        let old = d.backend.replace(target.clone());
        d.backend.log().stop();
        *lock(&d.path) = target_path.into();
        Ok((copied, old))
    }
}
