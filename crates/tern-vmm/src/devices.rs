//! Devices in the VM: the virtio-mmio slots, and the disks (virtio-blk),
//! their interrupts, how the guest learns about them, and the handles the
//! worker uses at run time (QoS limits, online resize, QoS events). NICs
//! are in [`nics`].
//!
//! Slot `i` has its register window at [`VIRTIO_MMIO_BASE`]` + i * 4 KiB`
//! (in the MMIO hole) and interrupt GSI [`VIRTIO_GSI_BASE`]` + i` (an
//! IOAPIC pin, signalled through an irqfd). Disks take the first slots,
//! NICs the ones after them; [`mmio_windows`] lists every slot in use.

mod disk_mirror;
pub use disk_mirror::{PivotReport, COPY_CHUNK};
pub mod nics;
pub mod scsi;
mod switchable;
pub mod vsock;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvm_ioctls::VmFd;
use switchable::Switchable;
use tern_block::qos::{Clock, Qos, QosError, QosEvent, SystemClock};
pub use tern_block::qos::{QosEventKind, QosLimits};
use tern_block::BlockBackend;
pub use tern_block::{BlockError, ResizePolicy};
use tern_devices::virtio::block::{Block, BlockStats};
use tern_devices::virtio::mmio::{MmioTransport, MMIO_WINDOW};
use tern_devices::virtio::Timer;
use tern_devices::Bus;
use tern_probe_abi::{DeviceInfo, DEVICE_VIRTIO_BLK};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMem;

/// Guest-physical base of the first virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// GSI of the first virtio device.
pub const VIRTIO_GSI_BASE: u32 = 16;
/// Most virtio devices, disks and NICs together (IOAPIC pins 16..23,
/// and the probe's device table).
pub const MAX_DEVICES: usize = tern_probe_abi::MAX_DEVICES;
/// Most disks.
pub const MAX_DISKS: usize = MAX_DEVICES;

/// Guest-physical base of virtio-mmio slot `slot`.
pub fn slot_base(slot: usize) -> u64 {
    VIRTIO_MMIO_BASE + slot as u64 * MMIO_WINDOW
}

/// Interrupt GSI of virtio-mmio slot `slot`.
pub fn slot_gsi(slot: usize) -> u32 {
    VIRTIO_GSI_BASE + slot as u32
}

/// One virtio-mmio device's register window and interrupt, as a guest's
/// firmware tables (ACPI DSDT) or command line describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioWindow {
    /// Guest-physical base.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// Interrupt GSI.
    pub gsi: u32,
}

/// Every virtio-mmio window of a VM with `disks` disks and `nics` NICs,
/// in slot order: the one list the device table, the Linux command line
/// and the ACPI tables are built from.
pub fn mmio_windows(disks: usize, nics: usize) -> Vec<MmioWindow> {
    (0..disks + nics)
        .map(|slot| MmioWindow {
            base: slot_base(slot),
            len: MMIO_WINDOW,
            gsi: slot_gsi(slot),
        })
        .collect()
}

/// Linux's `virtio_mmio.device=` parameters for `windows`, each with a
/// leading space: for a kernel built with VIRTIO_MMIO_CMDLINE_DEVICES that
/// runs without ACPI (`acpi=off`); Tern's own boots rely on the DSDT.
pub fn virtio_cmdline(windows: &[MmioWindow]) -> String {
    windows
        .iter()
        .map(|w| format!(" virtio_mmio.device=4K@{:#x}:{}", w.base, w.gsi))
        .collect()
}

/// A disk to attach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image.
    pub path: PathBuf,
    /// Its format; `None`: by file name (`.vhdx`/`.avhdx` is VHDX, anything
    /// else raw).
    pub format: Option<tern_block::DiskFormat>,
    /// Attach read-only.
    pub read_only: bool,
    /// Storage QoS.
    pub qos: QosLimits,
    /// Process requests on the disk's own thread, which polls the ring
    /// with guest notifications off while the guest keeps it busy, instead
    /// of on the vCPU thread at each notification. Fastest with a spare
    /// host core; on a loaded host the thread's wakeups are slower than
    /// the vCPU's exits, so it is off by default.
    pub poll: bool,
}

