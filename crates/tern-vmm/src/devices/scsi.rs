//! The VM's SCSI controller: one virtio-scsi device on virtio-mmio (the
//! slot after the NICs') over a [`ScsiTarget`] with disks (raw or VHDX;
//! shared ones keep their reservations in a file beside the image) and
//! DVD drives (ISO media), and the handles the worker uses at run time:
//! hot add and remove, DVD insert and eject, online resize, status.
//!
//! The saved state ([`ScsiSaved`], versioned) holds the LUNs as they are
//! at the save (hot-added ones and inserted media included), the target's
//! state and the device's held event buffers; a restore rebuilds the LUN
//! set from it, so a VM restored or migrated after a hot add or a DVD
//! change keeps what its guest sees.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use tern_block::{BlockBackend, BlockError, DiskFormat, ResizePolicy};
use tern_devices::virtio::mmio::{MmioTransport, MMIO_WINDOW};
use tern_devices::virtio::scsi::{Scsi, ScsiEventsSaved, ScsiHost};
use tern_devices::virtio::Timer;
use tern_devices::Bus;
use tern_probe_abi::{DeviceInfo, DEVICE_VIRTIO_SCSI};
use tern_scsi::state::TargetSaved;
use tern_scsi::store::FileStore;
use tern_scsi::{DiskConfig, DvdConfig, NexusId, ScsiTarget, TargetError};
use vmm_sys_util::eventfd::EventFd;

use super::{lock, transport_from_proto, transport_to_proto};
use crate::memory::GuestMem;
use crate::state::proto::VirtioScsiState;

/// Version of [`VirtioScsiState`] and [`ScsiSaved`] this VMM writes and
/// reads.
pub const SCSI_STATE_VERSION: u32 = 1;

/// What a LUN is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScsiLunKind {
    /// A disk (SBC).
    Disk,
    /// A DVD drive (MMC) on ISO media.
    Dvd,
}

/// A LUN to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiLunConfig {
    /// Its number on the controller.
    pub lun: u16,
    /// Disk or DVD drive.
    pub kind: ScsiLunKind,
    /// A disk's image; a DVD's medium (`None`: an empty drive).
    pub path: Option<PathBuf>,
    /// A disk's format (`None`: by file name).
    pub format: Option<DiskFormat>,
    /// Attach read-only (DVDs always are).
    pub read_only: bool,
    /// A shared disk: opened with a shared lock, its reservations in the
    /// file beside the image that every user of it shares.
    pub shared: bool,
}

/// The controller's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScsiConfig {
    /// The initiator name the controller has towards its disks (persistent
    /// reservations are kept by it: unique per VM, kept across restores
    /// and migrations, which carry it in the saved state).
    pub initiator: String,
    /// The LUNs at start.
    pub luns: Vec<ScsiLunConfig>,
}

/// Errors attaching or changing SCSI LUNs.
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    /// No slot left for the controller.
    #[error(
        "no virtio-mmio slot left for the SCSI controller ({used} in use, at most {})",
        super::MAX_DEVICES
    )]
    TooMany {
        /// Slots the disks and NICs use.
        used: usize,
    },
    /// Two LUNs with one number.
    #[error("SCSI LUN {0} is configured twice")]
    DuplicateLun(u16),
    /// A disk without an image.
    #[error("SCSI LUN {0} is a disk without an image path")]
    NoImage(u16),
    /// An image cannot be opened.
    #[error("SCSI LUN {lun} ({})", path.display())]
    Open {
        /// The LUN.
        lun: u16,
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// The target refused.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Setting up the interrupt or the timer thread.
    #[error("SCSI controller: cannot set up its interrupt or thread")]
    Setup(#[source] std::io::Error),
    /// The VM has no SCSI controller.
    #[error("this VM has no SCSI controller (start it with a --scsi LUN)")]
    NoController,
}

/// What a LUN looks like now, for status output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiLunStatus {
    /// The LUN's configuration now (a DVD's path is its medium now).
    pub config: ScsiLunConfig,
    /// A disk's size in bytes, a DVD medium's (0: none).
    pub capacity: u64,
    /// A DVD drive holds a medium with its tray closed.
    pub medium_present: bool,
}

