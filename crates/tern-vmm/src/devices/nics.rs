//! NICs in the VM: virtio-net devices on virtio-mmio over taps, placed in
//! the device slots after the disks' (see [`super::slot_base`]), and the
//! handles the worker uses at run time (link state, counters).

use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use tern_devices::virtio::mmio::{MmioTransport, MMIO_WINDOW};
use tern_devices::virtio::net::rx::RxThread;
pub use tern_devices::virtio::net::NetStats;
use tern_devices::virtio::net::{Net, NetConfig, NicShared, RxSignal};
use tern_devices::virtio::Timer;
use tern_devices::Bus;
use tern_net::Tap;
pub use tern_net::{Mac, TapError};
use tern_probe_abi::{DeviceInfo, DEVICE_VIRTIO_NET};
use vmm_sys_util::eventfd::EventFd;

use super::{lock, transport_from_proto, transport_to_proto};
use crate::memory::GuestMem;
use crate::state::proto::VirtioNetState;

/// Version of [`VirtioNetState`] this VMM writes and reads.
pub const NET_STATE_VERSION: u32 = 1;

/// A NIC to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicConfig {
    /// The host tap interface (opened, or created if missing).
    pub tap: String,
    /// The guest's address; `None`: derived from the tap name and the
    /// NIC's index ([`NicConfig::mac_for`]), the same on every start.
    pub mac: Option<Mac>,
}

impl NicConfig {
    /// A NIC on `tap` with a derived address.
    pub fn new(tap: impl Into<String>) -> Self {
        NicConfig {
            tap: tap.into(),
            mac: None,
        }
    }

    /// The address NIC `index` gets.
    pub fn mac_for(&self, index: usize) -> Mac {
        self.mac
            .unwrap_or_else(|| Mac::from_seed(format!("{}/{index}", self.tap).as_bytes()))
    }
}

/// Errors attaching or managing NICs.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// More devices than the machine has slots for.
    #[error(
        "{disks} disks and {nics} NICs requested, at most {} devices are supported",
        super::MAX_DEVICES
    )]
    TooMany {
        /// Disks.
        disks: usize,
        /// NICs.
        nics: usize,
    },
    /// The tap cannot be opened.
    #[error("NIC {index} (tap {tap})")]
    Tap {
        /// Index in the `--nic` order.
        index: usize,
        /// The tap.
        tap: String,
        /// Why.
        #[source]
        source: TapError,
    },
    /// Setting up its interrupt or threads.
    #[error("NIC {index}: cannot set up its interrupt or threads")]
    Setup {
        /// The NIC.
        index: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No NIC with this index.
    #[error("no NIC {0} (the VM has {1})")]
    NoSuchNic(usize, usize),
}

/// What a NIC looks like now, for status output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicStatus {
    /// The tap.
    pub tap: String,
    /// The guest's address.
    pub mac: Mac,
    /// Link state the guest sees.
    pub link_up: bool,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames the guest sent.
    pub tx_frames: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Received frames dropped (no fitting guest buffer).
    pub rx_dropped: u64,
    /// Guest TX chains refused as malformed.
    pub tx_errors: u64,
    /// Frames the tap refused.
    pub tx_dropped: u64,
}

struct Nic {
    config: NicConfig,
    transport: Arc<Mutex<MmioTransport>>,
    shared: Arc<NicShared>,
    stats: Arc<NetStats>,
    slot: usize,
    // Dropped first: the threads hold only weak references.
    _rx: RxThread,
    _timer: Timer,
}

/// The VM's NICs.
#[derive(Default)]
pub struct Nics {
    nics: Vec<Nic>,
}

impl Nics {
    /// Opens every tap, puts its device on `mmio` in the slots from
    /// `first_slot` on (after the disks) and wires its interrupt through
    /// `vm`.
    pub fn attach(
        configs: &[NicConfig],
        first_slot: usize,
        mem: &GuestMem,
        vm: &VmFd,
        mmio: &mut Bus,
    ) -> Result<Nics, NicError> {
        if first_slot + configs.len() > super::MAX_DEVICES {
            return Err(NicError::TooMany {
                disks: first_slot,
                nics: configs.len(),
            });
        }
        let mut out = Nics::default();
        for (index, cfg) in configs.iter().enumerate() {
            let slot = first_slot + index;
            let setup = |source| NicError::Setup { index, source };
            let tap = Tap::open(&cfg.tap).map_err(|source| NicError::Tap {
                index,
                tap: cfg.tap.clone(),
                source,
            })?;
            let tap_fd = tap.as_fd().try_clone_to_owned().map_err(setup)?;
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(setup)?;
            vm.register_irqfd(&irq, super::slot_gsi(slot))
                .map_err(|e| setup(std::io::Error::from_raw_os_error(e.errno())))?;
            let signal = Arc::new(RxSignal::new().map_err(setup)?);
            let dev = Net::new(
                Box::new(tap),
                NetConfig {
                    mac: cfg.mac_for(index),
                },
                signal.clone(),
                Box::new(move |e| eprintln!("tern: NIC {index}: {e}")),
            );
            let (stats, shared) = (dev.stats(), dev.shared());
            let transport = Arc::new(Mutex::new(MmioTransport::new(
                Box::new(dev),
                mem.clone(),
                irq,
            )));
            let waker = lock(&transport).waker();
            let timer = Timer::spawn(format!("nic{index}"), waker, Arc::downgrade(&transport))
                .map_err(setup)?;
            let rx = RxThread::spawn(
                format!("nic{index}-rx"),
                tap_fd,
                signal,
                stats.clone(),
                Arc::downgrade(&transport),
            )
            .map_err(setup)?;
            mmio.insert(transport.clone(), super::slot_base(slot), MMIO_WINDOW)
                .expect("device windows are disjoint and inside the MMIO hole");
            out.nics.push(Nic {
                config: cfg.clone(),
                transport,
                shared,
                stats,
                slot,
                _rx: rx,
                _timer: timer,
            });
        }
        Ok(out)
    }

