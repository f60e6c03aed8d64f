//! The virtio-mmio transport, version 2 (virtio 1.2, §4.2.2).
//!
//! Every value the driver writes is checked: a register access of the wrong
//! width or alignment is ignored (reads return 0), queue parameters are
//! validated by `virtio-queue` before the device runs, and a driver that
//! breaks a queue's rules puts the device into DEVICE_NEEDS_RESET instead
//! of taking the VMM down.

use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

use super::{
    status, Mem, Poll, QueueOutcome, Timed, VirtioDevice, Waker, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::bus::BusDevice;

/// Size of one device's register window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Vendor id reported to the driver ("TERN" would not fit a PCI-style id;
/// any value is allowed here).
pub const VENDOR_ID: u32 = 0x4e52_4554;

/// Register offsets (§4.2.2).
pub mod reg {
    #![allow(missing_docs)]
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const QUEUE_RESET: u64 = 0x0c0;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Avail ring flag: the driver does not want used-buffer interrupts.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// InterruptStatus bit: a queue has used buffers.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// A transport's saved registers and queue positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportState {
    /// QueueSel.
    pub queue_sel: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Device status.
    pub status: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Each queue's configuration and ring positions.
    pub queues: Vec<virtio_queue::QueueState>,
}

/// A virtio device behind an MMIO register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Mem,
    irq: EventFd,
    waker: Arc<Waker>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    threaded: bool,
    /// Queue processing held (the backend is handed to another process
    /// during a migration); requests wait in the rings.
    frozen: bool,
}