/// The controller's saved state beyond its transport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiSaved {
    /// Format version ([`SCSI_STATE_VERSION`]).
    pub version: u32,
    /// The LUNs at the save, ascending.
    pub luns: Vec<ScsiLunSaved>,
    /// The target's state.
    pub target: TargetSaved,
    /// The device's initiator, held event buffers and pending events.
    pub device: ScsiEventsSaved,
}

/// A LUN's configuration, saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiLunSaved {
    /// Its number.
    pub lun: u16,
    /// Disk or DVD drive.
    pub kind: tern_scsi::state::LunKindSaved,
    /// Image or medium.
    pub path: Option<PathBuf>,
    /// A disk's format: true for VHDX, false for raw, `None` by name.
    pub vhdx: Option<bool>,
    /// Read-only.
    pub read_only: bool,
    /// Shared.
    pub shared: bool,
}

impl ScsiLunSaved {
    fn from_config(c: &ScsiLunConfig) -> ScsiLunSaved {
        use tern_scsi::state::LunKindSaved as K;
        ScsiLunSaved {
            lun: c.lun,
            kind: match c.kind {
                ScsiLunKind::Disk => K::Disk,
                ScsiLunKind::Dvd => K::Dvd,
            },
            path: c.path.clone(),
            vhdx: c.format.map(|f| f == DiskFormat::Vhdx),
            read_only: c.read_only,
            shared: c.shared,
        }
    }

    fn to_config(&self) -> ScsiLunConfig {
        use tern_scsi::state::LunKindSaved as K;
        ScsiLunConfig {
            lun: self.lun,
            kind: match self.kind {
                K::Disk => ScsiLunKind::Disk,
                K::Dvd => ScsiLunKind::Dvd,
            },
            path: self.path.clone(),
            format: self
                .vhdx
                .map(|v| if v { DiskFormat::Vhdx } else { DiskFormat::Raw }),
            read_only: self.read_only,
            shared: self.shared,
        }
    }
}

/// The VM's SCSI controller.
pub struct ScsiController {
    slot: usize,
    host: ScsiHost,
    transport: Arc<Mutex<MmioTransport>>,
    luns: Mutex<BTreeMap<u16, LunEntry>>,
    _timer: Timer,
}

/// A DVD's unit serial: stable per LUN.
fn dvd_serial(lun: u16) -> String {
    format!("TERNDVD{lun}")
}

/// A LUN as the controller keeps it: its configuration now and its image
/// or medium (for status and the flush at the end).
struct LunEntry {
    config: ScsiLunConfig,
    backend: Option<Arc<dyn BlockBackend>>,
}

/// Opens a LUN's image and attaches it to `target` (without events).
fn attach_lun(target: &ScsiTarget, cfg: &ScsiLunConfig) -> Result<LunEntry, ScsiError> {
    let backend = match cfg.kind {
        ScsiLunKind::Disk => {
            let d = disk_config(cfg)?;
            let b = d.backend.clone();
            target.add_disk(cfg.lun, d)?;
            Some(b)
        }
        ScsiLunKind::Dvd => {
            let d = dvd_config(cfg)?;
            let b = d.medium.clone();
            target.add_dvd(cfg.lun, d)?;
            b
        }
    };
    Ok(LunEntry {
        config: cfg.clone(),
        backend,
    })
}

fn disk_config(cfg: &ScsiLunConfig) -> Result<DiskConfig, ScsiError> {
    let path = cfg.path.clone().ok_or(ScsiError::NoImage(cfg.lun))?;
    let opts = tern_block::OpenOptions {
        format: cfg.format,
        ..tern_block::OpenOptions::new(&path)
            .read_only(cfg.read_only)
            .shared(cfg.shared)
    };
    let backend = tern_block::open(&opts).map_err(|source| ScsiError::Open {
        lun: cfg.lun,
        path: path.clone(),
        source,
    })?;
    let mut d = DiskConfig::new(backend);
    if cfg.shared {
        d.reservations = Some(Arc::new(FileStore::for_image(&path)));
    }
    Ok(d)
}