    /// Number of NICs.
    pub fn len(&self) -> usize {
        self.nics.len()
    }

    /// True when the VM has no NIC.
    pub fn is_empty(&self) -> bool {
        self.nics.is_empty()
    }

    /// The probe guest's device table entries of the NICs.
    pub fn device_infos(&self) -> Vec<DeviceInfo> {
        self.nics
            .iter()
            .map(|n| DeviceInfo {
                kind: DEVICE_VIRTIO_NET,
                irq: super::slot_gsi(n.slot),
                mmio_base: super::slot_base(n.slot),
                mmio_len: MMIO_WINDOW,
            })
            .collect()
    }

    fn get(&self, index: usize) -> Result<&Nic, NicError> {
        self.nics
            .get(index)
            .ok_or(NicError::NoSuchNic(index, self.nics.len()))
    }

    /// Sets the link state the guest sees and tells it (config interrupt).
    pub fn set_link(&self, index: usize, up: bool) -> Result<(), NicError> {
        let n = self.get(index)?;
        let mut t = lock(&n.transport);
        if n.shared.link_up() != up {
            n.shared.set_link_up(up);
            t.config_changed();
        }
        Ok(())
    }

    /// Each NIC's state.
    pub fn status(&self) -> Vec<NicStatus> {
        self.nics
            .iter()
            .map(|n| {
                let s = &n.stats;
                NicStatus {
                    tap: n.config.tap.clone(),
                    mac: n.shared.mac(),
                    link_up: n.shared.link_up(),
                    rx_frames: s.rx_frames.load(Relaxed),
                    rx_bytes: s.rx_bytes.load(Relaxed),
                    tx_frames: s.tx_frames.load(Relaxed),
                    tx_bytes: s.tx_bytes.load(Relaxed),
                    rx_dropped: s.rx_dropped.load(Relaxed),
                    tx_errors: s.tx_errors.load(Relaxed),
                    tx_dropped: s.tx_dropped.load(Relaxed),
                }
            })
            .collect()
    }

    /// Each NIC's saved state, in NIC order.
    pub fn save(&self) -> Vec<VirtioNetState> {
        self.nics
            .iter()
            .map(|n| {
                let t = lock(&n.transport);
                VirtioNetState {
                    version: NET_STATE_VERSION,
                    transport: Some(transport_to_proto(&t.save())),
                    mac: n.shared.mac().bytes().to_vec(),
                    link_up: n.shared.link_up(),
                }
            })
            .collect()
    }

    /// Continues every NIC from `saved` (one per NIC): its address, link
    /// state and transport.
    pub fn restore(&self, saved: &[VirtioNetState]) -> Result<(), crate::state::StateError> {
        use crate::state::StateError;
        if saved.len() != self.nics.len() {
            return Err(StateError::Mismatch(format!(
                "state has {} NICs, the VM {}",
                saved.len(),
                self.nics.len()
            )));
        }
        for (i, (n, s)) in self.nics.iter().zip(saved).enumerate() {
            let bad = |e: String| StateError::Mismatch(format!("NIC {i}: {e}"));
            if s.version == 0 || s.version > NET_STATE_VERSION {
                return Err(bad(format!(
                    "saved NIC state version {} (this VMM reads 1..={NET_STATE_VERSION})",
                    s.version
                )));
            }
            let mac = <[u8; 6]>::try_from(s.mac.as_slice())
                .map(Mac)
                .map_err(|_| bad(format!("saved MAC has {} bytes", s.mac.len())))?;
            let t = s
                .transport
                .as_ref()
                .ok_or_else(|| bad("no transport state".into()))?;
            let t = transport_from_proto(t).map_err(bad)?;
            let mut tr = lock(&n.transport);
            tr.restore(&t).map_err(bad)?;
            n.shared.set_mac(mac);
            n.shared.set_link_up(s.link_up);
        }
        Ok(())
    }

    /// Holds (true) or releases (false) every NIC's queues: while held no
    /// frame is delivered or sent, so guest memory and the rings stay as
    /// they are (a paused VM being saved or migrated); frames wait in the
    /// tap meanwhile (and beyond its queue are lost, as on a real link).
    pub fn set_frozen(&self, on: bool) {
        for n in &self.nics {
            lock(&n.transport).set_frozen(on);
        }
    }

    /// Lets every NIC process what its driver queued before a restore.
    pub fn kick(&self) {
        for n in &self.nics {
            lock(&n.transport).kick();
        }
    }
}