/// Errors attaching or managing disks.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// More disks than the machine has slots for.
    #[error("{0} disks requested, at most {MAX_DISKS} are supported")]
    TooMany(usize),
    /// A disk cannot be opened.
    #[error("disk {index} ({})", path.display())]
    Open {
        /// Index in the `--disk` order.
        index: usize,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// Bad QoS limits.
    #[error("disk {index}: bad QoS limits")]
    Qos {
        /// The disk.
        index: usize,
        /// Why.
        #[source]
        source: QosError,
    },
    /// No disk with this index.
    #[error("no disk {0} (the VM has {1})")]
    NoSuchDisk(usize, usize),
    /// A resize was refused or failed.
    #[error("disk {index}: resize to {size} bytes failed")]
    Resize {
        /// The disk.
        index: usize,
        /// The size asked for.
        size: u64,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// A flush failed.
    #[error("disk {index}: flush failed")]
    Flush {
        /// The disk.
        index: usize,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// The disk's dirty log is already in use by another mirror.
    #[error("disk {0} is already being mirrored (a storage move or migration runs)")]
    MirrorBusy(usize),
    /// Mirroring the disk failed.
    #[error("disk {index}: {what} failed")]
    Mirror {
        /// The disk.
        index: usize,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// Setting up the interrupt.
    #[error("disk {index}: cannot set up its interrupt")]
    Irq {
        /// The disk.
        index: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A QoS event as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskEvent {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The disk's index.
    pub disk: usize,
    /// What happened.
    pub event: QosEvent,
}

/// What a disk looks like now, for status output.
#[derive(Clone, Debug)]
pub struct DiskStatus {
    /// The file.
    pub path: PathBuf,
    /// Its format (of the image it runs on now).
    pub format: tern_block::DiskFormat,
    /// Read-only.
    pub read_only: bool,
    /// Current size in bytes.
    pub capacity: u64,
    /// QoS limits in force.
    pub qos: QosLimits,
    /// Requests completed.
    pub requests: u64,
    /// Requests that failed (IOERR).
    pub errors: u64,
    /// Times a request waited for a QoS maximum.
    pub throttled: u64,
    /// Bytes the guest read.
    pub read_bytes: u64,
    /// Bytes the guest wrote.
    pub write_bytes: u64,
}

struct Disk {
    config: DiskConfig,
    backend: Arc<Switchable>,
    /// The image the disk runs on now (checkpoints move it).
    path: Mutex<PathBuf>,
    transport: Arc<Mutex<MmioTransport>>,
    qos: Arc<Mutex<Qos>>,
    stats: Arc<BlockStats>,
    _timer: Timer,
}

/// The VM's disks.
#[derive(Default)]
pub struct Disks {
    disks: Vec<Disk>,
    events: Arc<Mutex<Vec<DiskEvent>>>,
    /// Released for a migration: images closed, queues held.
    released: std::sync::atomic::AtomicBool,
}

pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Disks {
    /// Each disk's transport state (saved with the VM), in disk order.
    pub fn save(&self) -> Vec<crate::state::proto::VirtioMmioState> {
        self.disks
            .iter()
            .map(|d| transport_to_proto(&lock(&d.transport).save()))
            .collect()
    }

    /// Continues every disk's transport from `saved` (one per disk).
    pub fn restore(
        &self,
        saved: &[crate::state::proto::VirtioMmioState],
    ) -> Result<(), crate::state::StateError> {
        use crate::state::StateError;
        if saved.len() != self.disks.len() {
            return Err(StateError::Mismatch(format!(
                "state has {} disks, the VM {}",
                saved.len(),
                self.disks.len()
            )));
        }
        for (i, (d, s)) in self.disks.iter().zip(saved).enumerate() {
            let t = transport_from_proto(s)
                .map_err(|e| StateError::Mismatch(format!("disk {i}: {e}")))?;
            lock(&d.transport)
                .restore(&t)
                .map_err(|e| StateError::Mismatch(format!("disk {i}: {e}")))?;
        }
        Ok(())
    }

    /// Opens every disk (locks included), puts its device on `mmio` and
    /// wires its interrupt through `vm`.
    pub fn attach(
        configs: &[DiskConfig],
        mem: &GuestMem,
        vm: &VmFd,
        mmio: &mut Bus,
    ) -> Result<Disks, DiskError> {
        if configs.len() > MAX_DISKS {
            return Err(DiskError::TooMany(configs.len()));
        }
        let mut out = Disks::default();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
        for (index, cfg) in configs.iter().enumerate() {
            let opts = tern_block::OpenOptions {
                format: cfg.format,
                ..tern_block::OpenOptions::new(&cfg.path).read_only(cfg.read_only)
            };
            let backend = tern_block::open(&opts).map_err(|source| DiskError::Open {
                index,
                path: cfg.path.clone(),
                source,
            })?;
            let qos = Qos::new(cfg.qos, clock.clone())
                .map_err(|source| DiskError::Qos { index, source })?;
            let qos = Arc::new(Mutex::new(qos));
            let irq_err = |source| DiskError::Irq { index, source };
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(irq_err)?;
            vm.register_irqfd(&irq, VIRTIO_GSI_BASE + index as u32)
                .map_err(|e| irq_err(std::io::Error::from_raw_os_error(e.errno())))?;
            let events = out.events.clone();
            let backend = Arc::new(Switchable::new(backend));
            let dev = Block::new(
                backend.clone(),
                qos.clone(),
                Box::new(move |event| record_event(&events, index, event)),
                Box::new(move |e| eprintln!("tern: disk {index}: guest request failed: {e}")),
            );
            let stats = dev.stats();
            let transport = Arc::new(Mutex::new(MmioTransport::new(
                Box::new(dev),
                mem.clone(),
                irq,
            )));
            lock(&transport).set_threaded(cfg.poll);
            let waker = lock(&transport).waker();
            let timer = Timer::spawn(format!("disk{index}"), waker, Arc::downgrade(&transport))
                .map_err(irq_err)?;
            mmio.insert(transport.clone(), Self::base(index), MMIO_WINDOW)
                .expect("disk windows are disjoint and inside the MMIO hole");
            out.disks.push(Disk {
                config: cfg.clone(),
                backend,
                path: Mutex::new(cfg.path.clone()),
                transport,
                qos,
                stats,
                _timer: timer,
            });
        }
        Ok(out)
    }

    fn base(index: usize) -> u64 {
        slot_base(index)
    }

    /// Number of disks.
    pub fn len(&self) -> usize {
        self.disks.len()
    }

    /// True when the VM has no disk.
    pub fn is_empty(&self) -> bool {
        self.disks.is_empty()
    }

    /// The probe guest's device table.
    pub fn device_infos(&self) -> Vec<DeviceInfo> {
        (0..self.disks.len())
            .map(|i| DeviceInfo {
                kind: DEVICE_VIRTIO_BLK,
                irq: VIRTIO_GSI_BASE + i as u32,
                mmio_base: Self::base(i),
                mmio_len: MMIO_WINDOW,
            })
            .collect()
    }

    fn get(&self, index: usize) -> Result<&Disk, DiskError> {
        self.disks
            .get(index)
            .ok_or(DiskError::NoSuchDisk(index, self.disks.len()))
    }

    /// Changes a disk's QoS limits now; the guest's rate follows at once.
    pub fn set_qos(&self, index: usize, limits: QosLimits) -> Result<(), DiskError> {
        let d = self.get(index)?;
        lock(&d.qos)
            .set_limits(limits)
            .map_err(|source| DiskError::Qos { index, source })?;
        // Requests held under the old limit are retried under the new one.
        lock(&d.transport).waker().kick();
        Ok(())
    }

    /// Resizes a disk of the running VM and tells the guest. The transport
    /// stays locked across the change, so the driver sees the old config or
    /// the new one with a new generation, never a mix.
    pub fn resize(&self, index: usize, size: u64, policy: &ResizePolicy) -> Result<(), DiskError> {
        let d = self.get(index)?;
        let mut t = lock(&d.transport);
        d.backend
            .resize(size, policy)
            .map_err(|source| DiskError::Resize {
                index,
                size,
                source,
            })?;
        t.config_changed();
        Ok(())
    }

    /// QoS events so far, oldest first.
    pub fn events(&self) -> Vec<DiskEvent> {
        lock(&self.events).clone()
    }

    /// Each disk's state.
    pub fn status(&self) -> Vec<DiskStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        self.disks
            .iter()
            .map(|d| DiskStatus {
                path: lock(&d.path).clone(),
                format: d.backend.format(),
                read_only: d.backend.read_only(),
                capacity: d.backend.capacity(),
                qos: lock(&d.qos).limits(),
                requests: d.stats.requests.load(Relaxed),
                errors: d.stats.errors.load(Relaxed),
                throttled: d.stats.throttled.load(Relaxed),
                read_bytes: d.stats.read_bytes.load(Relaxed),
                write_bytes: d.stats.write_bytes.load(Relaxed),
            })
            .collect()
    }

    /// Makes every completed write durable (before a save, checkpoint or
    /// export copies or freezes the images).
    pub fn flush_all(&self) -> Result<(), DiskError> {
        for (index, d) in self.disks.iter().enumerate() {
            let _t = lock(&d.transport);
            d.backend
                .flush()
                .map_err(|source| DiskError::Flush { index, source })?;
        }
        Ok(())
    }

    /// Moves disk `index` onto another image (a differencing child made
    /// for a checkpoint, or its parent after a merge) under the running
    /// device: no request runs meanwhile, and the guest sees the same disk
    /// (id, size) go on. The old image is closed first (its lock
    /// released); if the new one cannot be opened the old one is reopened.
    pub fn switch(&self, index: usize, path: &std::path::Path) -> Result<(), DiskError> {
        let d = self.get(index)?;
        let _t = lock(&d.transport);
        let old = lock(&d.path).clone();
        d.backend.close_inner();
        let open = |p: &std::path::Path| {
            tern_block::open(&tern_block::OpenOptions::new(p).read_only(d.config.read_only))
        };
        match open(path) {
            Ok(new) => {
                d.backend.set(new);
                *lock(&d.path) = path.into();
                Ok(())
            }
            Err(source) => {
                if let Ok(again) = open(&old) {
                    d.backend.set(again);
                }
                Err(DiskError::Open {
                    index,
                    path: path.into(),
                    source,
                })
            }
        }
    }

    /// Closes disk `index`'s image (its locks released) so another tool
    /// can rewrite it; guest I/O fails until [`Disks::switch`] reopens one.
    /// Pause the VM first.
    pub fn close_one(&self, index: usize) -> Result<(), DiskError> {
        let d = self.get(index)?;
        let _t = lock(&d.transport);
        d.backend.close_inner();
        Ok(())
    }

    /// Hands the images over (a live migration's switchover, vCPUs
    /// paused): holds every queue so requests wait in the rings, makes
    /// completed writes durable, and closes the images, releasing their
    /// locks for the destination. On error nothing stays released.
    pub fn release(&self) -> Result<(), DiskError> {
        for (index, d) in self.disks.iter().enumerate() {
            let mut t = lock(&d.transport);
            t.set_frozen(true);
            if let Err(source) = d.backend.flush() {
                t.set_frozen(false);
                drop(t);
                if let Err(e) = self.reopen_first(index, Instant::now()) {
                    eprintln!("tern: error: taking back a released disk: {e}");
                }
                return Err(DiskError::Flush { index, source });
            }
            d.backend.close_inner();
        }
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// True between [`Disks::release`] and [`Disks::reacquire`].
    pub fn released(&self) -> bool {
        self.released.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Takes the images back after a failed hand-over and lets the queues
    /// run. A destination that opened them may still be closing them, so
    /// a locked image is retried until `deadline`. On error the disks that
    /// could not be opened fail guest I/O; the caller keeps the VM paused.
    pub fn reacquire(&self, deadline: Instant) -> Result<(), DiskError> {
        if !self.released() {
            return Ok(());
        }
        let r = self.reopen_first(self.disks.len(), deadline);
        if r.is_ok() {
            self.released
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }

    /// Reopens the first `n` disks (closed by a release) and unholds their
    /// queues.
    fn reopen_first(&self, n: usize, deadline: Instant) -> Result<(), DiskError> {
        for (index, d) in self.disks.iter().enumerate().take(n) {
            let mut t = lock(&d.transport);
            if d.backend.is_closed() {
                let path = lock(&d.path).clone();
                let opts = tern_block::OpenOptions {
                    // A checkpoint's differencing image is VHDX by name;
                    // the configured image has the configured format.
                    format: d.config.format.filter(|_| path == d.config.path),
                    ..tern_block::OpenOptions::new(&path).read_only(d.config.read_only)
                };
                let image = loop {
                    match tern_block::open(&opts) {
                        Ok(b) => break b,
                        Err(BlockError::Locked(_)) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(source) => {
                            return Err(DiskError::Open {
                                index,
                                path,
                                source,
                            })
                        }
                    }
                };
                d.backend.set(image);
            }
            t.set_frozen(false);
        }
        Ok(())
    }

    /// Lets every queue process what its driver queued before a restore.
    pub fn kick(&self) {
        for d in &self.disks {
            lock(&d.transport).kick();
        }
    }

    /// Flushes and closes every disk (a VHDX's log is emptied); call it
    /// once the vCPUs have stopped. Returns the failures.
    pub fn close(&self) -> Vec<(usize, BlockError)> {
        let mut errs = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            // Hold the transport so no timer retry runs into a closed disk.
            let _t = lock(&d.transport);
            if let Err(e) = d.backend.close() {
                errs.push((i, e));
            }
        }
        errs
    }
}

fn record_event(log: &Mutex<Vec<DiskEvent>>, disk: usize, event: QosEvent) {
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64;
    eprintln!(
        "tern: disk {disk}: QoS {}: {} normalized IOPS measured, minimum {}",
        event.kind.name(),
        event.measured_iops,
        event.min_iops
    );
    let mut l = lock(log);
    let seq = l.len() as u64 + 1;
    l.push(DiskEvent {
        seq,
        time_ms,
        disk,
        event,
    });
}

/// The shrink rules the guest adds for disk `index`: with the probe guest,
/// a disk its workload uses may not shrink below the end it reports in use
/// (`Status::blk_in_use_end`; the probe reports one figure, so it applies
/// to every disk its `blk-*` steps name).
pub fn resize_policy(vm: &crate::Vm, index: usize) -> ResizePolicy {
    let crate::Guest::Probe { workload, .. } = &vm.config().guest else {
        return ResizePolicy::default();
    };
    let Ok(steps) = tern_probe_abi::workload::parse(workload) else {
        return ResizePolicy::default();
    };
    use tern_probe_abi::WorkloadKind as K;
    let uses = steps.as_slice().iter().any(|s| {
        matches!(
            s.kind,
            K::BlkVerify | K::BlkIops | K::BlkCapacity | K::BlkTrim
        ) && s.disk == index as u64
    });
    let end = vm.probe_status().map(|s| s.blk_in_use_end).unwrap_or(0);
    ResizePolicy {
        guest_in_use_end: (uses && end > 0).then_some(end),
    }
}

pub(crate) fn transport_to_proto(
    t: &tern_devices::virtio::mmio::TransportState,
) -> crate::state::proto::VirtioMmioState {
    crate::state::proto::VirtioMmioState {
        queue_sel: t.queue_sel,
        device_features_sel: t.device_features_sel,
        driver_features_sel: t.driver_features_sel,
        driver_features: t.driver_features,
        status: t.status,
        interrupt_status: t.interrupt_status,
        config_generation: t.config_generation,
        queues: t
            .queues
            .iter()
            .map(|q| crate::state::proto::VirtqueueState {
                max_size: q.max_size.into(),
                size: q.size.into(),
                ready: q.ready,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
                next_avail: q.next_avail.into(),
                next_used: q.next_used.into(),
                event_idx_enabled: q.event_idx_enabled,
            })
            .collect(),
    }
}

pub(crate) fn transport_from_proto(
    s: &crate::state::proto::VirtioMmioState,
) -> Result<tern_devices::virtio::mmio::TransportState, String> {
    let u16_of = |what: &str, v: u32| {
        u16::try_from(v).map_err(|_| format!("saved {what} {v} does not fit 16 bits"))
    };
    let mut queues = Vec::with_capacity(s.queues.len());
    for q in &s.queues {
        queues.push(virtio_queue::QueueState {
            max_size: u16_of("queue max size", q.max_size)?,
            size: u16_of("queue size", q.size)?,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: u16_of("next_avail", q.next_avail)?,
            next_used: u16_of("next_used", q.next_used)?,
            event_idx_enabled: q.event_idx_enabled,
        });
    }
    Ok(tern_devices::virtio::mmio::TransportState {
        queue_sel: s.queue_sel,
        device_features_sel: s.device_features_sel,
        driver_features_sel: s.driver_features_sel,
        driver_features: s.driver_features,
        status: s.status,
        interrupt_status: s.interrupt_status,
        config_generation: s.config_generation,
        queues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_interrupts_and_cmdline() {
        let d = Disks::default();
        assert!(d.is_empty());
        assert_eq!(virtio_cmdline(&mmio_windows(0, 0)), "");
        assert_eq!(Disks::base(0), 0xd000_0000);
        assert_eq!(Disks::base(7), 0xd000_7000);
        assert!(Disks::base(MAX_DISKS) <= 0xffff_ffff);
        assert_eq!(
            virtio_cmdline(&mmio_windows(2, 0)),
            " virtio_mmio.device=4K@0xd0000000:16 virtio_mmio.device=4K@0xd0001000:17"
        );
        let w = mmio_windows(2, 1);
        assert_eq!(w.len(), 3);
        assert_eq!((w[2].base, w[2].len, w[2].gsi), (0xd000_2000, 0x1000, 18));
        assert!(matches!(
            d.set_qos(0, QosLimits::default()),
            Err(DiskError::NoSuchDisk(0, 0))
        ));
    }
}
