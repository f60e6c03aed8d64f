//! The backend under a disk's virtio-blk device: replaceable while the
//! device runs (checkpoints, migration hand-over, storage moves), and
//! marking a dirty log for mirrors.

use std::ops::Range;
use std::sync::Arc;

use tern_block::{BlockBackend, BlockError, DirtyLog, DiskLayout, ResizePolicy};

/// A backend that can be replaced under a running device. The disk id
/// and read-only flag stay those of the first image, so the guest sees one
/// disk throughout. Every write and discard through it marks its dirty
/// log (after the image has it), whichever image is under it.
pub(super) struct Switchable {
    inner: std::sync::RwLock<Arc<dyn BlockBackend>>,
    id: String,
    read_only: bool,
    /// The image is closed (a [`ClosedBackend`] stands in).
    closed: std::sync::atomic::AtomicBool,
    log: DirtyLog,
}

impl Switchable {
    pub(super) fn new(b: Arc<dyn BlockBackend>) -> Self {
        Switchable {
            id: b.id().to_string(),
            read_only: b.read_only(),
            inner: std::sync::RwLock::new(b),
            closed: std::sync::atomic::AtomicBool::new(false),
            log: DirtyLog::new(),
        }
    }

    /// The dirty log the guest's writes mark.
    pub(super) fn log(&self) -> &DirtyLog {
        &self.log
    }

    /// Puts `b` under the device and returns the image it replaces
    /// (still open: the caller closes it).
    pub(super) fn replace(&self, b: Arc<dyn BlockBackend>) -> Arc<dyn BlockBackend> {
        let old = std::mem::replace(
            &mut *self.inner.write().unwrap_or_else(|p| p.into_inner()),
            b,
        );
        self.closed
            .store(false, std::sync::atomic::Ordering::SeqCst);
        old
    }

    fn get(&self) -> std::sync::RwLockReadGuard<'_, Arc<dyn BlockBackend>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(super) fn set(&self, b: Arc<dyn BlockBackend>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = b;
        self.closed
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes the image and drops it (releasing every lock it held,
    /// its parent's included); I/O fails until [`Switchable::set`].
    pub(super) fn close_inner(&self) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let _ = g.close();
        let capacity = g.capacity();
        *g = Arc::new(ClosedBackend {
            capacity,
            format: g.format(),
        });
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl BlockBackend for Switchable {
    fn capacity(&self) -> u64 {
        self.get().capacity()
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn format(&self) -> tern_block::DiskFormat {
        self.get().format()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.get().read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        let r = self.get().write_at(buf, offset);
        // Marked even when it failed: part of it may have landed.
        self.log.mark(offset, buf.len() as u64);
        r
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.get().flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let r = self.get().discard(offset, len);
        self.log.mark(offset, len);
        r
    }
    fn resize(&self, new_size: u64, policy: &ResizePolicy) -> Result<(), BlockError> {
        let g = self.get();
        g.resize(new_size, policy)?;
        self.log.resize(g.capacity());
        Ok(())
    }
    fn close(&self) -> Result<(), BlockError> {
        self.get().close()
    }
    fn allocated(&self) -> Result<Vec<Range<u64>>, BlockError> {
        self.get().allocated()
    }
    fn layout(&self) -> DiskLayout {
        self.get().layout()
    }
}

/// Stands in for an image closed between a close and a switch.
struct ClosedBackend {
    capacity: u64,
    format: tern_block::DiskFormat,
}

impl BlockBackend for ClosedBackend {
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn read_only(&self) -> bool {
        true
    }
    fn id(&self) -> &str {
        ""
    }
    fn format(&self) -> tern_block::DiskFormat {
        self.format
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> Result<(), BlockError> {
        Err(BlockError::Closed)
    }
    fn write_at(&self, _: &[u8], _: u64) -> Result<(), BlockError> {
        Err(BlockError::Closed)
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), BlockError> {
        Err(BlockError::Closed)
    }
    fn resize(&self, _: u64, _: &ResizePolicy) -> Result<(), BlockError> {
        Err(BlockError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_discards_mark_the_log_across_switches() {
        let dir = tempfile::tempdir().unwrap();
        let img = |n: &str| {
            let p = dir.path().join(n);
            std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
            Arc::new(tern_block::raw::RawDisk::open(&p, false).unwrap())
        };
        let s = Switchable::new(img("a.img"));
        s.write_at(&[1; 512], 0).unwrap();
        assert!(s.log().take().is_none(), "off until started");
        assert!(s.log().start(s.capacity(), 4096));
        s.write_at(&[1; 512], 8192).unwrap();
        let old = s.replace(img("b.img"));
        old.close().unwrap();
        s.discard(65536, 4096).unwrap();
        assert!(s.write_at(&[1; 512], 1 << 20).is_err());
        let got: Vec<_> = s.log().take().unwrap().ranges().collect();
        assert_eq!(got, vec![8192..12288, 65536..69632]);
        s.resize(2 << 20, &ResizePolicy::default()).unwrap();
        let got: Vec<_> = s.log().take().unwrap().ranges().collect();
        assert_eq!(got, vec![1 << 20..2 << 20], "a grown tail is dirty");
        assert_eq!(s.layout(), tern_block::DiskLayout::raw(2 << 20));
    }
}
