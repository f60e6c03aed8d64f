//! Storage live migration on one host: `storage-move` copies a running
//! VM's disk image into another directory and puts the device on the
//! copy, without stopping the VM.
//!
//! The job, on its own thread: create the target like the source (same
//! format and block size unless a conversion is asked for; a dynamic VHDX
//! stays sparse), start the disk's dirty log, copy the allocated ranges,
//! then copy what the guest wrote meanwhile, round by round, until a
//! round is small (or [`MAX_ROUNDS`]); then [`Disks::pivot`] holds the
//! queue (requests wait in the ring), copies the last ranges and switches
//! the device onto the copy. Only after the pivot, and once the copy is
//! flushed, is the old image removed, and only when no one else holds it
//! (an exclusive lock is taken on it first). Cancel or any failure before the pivot leaves
//! the VM on the old image and removes the partial target.
//!
//! Refused: read-only disks (other VMs may share them), a disk whose VM
//! has checkpoints (their differencing chain names the old image; delete
//! the checkpoints first), and any move while a migration runs (and the
//! other way round, see [`crate::handlers`]).
//!
//! [`Disks::pivot`]: tern_vmm::devices::Disks::pivot

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_block::{BlockBackend, DiskFormat as BlockFormat};
use tern_vmm::devices::{DiskError, COPY_CHUNK};
use tern_vmm::Vm;
use tern_worker_proto::requests::Ack;
use tern_worker_proto::storage_move::{
    StorageMove, StorageMovePhase, StorageMoveProgress, StorageMoveReply,
};
use tern_worker_proto::{DiskFormat, WorkerError};

use crate::error_chain;

/// Dirty rounds before the pivot copies whatever is left.
pub const MAX_ROUNDS: u32 = 30;
/// A round that copied at most this much ends the rounds: what the guest
/// writes during it is copied inside the pivot, in milliseconds.
pub const SMALL_ROUND: u64 = 4 << 20;
/// Bytes of a first-pass piece (between cancel checks and progress).
const PIECE: u64 = 8 << 20;

/// Why a move failed.
#[derive(Debug, thiserror::Error)]
enum MoveError {
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("cannot make the new image")]
    Create(#[source] tern_block::BlockError),
}

/// One move.
struct Job {
    progress: Mutex<StorageMoveProgress>,
    cancel: AtomicBool,
    started: Instant,
}

impl Job {
    fn update(&self, f: impl FnOnce(&mut StorageMoveProgress)) {
        let mut g = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
        g.elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
    }

    fn snapshot(&self) -> StorageMoveProgress {
        let mut s = self
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !s.phase.is_final() {
            s.elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        }
        s
    }

