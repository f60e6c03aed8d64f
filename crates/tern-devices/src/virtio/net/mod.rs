//! The virtio-net device (virtio 1.2, §5.1) over a [`NetBackend`] (a tap).
//!
//! Queue 0 receives (host to guest), queue 1 transmits. Every frame moves
//! with the 12-byte `virtio_net_hdr` the tap also uses, so checksum and
//! segmentation offloads pass through untouched; the tap's offloads
//! follow what the driver accepted ([`NetBackend::set_offloads`]), so the
//! kernel never hands the guest a frame it did not ask for.
//!
//! Everything the driver hands over is untrusted. A chain that cannot be
//! used (unmapped, read-only where it must be writable, too short for the
//! header, longer than the largest frame, or asking for an offload it did
//! not negotiate) is completed with length 0 and counted; the frame it
//! carried or would have carried is dropped. Nothing a driver does stalls
//! the device or panics it; only a broken ring (an avail index beyond the
//! queue) puts it into DEVICE_NEEDS_RESET, through the transport.
//!
//! TX runs on the vCPU thread that notified. RX is driven by the NIC's
//! thread ([`rx::RxThread`]) polling the tap: a frame is read only when
//! the guest has buffers for it; without buffers the frame waits in the
//! device and the thread sleeps until the driver adds some.

pub mod rx;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use tern_net::{Mac, Offloads, Tap, VNET_HDR_LEN};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};

use super::{Mem, QueueOutcome, VirtioDevice, VIRTIO_F_VERSION_1};

/// Virtio device id of a network device.
pub const DEVICE_ID: u32 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue.
pub const RX_QUEUE: usize = 0;
/// The transmit queue.
pub const TX_QUEUE: usize = 1;
/// Largest frame without segmentation offloads (Ethernet header + 1500,
/// with room for a VLAN tag).
pub const MAX_PLAIN_FRAME: usize = 1518;
/// Largest frame (header excluded) either way: a 64 KiB GSO packet with
/// its Ethernet and VLAN headers.
pub const MAX_FRAME: usize = 65536 + 18;
/// How long TX waits before retrying a frame the tap's queue refused.
pub const TX_RETRY: Duration = Duration::from_micros(500);
/// How long RX waits before looking again at a ring whose buffers are
/// too few for the frame at hand (mergeable buffers): the chains stay on
/// the ring meanwhile, so the transport must not be told to wait for a
/// notification that the driver, seeing buffers posted, may never send.
pub const RX_RETRY: Duration = Duration::from_micros(500);

/// Feature bits (§5.1.3).
pub mod feature {
    #![allow(missing_docs)]
    pub const CSUM: u32 = 0;
    pub const GUEST_CSUM: u32 = 1;
    pub const MAC: u32 = 5;
    pub const GUEST_TSO4: u32 = 7;
    pub const GUEST_TSO6: u32 = 8;
    pub const GUEST_ECN: u32 = 9;
    pub const HOST_TSO4: u32 = 11;
    pub const HOST_TSO6: u32 = 12;
    pub const HOST_ECN: u32 = 13;
    pub const MRG_RXBUF: u32 = 15;
    pub const STATUS: u32 = 16;
}

/// `virtio_net_hdr.flags`: the checksum must be completed.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.gso_type` values.
pub mod gso {
    #![allow(missing_docs)]
    pub const NONE: u8 = 0;
    pub const TCPV4: u8 = 1;
    pub const UDP: u8 = 3;
    pub const TCPV6: u8 = 4;
    pub const ECN: u8 = 0x80;
}
/// Config `status`: the link is up.
pub const S_LINK_UP: u16 = 1;

/// Where frames go and come from.
pub trait NetBackend: Send {
    /// Reads one frame, header first, into `buf`; `Ok(None)`: none waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>>;
    /// Writes one frame, header first; `Ok(false)`: no room now, retry.
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<bool>;
    /// Sets the offloads the reader (the guest) accepts.
    fn set_offloads(&mut self, o: Offloads) -> std::io::Result<()>;
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<bool> {
        Tap::write_frame(self, frame)
    }
    fn set_offloads(&mut self, o: Offloads) -> std::io::Result<()> {
        Tap::set_offloads(self, o).map_err(std::io::Error::other)
    }
}

/// Counters a VMM can show. Drops are split by cause.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Bytes delivered to the guest (headers excluded).
    pub rx_bytes: AtomicU64,
    /// Frames sent by the guest.
    pub tx_frames: AtomicU64,
    /// Bytes sent by the guest (headers excluded).
    pub tx_bytes: AtomicU64,
    /// Received frames dropped: the guest's buffers could not hold them
    /// (or were unusable).
    pub rx_dropped: AtomicU64,
    /// Guest chains refused: unusable, too short or too long, or asking
    /// for an offload not negotiated.
    pub tx_errors: AtomicU64,
    /// Frames the backend refused (interface down, bad header).
    pub tx_dropped: AtomicU64,
    /// Backend read errors.
    pub rx_errors: AtomicU64,
}