impl MmioTransport {
    /// A transport for `device`; `irq` is signalled (an irqfd) for used
    /// buffers and config changes.
    pub fn new(device: Box<dyn VirtioDevice>, mem: Mem, irq: EventFd) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&n| Queue::new(n).expect("device queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            irq,
            waker: Arc::new(Waker::default()),
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            threaded: false,
            frozen: false,
        }
    }

    /// The transport's registers and queue positions, for saving. The
    /// device model's own state is rebuilt from its backend and the
    /// negotiated features.
    pub fn save(&self) -> TransportState {
        TransportState {
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self.queues.iter().map(|q| q.state()).collect(),
        }
    }

    /// Continues from a saved [`TransportState`]. Every value is checked as
    /// if the driver had written it; a state that does not fit this device
    /// is refused and the transport left as it was.
    pub fn restore(&mut self, s: &TransportState) -> Result<(), String> {
        if s.queues.len() != self.queues.len() {
            return Err(format!(
                "{} queues saved, the device has {}",
                s.queues.len(),
                self.queues.len()
            ));
        }
        if s.driver_features & !self.device.features() != 0 {
            return Err(format!(
                "saved driver features {:#x} are not offered by the device",
                s.driver_features
            ));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (qs, max)) in s
            .queues
            .iter()
            .zip(self.device.queue_max_sizes())
            .enumerate()
        {
            if qs.max_size != *max {
                return Err(format!(
                    "queue {i}: saved max size {} != {max}",
                    qs.max_size
                ));
            }
            let q = Queue::try_from(*qs).map_err(|e| format!("queue {i}: {e:?}"))?;
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(format!("queue {i}: rings outside guest memory"));
            }
            queues.push(q);
        }
        self.queues = queues;
        self.queue_sel = s.queue_sel;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.interrupt_status = s.interrupt_status;
        if self.status & status::FEATURES_OK != 0 {
            self.device.ack_features(self.driver_features);
        }
        if self.interrupt_status != 0 {
            // A level the source had raised is raised again here.
            let _ = self.irq.write(1);
        }
        Ok(())
    }

    /// The waker of this transport's timer thread (see [`super::Timer`]).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// The device status register as the driver last set it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// InterruptStatus as the driver would read it.
    pub fn read_interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// The device model.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Tells the driver the config space changed: bumps ConfigGeneration
    /// and raises the config interrupt. Call it with the transport locked
    /// across the change, so the driver never reads half of one.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.signal(INT_CONFIG);
        }
    }

    fn signal(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        // A full eventfd counter (never in practice) still leaves it readable.
        let _ = self.irq.write(1);
    }

    fn running(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    fn needs_reset(&mut self) {
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            self.status |= status::DEVICE_NEEDS_RESET;
            // §2.1.2: the device notifies the driver by a config change.
            self.config_changed();
        }
    }

    /// Hands queue processing to the timer thread ([`super::Timer`]):
    /// QueueNotify then only wakes it, and it polls the rings for a while
    /// after each burst with driver notifications off, so a busy driver
    /// needs no exits at all. Without it, QueueNotify processes inline.
    pub fn set_threaded(&mut self, on: bool) {
        self.threaded = on;
    }

    /// Holds (true) or releases (false) queue processing. While held,
    /// requests stay in the rings untouched, so neither guest memory nor
    /// the backend changes; releasing processes whatever arrived meanwhile.
    pub fn set_frozen(&mut self, on: bool) {
        self.frozen = on;
        if !on {
            self.waker.kick();
        }
    }

    /// Processes requests the driver queued before this transport was
    /// restored (its notification went to the saved side).
    pub fn kick(&self) {
        self.waker.kick();
    }

    /// Processes queue `index` if the device is running, then re-arms
    /// driver notifications (and goes on if work raced in).
    pub fn process(&mut self, index: usize) -> QueueOutcome {
        let mut total = QueueOutcome::default();
        loop {
            let out = self.process_once(index);
            total.used |= out.used;
            total.retry_after = out.retry_after;
            total.broken = out.broken;
            if out.broken
                || out.retry_after.is_some()
                || out.backend_wait
                || !self.running()
                || self.frozen
            {
                return total;
            }
            let Some(q) = self.queues.get_mut(index).filter(|q| q.ready()) else {
                return total;
            };
            match q.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => return total,
                Err(_) => {
                    self.needs_reset();
                    total.broken = true;
                    return total;
                }
            }
        }
    }

    /// Processes what queue `index` has now, without touching notifications.
    fn process_once(&mut self, index: usize) -> QueueOutcome {
        if !self.running() || self.frozen {
            return QueueOutcome::default();
        }
        let Some(q) = self.queues.get_mut(index) else {
            return QueueOutcome::default();
        };
        if !q.ready() {
            return QueueOutcome::default();
        }
        let out = self.device.process_queue(index, q, &self.mem);
        if out.broken {
            self.needs_reset();
            return out;
        }
        if out.used && self.wants_interrupt(index) {
            self.signal(INT_VRING);
        }
        if let Some(d) = out.retry_after {
            self.waker.schedule(Instant::now() + d);
        }
        out
    }

    /// Whether the driver wants an interrupt for new used entries: by the
    /// used event index, or without it by VRING_AVAIL_F_NO_INTERRUPT (which
    /// `virtio-queue` does not look at). A polling driver sets the flag and
    /// saves the VMM an eventfd write and KVM an injection per request.
    fn wants_interrupt(&mut self, index: usize) -> bool {
        let Some(q) = self.queues.get_mut(index) else {
            return false;
        };
        if q.event_idx_enabled() {
            // An unreadable event index just means we interrupt anyway.
            return q.needs_notification(&self.mem).unwrap_or(true);
        }
        let flags: u16 = self
            .mem
            .read_obj(vm_memory::GuestAddress(q.avail_ring()))
            .unwrap_or(0);
        u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0
    }

    fn process_all(&mut self) {
        for i in 0..self.queues.len() {
            self.process(i);
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A queue register may change only before the queue is enabled and
    /// before DRIVER_OK.
    fn queue_writable(&mut self) -> Option<&mut Queue> {
        if self.status & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET) != 0 {
            return None;
        }
        self.selected().filter(|q| !q.ready())
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let sel = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => sel.map_or(0, |q| q.max_size() as u32),
            reg::QUEUE_READY => sel.map_or(0, |q| q.ready() as u32),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            // No shared memory regions: a length of all ones says so.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            // Only while negotiating.
            reg::DRIVER_FEATURES
                if self.status & status::FEATURES_OK == 0 && self.status & status::DRIVER != 0 =>
            {
                let f = self.driver_features;
                self.driver_features = match self.driver_features_sel {
                    0 => (f & !0xffff_ffff) | v as u64,
                    1 => (f & 0xffff_ffff) | (v as u64) << 32,
                    _ => f,
                };
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.queue_writable() {
                    let ok = u16::try_from(v).is_ok_and(|n| q.try_set_size(n).is_ok());
                    if !ok {
                        self.needs_reset();
                    }
                }
            }
            reg::QUEUE_READY if self.status & status::DEVICE_NEEDS_RESET != 0 => {}
            reg::QUEUE_READY => {
                let mem = self.mem.clone();
                let Some(q) = self.selected() else { return };
                match v {
                    1 if !q.ready() => {
                        // is_valid() only judges a ready queue.
                        q.set_ready(true);
                        if !q.is_valid(&mem) {
                            q.set_ready(false);
                            self.needs_reset();
                        }
                    }
                    0 => q.set_ready(false),
                    _ => {}
                }
            }
            reg::QUEUE_NOTIFY if self.threaded => self.waker.kick(),
            reg::QUEUE_NOTIFY => {
                // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
                self.process(v as usize & 0xffff);
            }
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.write_status(v),
            reg::QUEUE_DESC_LOW..=reg::QUEUE_DEVICE_HIGH => self.set_addr(offset, v),
            _ => {}
        }
    }

    /// A write to one half of a ring address; a misaligned address puts
    /// the device into DEVICE_NEEDS_RESET.
    fn set_addr(&mut self, offset: u64, v: u32) {
        let Some(q) = self.queue_writable() else {
            return;
        };
        let (cur, base) = match offset & !0xf {
            reg::QUEUE_DESC_LOW => (q.desc_table(), reg::QUEUE_DESC_LOW),
            reg::QUEUE_DRIVER_LOW => (q.avail_ring(), reg::QUEUE_DRIVER_LOW),
            reg::QUEUE_DEVICE_LOW => (q.used_ring(), reg::QUEUE_DEVICE_LOW),
            _ => return,
        };
        let new = match offset - base {
            0 => (cur & !0xffff_ffff) | v as u64,
            4 => (cur & 0xffff_ffff) | (v as u64) << 32,
            _ => return,
        };
        let a = vm_memory::GuestAddress(new);
        let r = match base {
            reg::QUEUE_DESC_LOW => q.try_set_desc_table_address(a),
            reg::QUEUE_DRIVER_LOW => q.try_set_avail_ring_address(a),
            _ => q.try_set_used_ring_address(a),
        };
        if r.is_err() {
            self.needs_reset();
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Bits are only ever added (§3.1.1), except by a reset.
        let mut new = old | (v & 0xff);
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let offered = self.device.features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if ok {
                self.device.ack_features(self.driver_features);
                let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
                for q in &mut self.queues {
                    q.set_event_idx(event_idx);
                }
            } else {
                // The driver reads FEATURES_OK back and sees it refused.
                new &= !status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            if new & status::FEATURES_OK == 0 {
                new &= !status::DRIVER_OK;
            } else {
                self.status = new;
                // Work the driver queued before DRIVER_OK.
                self.process_all();
                return;
            }
        }
        self.status = new;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

impl Timed for MmioTransport {
    fn on_timer(&mut self, retry: bool) {
        self.device.tick();
        if retry {
            self.process_all();
        }
    }

    fn poll(&mut self) -> Poll {
        let mut poll = Poll::Idle;
        for i in 0..self.queues.len() {
            let out = self.process_once(i);
            if out.retry_after.is_some() || out.broken {
                return Poll::Stop;
            }
            if out.used {
                poll = Poll::Worked;
            }
        }
        if !self.running() || self.frozen {
            return Poll::Stop;
        }
        poll
    }

    fn set_notify(&mut self, on: bool) -> bool {
        let mut pending = false;
        for q in self.queues.iter_mut().filter(|q| q.ready()) {
            let r = if on {
                q.enable_notification(&self.mem)
            } else {
                q.disable_notification(&self.mem).map(|()| false)
            };
            // A broken ring shows up (NEEDS_RESET) at the next process.
            pending |= r.unwrap_or(false);
        }
        pending
    }
}