    fn check_cancel(&self) -> Result<(), MoveError> {
        if self.cancel.load(Ordering::SeqCst) {
            Err(MoveError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// The worker's current (or last) storage move.
#[derive(Default)]
pub struct StorageMoves {
    job: Mutex<Option<Arc<Job>>>,
}

fn block_format(f: DiskFormat) -> BlockFormat {
    match f {
        DiskFormat::Raw => BlockFormat::Raw,
        DiskFormat::Vhdx => BlockFormat::Vhdx,
    }
}

fn proto_format(f: BlockFormat) -> DiskFormat {
    match f {
        BlockFormat::Raw => DiskFormat::Raw,
        BlockFormat::Vhdx => DiskFormat::Vhdx,
    }
}

/// The new image's path: the old file name in `dir` when its name says
/// `format` (`.vhdx`/`.avhdx` is VHDX, anything else raw: how the image
/// is opened again later), else its stem with `.vhdx` or `.raw`.
pub fn target_path(source: &Path, dir: &Path, format: BlockFormat) -> PathBuf {
    let name = source.file_name().map(PathBuf::from).unwrap_or_default();
    if BlockFormat::from_path(&name) == format && name.extension().is_some_and(|e| e != "avhdx") {
        return dir.join(name);
    }
    let mut name = source.file_stem().unwrap_or_default().to_os_string();
    name.push(match format {
        BlockFormat::Raw => ".raw",
        BlockFormat::Vhdx => ".vhdx",
    });
    dir.join(name)
}

/// Granularity of the dirty log for a disk of `capacity` bytes: 4 KiB
/// (the guest's write unit) up to 16 GiB, then coarser so the bitmap
/// stays at most 4 Mi bits (512 KiB).
pub fn granularity(capacity: u64) -> u64 {
    (capacity >> 22).max(4096).next_power_of_two()
}

impl StorageMoves {
    fn current(&self) -> Option<Arc<Job>> {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True while a move runs.
    pub fn running(&self) -> bool {
        self.current()
            .is_some_and(|j| !j.snapshot().phase.is_final())
    }

    /// `storage-move`: checks the request and starts the move.
    pub fn start(
        &self,
        vm: &Arc<Vm>,
        has_checkpoints: bool,
        req: &StorageMove,
    ) -> Result<StorageMoveReply, WorkerError> {
        if self.running() {
            return Err(WorkerError::busy("a storage move is already running"));
        }
        let disks = vm.disks();
        let refuse = WorkerError::bad_request;
        let status = disks.status();
        let Some(d) = status.get(req.disk) else {
            return Err(WorkerError::not_found(format!(
                "no disk {} (the VM has {})",
                req.disk,
                status.len()
            )));
        };
        if d.read_only {
            return Err(refuse(format!(
                "disk {} is read-only: other VMs may share it; copy it while none uses it",
                req.disk
            )));
        }
        let source = disks.path(req.disk).map_err(|e| refuse(error_chain(&e)))?;
        let configured = disks
            .configured_path(req.disk)
            .map_err(|e| refuse(error_chain(&e)))?;
        if has_checkpoints || source != configured {
            return Err(WorkerError::conflict(format!(
                "disk {} has checkpoints (its differencing chain names {}): delete them before moving it",
                req.disk,
                configured.display()
            )));
        }
        if disks.released() {
            return Err(WorkerError::conflict(
                "the disks are handed over to a migration",
            ));
        }
        if !req.to_dir.is_absolute() {
            return Err(refuse(format!(
                "target directory {} must be an absolute path",
                req.to_dir.display()
            )));
        }
        let dir = req.to_dir.canonicalize().map_err(|e| {
            refuse(format!(
                "target directory {} cannot be used: {e}",
                req.to_dir.display()
            ))
        })?;
        if !dir.is_dir() {
            return Err(refuse(format!("{} is not a directory", dir.display())));
        }
        let format = req.format.map(block_format).unwrap_or(d.format);
        let target = target_path(&source, &dir, format);
        let same = source
            .parent()
            .and_then(|p| p.canonicalize().ok())
            .is_some_and(|p| p == dir);
        if same && target.file_name() == source.file_name() {
            return Err(refuse(format!(
                "disk {} is already in {}",
                req.disk,
                dir.display()
            )));
        }
        if target.exists() {
            return Err(WorkerError::conflict(format!(
                "{} already exists",
                target.display()
            )));
        }
        let mut slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
        if slot
            .as_ref()
            .is_some_and(|j| !j.snapshot().phase.is_final())
        {
            return Err(WorkerError::busy("a storage move is already running"));
        }
        let job = Arc::new(Job {
            progress: Mutex::new(StorageMoveProgress {
                phase: StorageMovePhase::Setup,
                disk: req.disk,
                source: source.clone(),
                target: target.clone(),
                format: Some(proto_format(format)),
                ..StorageMoveProgress::default()
            }),
            cancel: AtomicBool::new(false),
            started: Instant::now(),
        });
        *slot = Some(job.clone());
        drop(slot);
        let vm = vm.clone();
        let plan = Plan {
            disk: req.disk,
            source,
            target: target.clone(),
            format,
            bandwidth: req.bandwidth.filter(|&b| b > 0),
        };
        std::thread::Builder::new()
            .name("storage-move".into())
            .spawn(move || run(&vm, &plan, &job))
            .map_err(|e| WorkerError::failed(format!("cannot start the move thread: {e}")))?;
        Ok(StorageMoveReply {
            target,
            phase: StorageMovePhase::Setup,
        })
    }

    /// Cancels a running move and waits up to `timeout` for it to end
    /// (the VM is stopping: its partial copy must go first).
    pub fn stop(&self, timeout: Duration) {
        let Some(j) = self.current() else { return };
        j.cancel.store(true, Ordering::SeqCst);
        let t = Instant::now();
        while !j.snapshot().phase.is_final() && t.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `storage-move-status`.
    pub fn status(&self) -> StorageMoveProgress {
        self.current().map(|j| j.snapshot()).unwrap_or_default()
    }

    /// `storage-move-cancel`.
    pub fn cancel(&self) -> Result<Ack, WorkerError> {
        match self.current() {
            Some(j) if !j.snapshot().phase.is_final() => {
                j.cancel.store(true, Ordering::SeqCst);
                Ok(Ack {})
            }
            _ => Err(WorkerError::conflict("no storage move is running")),
        }
    }
}

/// What a move does, checked.
struct Plan {
    disk: usize,
    source: PathBuf,
    target: PathBuf,
    format: BlockFormat,
    bandwidth: Option<u64>,
}

/// Keeps a copy under `bandwidth` bytes/s by sleeping when ahead.
struct Pace {
    bandwidth: Option<u64>,
    since: Instant,
    bytes: u64,
}

impl Pace {
    fn take(&mut self, bytes: u64) {
        let Some(bw) = self.bandwidth else { return };
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / bw as f64);
        if let Some(wait) = due.checked_sub(self.since.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// The move thread.
fn run(vm: &Vm, plan: &Plan, job: &Job) {
    let disks = vm.disks();
    let r = copy_and_pivot(vm, plan, job);
    // Whatever happened, this move's log ends here (a pivot stops it too).
    let _ = disks.stop_dirty_log(plan.disk);
    match r {
        Ok(()) => {
            // The copy durable before the old image goes (a crash now
            // leaves the old image, which the registry still names).
            let removed = disks
                .flush_one(plan.disk)
                .map_err(|e| {
                    format!(
                        "the old image {} is kept: flushing the new one failed: {}",
                        plan.source.display(),
                        error_chain(&e)
                    )
                })
                .and_then(|()| remove_old(&plan.source));
            let s = job.snapshot();
            eprintln!(
                "tern: disk {} moved to {} in {:.0} ms ({} bytes, {} rounds, queue held {:.1} ms)",
                plan.disk,
                plan.target.display(),
                s.elapsed_ms,
                s.copied_bytes,
                s.rounds,
                s.held_ms.unwrap_or(0.0)
            );
            job.update(|p| {
                p.phase = StorageMovePhase::Completed;
                match removed {
                    Ok(()) => p.old_removed = true,
                    Err(e) => {
                        eprintln!("tern: disk {}: {e}", plan.disk);
                        p.error = Some(e);
                    }
                }
            });
        }
        Err(e) => {
            // The VM never left the old image; the copy goes.
            if let Err(rm) = std::fs::remove_file(&plan.target) {
                if rm.kind() != std::io::ErrorKind::NotFound {
                    eprintln!(
                        "tern: error: cannot remove the partial copy {}: {rm}",
                        plan.target.display()
                    );
                }
            }
            let cancelled = matches!(e, MoveError::Cancelled);
            let msg = error_chain(&e);
            eprintln!(
                "tern: moving disk {} to {} {}; it stays on {}",
                plan.disk,
                plan.target.display(),
                if cancelled {
                    "was cancelled".to_string()
                } else {
                    format!("failed: {msg}")
                },
                plan.source.display()
            );
            job.update(|p| {
                p.phase = if cancelled {
                    StorageMovePhase::Cancelled
                } else {
                    StorageMovePhase::Failed
                };
                p.error = (!cancelled).then_some(msg);
            });
        }
    }
}

fn copy_and_pivot(vm: &Vm, plan: &Plan, job: &Job) -> Result<(), MoveError> {
    let disks = vm.disks();
    let i = plan.disk;
    let layout = disks.layout(i)?.with_format(plan.format);
    tern_block::create(&plan.target, &layout).map_err(MoveError::Create)?;
    let target: Arc<dyn BlockBackend> = tern_block::open(&tern_block::OpenOptions {
        format: Some(plan.format),
        ..tern_block::OpenOptions::new(&plan.target)
    })
    .map_err(MoveError::Create)?;
    let r = copy_into(vm, plan, job, &target);
    if r.is_err() {
        // Close before the caller removes the file (a VHDX writes on close).
        let _ = target.close();
        return r;
    }
    job.check_cancel()?;
    job.update(|p| p.phase = StorageMovePhase::Pivot);
    // On error the device stays on the old image and the copy is closed
    // with its last holder, pivot's argument.
    let report = disks.pivot(i, target, &plan.target)?;
    job.update(|p| {
        p.copied_bytes += report.final_bytes;
        p.held_ms = Some(report.held.as_secs_f64() * 1e3);
    });
    Ok(())
}

/// The first pass and the dirty rounds.
fn copy_into(
    vm: &Vm,
    plan: &Plan,
    job: &Job,
    target: &Arc<dyn BlockBackend>,
) -> Result<(), MoveError> {
    let disks = vm.disks();
    let i = plan.disk;
    let capacity = disks.layout(i)?.capacity;
    disks.start_dirty_log(i, granularity(capacity))?;
    let mut pace = Pace {
        bandwidth: plan.bandwidth,
        since: Instant::now(),
        bytes: 0,
    };
    let mut buf = Vec::with_capacity(COPY_CHUNK);
    // After the log started: anything written later is marked.
    let allocated = disks.allocated(i)?;
    let total: u64 = allocated.iter().map(|r| r.end - r.start).sum();
    job.update(|p| {
        p.phase = StorageMovePhase::Copy;
        p.total_bytes = total;
    });
    for r in allocated {
        let mut off = r.start;
        while off < r.end {
            job.check_cancel()?;
            let end = (off + PIECE).min(r.end);
            let n = disks.copy_to(i, &**target, off..end, true, &mut buf)?;
            job.update(|p| p.copied_bytes += n);
            pace.take(n);
            off = end;
        }
    }
    job.update(|p| p.phase = StorageMovePhase::Dirty);
    let mut rounds = 0;
    loop {
        job.check_cancel()?;
        let Some(dirty) = disks.take_dirty(i)? else {
            return Err(MoveError::Disk(DiskError::Mirror {
                index: i,
                what: "tracking writes (the dirty log stopped)",
                source: tern_block::BlockError::Closed,
            }));
        };
        let bytes = dirty.dirty_bytes();
        for r in dirty.ranges() {
            job.check_cancel()?;
            let n = disks.copy_to(i, &**target, r, false, &mut buf)?;
            job.update(|p| p.copied_bytes += n);
            pace.take(n);
        }
        // Flushed while the guest runs, so the pivot's flush covers only
        // its last ranges (a first flush of a fresh 256 MiB copy held the
        // queue 1.4 s).
        target.flush().map_err(|source| DiskError::Mirror {
            index: i,
            what: "flushing the copy",
            source,
        })?;
        rounds += 1;
        job.update(|p| {
            p.rounds = rounds;
            p.dirty_bytes = bytes;
        });
        if bytes <= SMALL_ROUND || rounds >= MAX_ROUNDS {
            return Ok(());
        }
    }
}

/// Removes the old image after the pivot, unless someone else opened it
/// since (an exclusive lock is taken first and held while it goes).
fn remove_old(path: &Path) -> Result<(), String> {
    let keep = |why: String| format!("the old image {} is kept: {why}", path.display());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| keep(e.to_string()))?;
    tern_block::lock::lock(&f, path, tern_block::lock::LockKind::Exclusive)
        .map_err(|e| keep(error_chain(&e)))?;
    std::fs::remove_file(path).map_err(|e| keep(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_say_their_format() {
        let d = Path::new("/new");
        let t = |s: &str, f| target_path(Path::new(s), d, f);
        assert_eq!(t("/old/a.img", BlockFormat::Raw), d.join("a.img"));
        assert_eq!(t("/old/a.img", BlockFormat::Vhdx), d.join("a.vhdx"));
        assert_eq!(t("/old/a.vhdx", BlockFormat::Vhdx), d.join("a.vhdx"));
        assert_eq!(t("/old/a.vhdx", BlockFormat::Raw), d.join("a.raw"));
        // A differencing child flattens into a plain VHDX.
        assert_eq!(t("/old/c.avhdx", BlockFormat::Vhdx), d.join("c.vhdx"));
        assert_eq!(t("/old/noext", BlockFormat::Raw), d.join("noext.raw"));
        assert_eq!(t("/old/d.v1.img", BlockFormat::Vhdx), d.join("d.v1.vhdx"));
    }

    #[test]
    fn log_granularity_keeps_the_bitmap_small() {
        assert_eq!(granularity(256 << 20), 4096);
        assert_eq!(granularity(16 << 30), 4096);
        assert_eq!(granularity(64 << 30), 16384);
        assert_eq!(granularity(1 << 40), 1 << 18);
    }

    #[test]
    fn without_a_move_status_says_none_and_cancel_is_a_conflict() {
        let m = StorageMoves::default();
        assert_eq!(m.status().phase, StorageMovePhase::None);
        assert!(!m.running());
        assert_eq!(
            m.cancel().unwrap_err().code,
            tern_worker_proto::ErrorCode::Conflict
        );
    }

    #[test]
    fn pace_holds_a_copy_to_its_bandwidth() {
        let mut p = Pace {
            bandwidth: Some(100 << 20),
            since: Instant::now(),
            bytes: 0,
        };
        for _ in 0..10 {
            p.take(2 << 20);
        }
        // 20 MiB at 100 MiB/s: at least 200 ms.
        assert!(p.since.elapsed() >= Duration::from_millis(195));
    }

    #[test]
    fn the_old_image_stays_while_someone_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let held = tern_block::open(&tern_block::OpenOptions::new(&p)).unwrap();
        let e = remove_old(&p).unwrap_err();
        assert!(e.contains("is kept"), "{e}");
        assert!(p.exists());
        drop(held);
        remove_old(&p).unwrap();
        assert!(!p.exists());
    }
}