/// What the RX thread and the device share: whether the device holds a
/// frame it has no buffer for (then the thread stops polling the tap),
/// and the eventfd that wakes the thread once the driver adds buffers.
#[derive(Debug)]
pub struct RxSignal {
    starved: AtomicBool,
    wake: OwnedFd,
}

impl RxSignal {
    /// A fresh signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(RxSignal {
            starved: AtomicBool::new(false),
            wake: new_eventfd()?,
        })
    }

    /// True while a frame waits for guest buffers.
    pub fn starved(&self) -> bool {
        self.starved.load(Ordering::Acquire)
    }

    /// The eventfd the thread polls.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    fn set_starved(&self, on: bool) {
        let was = self.starved.swap(on, Ordering::AcqRel);
        if was && !on {
            signal_eventfd(self.wake.as_fd());
        }
    }
}

/// A non-blocking eventfd.
pub(crate) fn new_eventfd() -> std::io::Result<OwnedFd> {
    use rustix::event::{eventfd, EventfdFlags};
    Ok(eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?)
}

/// Adds 1 to an eventfd's counter (a full counter still leaves it
/// readable, so a failed write loses nothing).
pub(crate) fn signal_eventfd(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Empties an eventfd's counter.
pub(crate) fn drain_eventfd(fd: BorrowedFd<'_>) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

/// Configuration of one NIC model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The NIC's address (config space, VIRTIO_NET_F_MAC).
    pub mac: Mac,
}

/// What the VMM may change under a running device: the address and the
/// link state in config space. Change it with the transport locked and
/// call [`super::mmio::MmioTransport::config_changed`] before unlocking,
/// so the driver never reads half of a change.
#[derive(Debug)]
pub struct NicShared {
    mac: std::sync::Mutex<Mac>,
    link_up: AtomicBool,
}

impl NicShared {
    /// The NIC's address.
    pub fn mac(&self) -> Mac {
        *self.mac.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the address (a restore brings back the saved one).
    pub fn set_mac(&self, mac: Mac) {
        *self.mac.lock().unwrap_or_else(|p| p.into_inner()) = mac;
    }

    /// Whether config space shows the link up.
    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    /// Sets the link state config space shows.
    pub fn set_link_up(&self, up: bool) {
        self.link_up.store(up, Ordering::Release);
    }
}

/// A virtio-net device.
pub struct Net {
    backend: Box<dyn NetBackend>,
    shared: Arc<NicShared>,
    acked: u64,
    stats: Arc<NetStats>,
    signal: Arc<RxSignal>,
    /// A frame read from the backend and not yet delivered (header first).
    rx_frame: Vec<u8>,
    rx_len: usize,
    tx_buf: Vec<u8>,
    on_error: Box<dyn Fn(&str) + Send>,
    errors_logged: u64,
}

type W<'a> =
    Writer<'a, <vm_memory::bitmap::AtomicBitmap as vm_memory::bitmap::WithBitmapSlice<'a>>::S>;

/// Most guest mistakes logged per device (they are all counted).
const MAX_LOGGED: u64 = 16;

impl Net {
    /// A device over `backend`; `on_error` gets a line for the first
    /// guest mistakes and backend failures (all are counted).
    pub fn new(
        backend: Box<dyn NetBackend>,
        config: NetConfig,
        signal: Arc<RxSignal>,
        on_error: Box<dyn Fn(&str) + Send>,
    ) -> Self {
        Net {
            backend,
            shared: Arc::new(NicShared {
                mac: std::sync::Mutex::new(config.mac),
                link_up: AtomicBool::new(true),
            }),
            acked: 0,
            stats: Arc::default(),
            signal,
            rx_frame: vec![0; VNET_HDR_LEN + MAX_FRAME],
            rx_len: 0,
            tx_buf: Vec::with_capacity(VNET_HDR_LEN + MAX_FRAME),
            on_error,
            errors_logged: 0,
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// The address and link state, for the VMM to change.
    pub fn shared(&self) -> Arc<NicShared> {
        self.shared.clone()
    }

    fn has(&self, bit: u32) -> bool {
        self.acked & (1 << bit) != 0
    }

    fn log(&mut self, e: &str) {
        if self.errors_logged < MAX_LOGGED {
            self.errors_logged += 1;
            (self.on_error)(e);
        }
    }

    fn config(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.shared.mac().bytes());
        let st = if self.shared.link_up() { S_LINK_UP } else { 0 };
        c[6..8].copy_from_slice(&st.to_le_bytes());
        c
    }

    /// Largest frame the guest accepts on RX: big only with a GSO offload.
    fn rx_limit(&self) -> usize {
        if self.has(feature::GUEST_TSO4) || self.has(feature::GUEST_TSO6) {
            MAX_FRAME
        } else {
            MAX_PLAIN_FRAME
        }
    }

    /// Largest frame the guest may send.
    fn tx_limit(&self) -> usize {
        if self.has(feature::HOST_TSO4) || self.has(feature::HOST_TSO6) {
            MAX_FRAME
        } else {
            MAX_PLAIN_FRAME
        }
    }

    /// Whether a TX header asks only for what was negotiated.
    fn tx_header_ok(&self, hdr: &[u8]) -> bool {
        let flags = hdr[0];
        let gso_type = hdr[1] & !gso::ECN;
        if flags & HDR_F_NEEDS_CSUM != 0 && !self.has(feature::CSUM) {
            return false;
        }
        if hdr[1] & gso::ECN != 0 && !self.has(feature::HOST_ECN) {
            return false;
        }
        match gso_type {
            gso::NONE => true,
            gso::TCPV4 => self.has(feature::HOST_TSO4),
            gso::TCPV6 => self.has(feature::HOST_TSO6),
            _ => false,
        }
    }

    /// Sends every chain the driver queued on TX.
    fn transmit(&mut self, queue: &mut Queue, mem: &Mem) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    out.broken = true;
                    return out;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            match self.send(chain, mem) {
                Ok(()) => {}
                Err(TxWait) => {
                    // The tap's queue is full: leave the chain for a retry.
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    out.retry_after = Some(TX_RETRY);
                    break;
                }
            }
            if queue.add_used(mem, head, 0).is_err() {
                out.broken = true;
                return out;
            }
            out.used = true;
        }
        out
    }

    /// Sends one chain (or drops it, counted); `Err` when the backend has
    /// no room now.
    fn send(
        &mut self,
        chain: virtio_queue::DescriptorChain<&Mem>,
        mem: &Mem,
    ) -> Result<(), TxWait> {
        let mut r = match Reader::new(mem, chain) {
            Ok(r) => r,
            Err(e) => {
                self.tx_error(&format!("TX chain unusable: {e}"));
                return Ok(());
            }
        };
        let n = r.available_bytes();
        if n < VNET_HDR_LEN || n - VNET_HDR_LEN > self.tx_limit() {
            let max = self.tx_limit();
            self.tx_error(&format!(
                "TX frame of {n} bytes with header is outside {VNET_HDR_LEN}..={} bytes",
                VNET_HDR_LEN + max
            ));
            return Ok(());
        }
        self.tx_buf.resize(n, 0);
        if let Err(e) = r.read_exact(&mut self.tx_buf) {
            self.tx_error(&format!("TX frame unreadable: {e}"));
            return Ok(());
        }
        if !self.tx_header_ok(&self.tx_buf[..VNET_HDR_LEN]) {
            let (f, g) = (self.tx_buf[0], self.tx_buf[1]);
            self.tx_error(&format!(
                "TX header asks for an offload not negotiated (flags {f:#x}, gso_type {g:#x})"
            ));
            return Ok(());
        }
        // num_buffers means nothing on TX; the tap ignores it.
        match self.backend.write_frame(&self.tx_buf) {
            Ok(true) => {
                self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .tx_bytes
                    .fetch_add((n - VNET_HDR_LEN) as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(false) => Err(TxWait),
            Err(e) => {
                self.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                self.log(&format!("TX frame refused by the backend: {e}"));
                Ok(())
            }
        }
    }

    fn tx_error(&mut self, e: &str) {
        self.stats.tx_errors.fetch_add(1, Ordering::Relaxed);
        self.log(e);
    }

    /// Delivers frames from the backend while the guest has buffers.
    fn receive(&mut self, queue: &mut Queue, mem: &Mem) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        loop {
            if self.rx_len == 0 {
                match self.backend.read_frame(&mut self.rx_frame) {
                    Ok(Some(n)) if n <= VNET_HDR_LEN => {
                        self.stats.rx_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ok(Some(n)) => self.rx_len = n,
                    Ok(None) => {
                        out.backend_wait = true;
                        break;
                    }
                    Err(e) => {
                        self.stats.rx_errors.fetch_add(1, Ordering::Relaxed);
                        self.log(&format!("RX read from the backend failed: {e}"));
                        out.backend_wait = true;
                        break;
                    }
                }
                if self.rx_len - VNET_HDR_LEN > self.rx_limit() {
                    // Cannot happen with the tap's offloads set as
                    // negotiated; a backend that does it loses the frame.
                    self.rx_len = 0;
                    self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            match self.deliver(queue, mem) {
                Deliver::Done => out.used = true,
                Deliver::NoBuffers { partial } => {
                    self.signal.set_starved(true);
                    if partial {
                        out.retry_after = Some(RX_RETRY);
                    }
                    return out;
                }
                Deliver::Broken => {
                    out.broken = true;
                    return out;
                }
            }
        }
        self.signal.set_starved(false);
        out
    }

    /// Puts the pending frame into the guest's buffers: one chain, or with
    /// MRG_RXBUF as many as it takes. A frame that does not fit what the
    /// driver gave (too small without MRG_RXBUF, a whole ring too small
    /// with it, or a chain that is unusable) is dropped and the chains it
    /// took are used empty: a driver's mistake never stalls the queue.
    fn deliver(&mut self, queue: &mut Queue, mem: &Mem) -> Deliver {
        let len = self.rx_len;
        let merge = self.has(feature::MRG_RXBUF);
        let start = queue.next_avail();
        let ring = usize::from(queue.size()).max(1);
        let mut chains: Vec<(u16, Option<W<'_>>)> = Vec::new();
        let mut room = 0usize;
        let mut bad = false;
        while room < len {
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => return Deliver::Broken,
            };
            let Some(chain) = chain else {
                // Not enough buffers yet: put back what was taken.
                queue.set_next_avail(start);
                return Deliver::NoBuffers {
                    partial: !chains.is_empty(),
                };
            };
            let head = chain.head_index();
            match Writer::new(mem, chain) {
                Ok(w) => {
                    room += w.available_bytes();
                    chains.push((head, Some(w)));
                }
                Err(e) => {
                    self.log(&format!("RX chain unusable: {e}"));
                    chains.push((head, None));
                    bad = true;
                    break;
                }
            }
            if !merge || chains.len() >= ring {
                break;
            }
        }
        let mut ok = !bad && room >= len;
        if ok {
            let n = chains.len() as u16;
            self.rx_frame[10..12].copy_from_slice(&n.to_le_bytes());
            let mut off = 0;
            for w in chains.iter_mut().filter_map(|(_, w)| w.as_mut()) {
                let take = w.available_bytes().min(len - off);
                if w.write_all(&self.rx_frame[off..off + take]).is_err() {
                    ok = false;
                    break;
                }
                off += take;
            }
        }
        if ok {
            self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
            self.stats
                .rx_bytes
                .fetch_add((len - VNET_HDR_LEN) as u64, Ordering::Relaxed);
        } else {
            self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
            if !bad {
                self.log(&format!(
                    "RX frame of {len} bytes with header dropped: the guest's buffers hold {room}"
                ));
            }
        }
        self.rx_len = 0;
        for (head, w) in &chains {
            let used = match w {
                Some(w) if ok => w.bytes_written() as u32,
                _ => 0,
            };
            if queue.add_used(mem, *head, used).is_err() {
                return Deliver::Broken;
            }
        }
        Deliver::Done
    }
}

/// The backend has no room for a frame now.
struct TxWait;

enum Deliver {
    /// The frame was delivered or dropped; chains were used.
    Done,
    /// The guest has not given enough buffers; nothing was consumed.
    /// `partial`: some were there (left on the ring).
    NoBuffers { partial: bool },
    /// The ring is broken.
    Broken,
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        // No VIRTIO_RING_F_EVENT_IDX: with it, a ring left holding too few
        // mergeable buffers (see RX_RETRY) would carry a stale avail event
        // and the driver would stop notifying.
        [
            VIRTIO_F_VERSION_1,
            feature::CSUM,
            feature::GUEST_CSUM,
            feature::MAC,
            feature::GUEST_TSO4,
            feature::GUEST_TSO6,
            feature::GUEST_ECN,
            feature::HOST_TSO4,
            feature::HOST_TSO6,
            feature::HOST_ECN,
            feature::MRG_RXBUF,
            feature::STATUS,
        ]
        .iter()
        .fold(0u64, |f, b| f | 1 << b)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
        let csum = self.has(feature::GUEST_CSUM);
        let o = Offloads {
            csum,
            tso4: csum && self.has(feature::GUEST_TSO4),
            tso6: csum && self.has(feature::GUEST_TSO6),
            tso_ecn: csum && self.has(feature::GUEST_ECN),
        };
        if let Err(e) = self.backend.set_offloads(o) {
            self.log(&format!("cannot set the tap's offloads to {o:?}: {e}"));
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| c.get(usize::try_from(o).ok()?).copied())
                .unwrap_or(0);
        }
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &Mem) -> QueueOutcome {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => QueueOutcome::default(),
        }
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.rx_len = 0;
        self.signal.set_starved(false);
        if let Err(e) = self.backend.set_offloads(Offloads::default()) {
            self.log(&format!("cannot clear the tap's offloads: {e}"));
        }
    }
}