fn open_medium(lun: u16, path: &std::path::Path) -> Result<Arc<dyn BlockBackend>, ScsiError> {
    tern_scsi::open_iso(path).map_err(|source| ScsiError::Open {
        lun,
        path: path.into(),
        source,
    })
}

fn dvd_config(cfg: &ScsiLunConfig) -> Result<DvdConfig, ScsiError> {
    let medium = match &cfg.path {
        Some(p) => Some(open_medium(cfg.lun, p)?),
        None => None,
    };
    Ok(DvdConfig {
        serial: dvd_serial(cfg.lun),
        medium,
    })
}

impl ScsiController {
    /// Opens every LUN, puts the controller on `mmio` at `slot` and wires
    /// its interrupt through `vm`. `None` when `config` has no LUN and
    /// `always` is false (a restore of a state that has a controller
    /// passes true: its LUNs come from the state).
    pub fn attach(
        config: &ScsiConfig,
        slot: usize,
        always: bool,
        mem: &GuestMem,
        vm: &VmFd,
        mmio: &mut Bus,
    ) -> Result<Option<ScsiController>, ScsiError> {
        if config.luns.is_empty() && !always {
            return Ok(None);
        }
        if slot >= super::MAX_DEVICES {
            return Err(ScsiError::TooMany { used: slot });
        }
        let target = Arc::new(ScsiTarget::new());
        let mut luns = BTreeMap::new();
        for cfg in &config.luns {
            if luns.contains_key(&cfg.lun) {
                return Err(ScsiError::DuplicateLun(cfg.lun));
            }
            let e = attach_lun(&target, cfg)?;
            luns.insert(cfg.lun, e);
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(ScsiError::Setup)?;
        vm.register_irqfd(&irq, super::slot_gsi(slot))
            .map_err(|e| ScsiError::Setup(std::io::Error::from_raw_os_error(e.errno())))?;
        let (dev, host) = Scsi::new(
            target,
            NexusId::Virtio {
                vm: config.initiator.clone(),
                controller: 0,
            },
        );
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            Box::new(dev),
            mem.clone(),
            irq,
        )));
        let waker = lock(&transport).waker();
        let timer = Timer::spawn("scsi0".into(), waker, Arc::downgrade(&transport))
            .map_err(ScsiError::Setup)?;
        mmio.insert(transport.clone(), super::slot_base(slot), MMIO_WINDOW)
            .expect("device windows are disjoint and inside the MMIO hole");
        Ok(Some(ScsiController {
            slot,
            host,
            transport,
            luns: Mutex::new(luns),
            _timer: timer,
        }))
    }

    /// The probe guest's device table entry (and the DSDT's).
    pub fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: DEVICE_VIRTIO_SCSI,
            irq: super::slot_gsi(self.slot),
            mmio_base: super::slot_base(self.slot),
            mmio_len: MMIO_WINDOW,
        }
    }

    /// The target (for tests and inspection).
    pub fn target(&self) -> &Arc<ScsiTarget> {
        self.host.target()
    }

    /// The initiator name the controller has now.
    pub fn initiator(&self) -> String {
        match self.host.nexus() {
            NexusId::Virtio { vm, .. } => vm,
            NexusId::Iscsi { iqn, .. } => iqn,
        }
    }

    /// Delivers what a host-side change queued (events, interrupts).
    fn notify(&self) {
        lock(&self.transport).kick();
    }

    /// Hot-adds a LUN: the guest gets a rescan event and REPORTED LUNS
    /// DATA HAS CHANGED on the other LUNs.
    pub fn add(&self, cfg: ScsiLunConfig) -> Result<(), ScsiError> {
        let mut luns = lock(&self.luns);
        if luns.contains_key(&cfg.lun) {
            return Err(TargetError::LunExists(cfg.lun).into());
        }
        let backend = match cfg.kind {
            ScsiLunKind::Disk => {
                let d = disk_config(&cfg)?;
                let b = d.backend.clone();
                self.host.add_disk(cfg.lun, d)?;
                Some(b)
            }
            ScsiLunKind::Dvd => {
                let d = dvd_config(&cfg)?;
                let b = d.medium.clone();
                self.host.add_dvd(cfg.lun, d)?;
                b
            }
        };
        luns.insert(
            cfg.lun,
            LunEntry {
                config: cfg,
                backend,
            },
        );
        drop(luns);
        self.notify();
        Ok(())
    }

    /// Hot-removes a LUN (its image is closed once the guest's last
    /// request on it is done).
    pub fn remove(&self, lun: u16) -> Result<(), ScsiError> {
        let mut luns = lock(&self.luns);
        let backend = self.host.remove(lun)?;
        let was_disk = luns
            .remove(&lun)
            .is_some_and(|e| e.config.kind == ScsiLunKind::Disk);
        drop(luns);
        self.notify();
        if let (true, Some(b)) = (was_disk, backend) {
            if let Err(e) = b.close() {
                eprintln!("tern: SCSI LUN {lun}: closing the removed disk: {e}");
            }
        }
        Ok(())
    }

    /// Puts the ISO at `path` into DVD drive `lun` (refused while the guest
    /// prevents removal of a medium that is in it).
    pub fn insert(&self, lun: u16, path: PathBuf) -> Result<(), ScsiError> {
        let medium = open_medium(lun, &path)?;
        let mut luns = lock(&self.luns);
        self.host.target().insert_medium(lun, medium.clone())?;
        if let Some(e) = luns.get_mut(&lun) {
            e.config.path = Some(path);
            e.backend = Some(medium);
        }
        drop(luns);
        self.host.media_changed(lun, true);
        self.notify();
        Ok(())
    }

    /// Takes the medium out of DVD drive `lun`: refused while the guest
    /// prevents removal, unless `force`.
    pub fn eject(&self, lun: u16, force: bool) -> Result<(), ScsiError> {
        let mut luns = lock(&self.luns);
        let r = self.host.target().eject_medium(lun, force);
        // A refused eject still sent the guest an eject request.
        if r.is_err() {
            drop(luns);
            self.notify();
            r?;
            return Ok(());
        }
        if let Some(e) = luns.get_mut(&lun) {
            e.config.path = None;
            e.backend = None;
        }
        drop(luns);
        self.host.media_changed(lun, false);
        self.notify();
        Ok(())
    }

    /// Resizes disk `lun` online: CAPACITY DATA HAS CHANGED and a
    /// parameter-change event.
    pub fn resize(&self, lun: u16, size: u64, policy: &ResizePolicy) -> Result<(), ScsiError> {
        self.host.resize(lun, size, policy)?;
        self.notify();
        Ok(())
    }

    /// Each LUN's state, ascending.
    pub fn status(&self) -> Vec<ScsiLunStatus> {
        let luns = lock(&self.luns);
        let target = self.host.target();
        luns.values()
            .map(|e| {
                let c = &e.config;
                let medium_present =
                    c.kind == ScsiLunKind::Dvd && target.medium_present(c.lun).unwrap_or(false);
                let capacity = match (&e.backend, c.kind) {
                    (Some(b), ScsiLunKind::Disk) => b.capacity(),
                    (Some(b), ScsiLunKind::Dvd) if medium_present => b.capacity(),
                    _ => 0,
                };
                ScsiLunStatus {
                    config: c.clone(),
                    capacity,
                    medium_present,
                }
            })
            .collect()
    }

    /// The controller's saved state; the VM is paused.
    pub fn save(&self) -> Result<VirtioScsiState, crate::state::StateError> {
        let t = lock(&self.transport);
        let saved = ScsiSaved {
            version: SCSI_STATE_VERSION,
            luns: lock(&self.luns)
                .values()
                .map(|e| ScsiLunSaved::from_config(&e.config))
                .collect(),
            target: self
                .host
                .target()
                .save()
                .map_err(|e| crate::state::StateError::Mismatch(format!("SCSI: {e}")))?,
            device: self.host.save_events(),
        };
        Ok(VirtioScsiState {
            version: SCSI_STATE_VERSION,
            transport: Some(transport_to_proto(&t.save())),
            controller: serde_json::to_vec(&saved).expect("the SCSI saved state serializes"),
        })
    }

    /// Continues the controller from `saved`: the LUN set becomes the
    /// saved one (LUNs added or removed since the launch come back as they
    /// were, DVD media too), then the target's and the device's state and
    /// the transport.
    pub fn restore(&self, saved: &VirtioScsiState) -> Result<(), crate::state::StateError> {
        use crate::state::StateError;
        let bad = |e: String| StateError::Mismatch(format!("SCSI controller: {e}"));
        if saved.version == 0 || saved.version > SCSI_STATE_VERSION {
            return Err(bad(format!(
                "saved state version {} (this VMM reads 1..={SCSI_STATE_VERSION})",
                saved.version
            )));
        }
        let s: ScsiSaved = serde_json::from_slice(&saved.controller)
            .map_err(|e| bad(format!("saved controller state is corrupt: {e}")))?;
        if s.version == 0 || s.version > SCSI_STATE_VERSION {
            return Err(bad(format!(
                "saved controller version {} (this VMM reads 1..={SCSI_STATE_VERSION})",
                s.version
            )));
        }
        let t = saved
            .transport
            .as_ref()
            .ok_or_else(|| bad("no transport state".into()))?;
        let t = transport_from_proto(t).map_err(bad)?;
        let mut tr = lock(&self.transport);
        let mut luns = lock(&self.luns);
        let target = self.host.target();
        let want: BTreeMap<u16, ScsiLunConfig> =
            s.luns.iter().map(|c| (c.lun, c.to_config())).collect();
        if want.len() != s.luns.len() {
            return Err(bad("a LUN is saved twice".into()));
        }
        let have: Vec<(u16, ScsiLunConfig)> =
            luns.iter().map(|(n, e)| (*n, e.config.clone())).collect();
        for (n, have) in have {
            let same_unit = want.get(&n).is_some_and(|w| {
                w.kind == have.kind
                    && (w.kind == ScsiLunKind::Dvd
                        || (w.path == have.path && w.shared == have.shared))
            });
            if !same_unit {
                target.remove(n).map_err(|e| bad(e.to_string()))?;
                luns.remove(&n);
            }
        }
        for (n, w) in &want {
            if !luns.contains_key(n) {
                let e = attach_lun(target, w).map_err(|e| bad(e.to_string()))?;
                luns.insert(*n, e);
            } else if w.kind == ScsiLunKind::Dvd && luns[n].config.path != w.path {
                let backend = match &w.path {
                    Some(p) => {
                        let m = open_medium(*n, p).map_err(|e| bad(e.to_string()))?;
                        target
                            .insert_medium(*n, m.clone())
                            .map_err(|e| bad(e.to_string()))?;
                        Some(m)
                    }
                    None => {
                        target
                            .eject_medium(*n, true)
                            .map_err(|e| bad(e.to_string()))?;
                        None
                    }
                };
                luns.insert(
                    *n,
                    LunEntry {
                        config: w.clone(),
                        backend,
                    },
                );
            }
        }
        target.restore(&s.target).map_err(|e| bad(e.to_string()))?;
        tr.restore(&t).map_err(bad)?;
        self.host.restore_events(&s.device).map_err(bad)?;
        Ok(())
    }

    /// Holds (true) or releases the controller's queues.
    pub fn set_frozen(&self, on: bool) {
        lock(&self.transport).set_frozen(on);
    }

    /// Lets the controller process what its driver queued before a restore.
    pub fn kick(&self) {
        lock(&self.transport).kick();
    }

    /// Flushes and closes every disk (a VHDX's log is emptied); call it
    /// once the vCPUs have stopped. Returns the failures.
    pub fn close(&self) -> Vec<(u16, BlockError)> {
        // Held so no timer retry runs into a closed disk.
        let _t = lock(&self.transport);
        let mut errs = Vec::new();
        for (n, e) in lock(&self.luns).iter() {
            if let (ScsiLunKind::Disk, Some(b)) = (e.config.kind, &e.backend) {
                if let Err(err) = b.close() {
                    errs.push((*n, err));
                }
            }
        }
        errs
    }
}
