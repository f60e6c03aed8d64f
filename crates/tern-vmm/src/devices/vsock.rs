//! The VM's vsock device: virtio-vsock on virtio-mmio with its host side
//! on UNIX sockets (docs/vsock.md), in the device slot after the disks'
//! and NICs', and the handle the worker uses at run time (counters).
//!
//! Saved with its transport and CID; a restore (and so a migration) puts
//! the transport back and asks the device for a transport-reset event,
//! since the host streams of the saved connections stayed behind.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use tern_devices::virtio::mmio::{MmioTransport, MMIO_WINDOW};
use tern_devices::virtio::vsock::thread::VsockThread;
pub use tern_devices::virtio::vsock::VsockConfig;
use tern_devices::virtio::vsock::{Vsock, VsockError as DeviceError, VsockHandle};
use tern_devices::virtio::Timer;
use tern_devices::Bus;
use tern_probe_abi::{DeviceInfo, DEVICE_VIRTIO_VSOCK};
use vmm_sys_util::eventfd::EventFd;

use super::{lock, transport_from_proto, transport_to_proto};
use crate::memory::GuestMem;
use crate::state::proto::VirtioVsockState;
use crate::state::StateError;

/// Version of [`VirtioVsockState`] this VMM writes and reads.
pub const VSOCK_STATE_VERSION: u32 = 1;

/// Errors attaching the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// No slot left after the other devices.
    #[error(
        "the vsock device needs a device slot; {0} are taken (at most {max} devices)",
        max = super::MAX_DEVICES
    )]
    NoSlot(usize),
    /// The device (its CID or socket).
    #[error("vsock")]
    Device(#[source] DeviceError),
    /// Its interrupt or threads.
    #[error("vsock: cannot set up its interrupt or threads")]
    Setup(#[source] std::io::Error),
}

/// What the vsock device shows now, for status output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockStatus {
    /// The guest's CID.
    pub cid: u64,
    /// The host-side socket.
    pub socket: std::path::PathBuf,
    /// Connections open now.
    pub connections: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Bytes the guest sent.
    pub tx_bytes: u64,
    /// Requests refused (either way).
    pub refused: u64,
    /// Malformed packets from the guest, dropped.
    pub bad_packets: u64,
    /// Transport resets delivered.
    pub transport_resets: u64,
}

/// The VM's vsock device (at most one).
pub struct VsockDevice {
    config: VsockConfig,
    transport: Arc<Mutex<MmioTransport>>,
    handle: Arc<VsockHandle>,
    slot: usize,
    // Dropped first: the threads hold only weak references.
    _thread: VsockThread,
    _timer: Timer,
}

impl VsockDevice {
    /// Makes the device for `config`, puts it on `mmio` in slot `slot`
    /// and wires its interrupt through `vm`.
    pub fn attach(
        config: &VsockConfig,
        slot: usize,
        mem: &GuestMem,
        vm: &VmFd,
        mmio: &mut Bus,
    ) -> Result<VsockDevice, VsockError> {
        if slot >= super::MAX_DEVICES {
            return Err(VsockError::NoSlot(slot));
        }
        let dev = Vsock::new(config, Box::new(|e| eprintln!("tern: vsock: {e}")))
            .map_err(VsockError::Device)?;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::Setup)?;
        vm.register_irqfd(&irq, super::slot_gsi(slot))
            .map_err(|e| VsockError::Setup(std::io::Error::from_raw_os_error(e.errno())))?;
        let (handle, epoll, signal) = (dev.handle(), dev.epoll(), dev.signal());
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            Box::new(dev),
            mem.clone(),
            irq,
        )));
        let waker = lock(&transport).waker();
        let timer = Timer::spawn("vsock".into(), waker, Arc::downgrade(&transport))
            .map_err(VsockError::Setup)?;
        let thread = VsockThread::spawn(
            "vsock-rx".into(),
            epoll,
            signal,
            handle.clone(),
            Arc::downgrade(&transport),
        )
        .map_err(VsockError::Setup)?;
        mmio.insert(transport.clone(), super::slot_base(slot), MMIO_WINDOW)
            .expect("device windows are disjoint and inside the MMIO hole");
        Ok(VsockDevice {
            config: config.clone(),
            transport,
            handle,
            slot,
            _thread: thread,
            _timer: timer,
        })
    }

    /// The probe guest's device table entry.
    pub fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: DEVICE_VIRTIO_VSOCK,
            irq: super::slot_gsi(self.slot),
            mmio_base: super::slot_base(self.slot),
            mmio_len: MMIO_WINDOW,
        }
    }

    /// The device's counters.
    pub fn status(&self) -> VsockStatus {
        let s = self.handle.stats();
        VsockStatus {
            cid: self.config.cid,
            socket: self.config.socket.clone(),
            connections: s.connections.load(Relaxed),
            rx_bytes: s.rx_bytes.load(Relaxed),
            tx_bytes: s.tx_bytes.load(Relaxed),
            refused: s.refused.load(Relaxed),
            bad_packets: s.bad_packets.load(Relaxed),
            transport_resets: s.transport_resets.load(Relaxed),
        }
    }

    /// The saved state.
    pub fn save(&self) -> VirtioVsockState {
        VirtioVsockState {
            version: VSOCK_STATE_VERSION,
            transport: Some(transport_to_proto(&lock(&self.transport).save())),
            cid: self.config.cid,
        }
    }

    /// Continues from `s`: the transport as saved, and a transport reset
    /// for the guest (its connections did not come along).
    pub fn restore(&self, s: &VirtioVsockState) -> Result<(), StateError> {
        let bad = |e: String| StateError::Mismatch(format!("vsock: {e}"));
        if s.version == 0 || s.version > VSOCK_STATE_VERSION {
            return Err(bad(format!(
                "saved state version {} (this VMM reads 1..={VSOCK_STATE_VERSION})",
                s.version
            )));
        }
        if s.cid != self.config.cid {
            return Err(bad(format!(
                "saved CID {} differs from the configured {}",
                s.cid, self.config.cid
            )));
        }
        let t = s
            .transport
            .as_ref()
            .ok_or_else(|| bad("no transport state".into()))?;
        let t = transport_from_proto(t).map_err(bad)?;
        lock(&self.transport).restore(&t).map_err(bad)?;
        self.handle.request_transport_reset();
        Ok(())
    }

    /// Holds (true) or releases (false) the queues (a paused VM being
    /// saved or migrated: no guest memory changes).
    pub fn set_frozen(&self, on: bool) {
        lock(&self.transport).set_frozen(on);
    }

    /// Serves what the driver queued before a restore, and the reset event.
    pub fn kick(&self) {
        lock(&self.transport).kick();
    }
}

/// The saved-state record of a VM's vsock device, if it has one.
pub fn save(dev: Option<&VsockDevice>) -> Option<VirtioVsockState> {
    dev.map(VsockDevice::save)
}

/// Continues `dev` from `saved`: a device without a saved record (a
/// state from before vsock was saved) starts fresh, and so does the
/// guest's driver, which finds it reset; a record for a VM without the
/// device is refused.
pub fn restore(
    dev: Option<&VsockDevice>,
    saved: Option<&VirtioVsockState>,
) -> Result<(), StateError> {
    match (dev, saved) {
        (Some(d), Some(s)) => d.restore(s),
        (None, Some(_)) => Err(StateError::Mismatch(
            "the state has a vsock device, the VM none".into(),
        )),
        (_, None) => Ok(()),
    }
}
