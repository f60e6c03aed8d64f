//! A polling virtio-net driver (virtio 1.2, §5.1) on the virtio-mmio
//! transport, as a `smoltcp` device.
//!
//! It drives one NIC at a time on the device memory area the ABI reserves
//! ([`DEVICE_MEM_BASE`]..`DATA_BASE`), which no other driver uses while a
//! `net` step runs: the two split queues at its start, then one 2 KiB
//! buffer per descriptor on each queue, then the TCP socket buffers the
//! workload takes ([`SOCKET_AREA`]). Descriptor `i` of either queue always
//! points at buffer `i`. Features: VERSION_1, MAC and MRG_RXBUF (every
//! buffer holds a whole frame, so `num_buffers` is always 1); no offloads:
//! smoltcp computes its checksums, and the tap then hands over only
//! finished frames no longer than the MTU.
//!
//! Notifications cost an exit each, so they are batched: [`Net::flush`]
//! (after each poll of the stack) notifies TX once for all frames queued,
//! and RX only when the device may have run out of buffers (every buffer
//! it had was seen used since the last notification).

use crate::setup::{self, SetupError};
use crate::virtio::{reg, Buf, Mmio, QueueMem, SplitQueue};
use core::fmt;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use tern_probe_abi::{BootInfo, DEVICE_MEM_BASE, DEVICE_VIRTIO_NET};

/// Virtio device id of a network device.
const DEVICE_ID_NET: u32 = 1;
/// Feature bits used.
const F_MAC: u32 = 5;
const F_MRG_RXBUF: u32 = 15;
/// The header in front of every frame.
pub const HDR_LEN: usize = 12;
/// Largest queue the driver sets up.
const MAX_QUEUE: u32 = 256;
/// Bytes per buffer: a 1514-byte frame and its header fit.
const BUF_LEN: u64 = 2048;
/// Largest frame handed to smoltcp (Ethernet header + 1500).
pub const MTU: usize = 1514;

const RX_DESC: u64 = DEVICE_MEM_BASE;
const RX_AVAIL: u64 = DEVICE_MEM_BASE + 0x1000;
const RX_USED: u64 = DEVICE_MEM_BASE + 0x2000;
const TX_DESC: u64 = DEVICE_MEM_BASE + 0x3000;
const TX_AVAIL: u64 = DEVICE_MEM_BASE + 0x4000;
const TX_USED: u64 = DEVICE_MEM_BASE + 0x5000;
const RX_BUFS: u64 = DEVICE_MEM_BASE + 0x10000;
const TX_BUFS: u64 = RX_BUFS + MAX_QUEUE as u64 * BUF_LEN;
/// Free for the workload's socket buffers, up to `DATA_BASE`.
pub const SOCKET_AREA: u64 = TX_BUFS + MAX_QUEUE as u64 * BUF_LEN;

const _: () = assert!(16 * MAX_QUEUE as u64 <= 0x1000);
const _: () = assert!(6 + 8 * MAX_QUEUE as u64 <= 0x1000);
const _: () = assert!(SOCKET_AREA < tern_probe_abi::DATA_BASE);

/// Why the driver gave up; shown as `reason=WORD` plus details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The boot info has no NIC with this index.
    NoDevice { nics: u32 },
    /// The device could not be brought up.
    Setup(SetupError),
}

impl From<SetupError> for Error {
    fn from(e: SetupError) -> Error {
        Error::Setup(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoDevice { nics } => write!(f, "reason=no-device nics={nics}"),
            Error::Setup(e) => e.fmt(f),
        }
    }
}

/// Counters the workload reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Used entries the device returned that the driver could not use
    /// (a head it did not post, a length out of range).
    pub bad_used: u64,
    /// Frames smoltcp wanted to send with every TX buffer in flight.
    pub tx_full: u64,
    /// Notifications written (exits).
    pub notifies: u64,
}

struct Rx {
    queue: SplitQueue,
    size: u16,
    /// Buffers posted and not yet seen used.
    outstanding: u16,
    /// The device may be out of buffers: notify after re-posting.
    starved: bool,
}

struct Tx {
    queue: SplitQueue,
    size: u16,
    free: [u16; MAX_QUEUE as usize],
    nfree: usize,
    queued: bool,
}

/// One NIC, brought up.
pub struct Net {
    mmio: Mmio,
    mac: [u8; 6],
    rx: Rx,
    tx: Tx,
    counters: Counters,
}

fn buf(base: u64, i: u16) -> u64 {
    base + u64::from(i) * BUF_LEN
}

impl Net {
    /// Finds NIC `nic` (among the boot info's NICs) and brings it up.
    pub fn open(info: &BootInfo, nic: u64, ticks_per_sec: u64) -> Result<Net, Error> {
        let count = info.device_count.min(info.devices.len() as u32) as usize;
        let nics = info.devices[..count]
            .iter()
            .filter(|d| d.kind == DEVICE_VIRTIO_NET);
        let n = nics.clone().count() as u32;
        let dev = usize::try_from(nic)
            .ok()
            .and_then(|i| nics.clone().nth(i))
            .ok_or(Error::NoDevice { nics: n })?;
        let mmio = Mmio::new(dev.mmio_base);
        setup::begin(mmio, DEVICE_ID_NET, ticks_per_sec)?;
        let r = Self::init(mmio);
        if r.is_err() {
            setup::fail(mmio);
        }
        r
    }

    fn queue(mmio: Mmio, index: u32, mem: QueueMem) -> Result<(SplitQueue, u16), Error> {
        // SAFETY: the areas lie in the device memory area reserved for
        // drivers, sized for MAX_QUEUE entries (asserted above); only this
        // driver uses it while its step runs, and the device was reset.
        Ok(unsafe { setup::queue(mmio, index, mem, MAX_QUEUE, 2) }?)
    }

    fn init(mmio: Mmio) -> Result<Net, Error> {
        let wanted = setup::negotiate(mmio, 1 << F_MAC | 1 << F_MRG_RXBUF)?;
        let mut mac = [0x02, 0, 0, 0, 0, 1];
        if wanted & 1 << F_MAC != 0 {
            let lo = mmio.config32(0).to_le_bytes();
            let hi = mmio.config32(4).to_le_bytes();
            mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
        }
        let (rxq, rx_size) = Self::queue(
            mmio,
            0,
            QueueMem {
                desc: RX_DESC,
                avail: RX_AVAIL,
                used: RX_USED,
            },
        )?;
        let (txq, tx_size) = Self::queue(
            mmio,
            1,
            QueueMem {
                desc: TX_DESC,
                avail: TX_AVAIL,
                used: TX_USED,
            },
        )?;
        let mut net = Net {
            mmio,
            mac,
            rx: Rx {
                queue: rxq,
                size: rx_size,
                outstanding: 0,
                starved: false,
            },
            tx: Tx {
                queue: txq,
                size: tx_size,
                free: [0; MAX_QUEUE as usize],
                nfree: 0,
                queued: false,
            },
            counters: Counters::default(),
        };
        for i in 0..tx_size {
            net.tx.free[usize::from(i)] = i;
        }
        net.tx.nfree = usize::from(tx_size);
        for i in 0..rx_size {
            net.rx.post(i);
        }
        setup::driver_ok(mmio)?;
        net.rx.starved = false;
        Ok(net)
    }

    /// The NIC's address (from config space).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Tells the device about frames queued and buffers re-posted since
    /// the last call (one exit each, at most).
    pub fn flush(&mut self) {
        if self.tx.queued {
            self.tx.queued = false;
            if !self.tx.queue.notify_suppressed() {
                self.mmio.write(reg::QUEUE_NOTIFY, 1);
                self.counters.notifies += 1;
            }
        }
        self.tx.reclaim();
        if self.rx.starved && self.rx.outstanding > 0 {
            self.rx.starved = false;
            if !self.rx.queue.notify_suppressed() {
                self.mmio.write(reg::QUEUE_NOTIFY, 0);
                self.counters.notifies += 1;
            }
        }
    }
}

impl Rx {
    fn post(&mut self, i: u16) {
        self.queue.push(
            i,
            &[Buf {
                addr: buf(RX_BUFS, i),
                len: BUF_LEN as u32,
                device_writes: true,
            }],
        );
        self.outstanding += 1;
    }
}

impl Tx {
    /// Takes back every buffer the device is done with.
    fn reclaim(&mut self) -> u64 {
        let mut bad = 0;
        while let Some(u) = self.queue.pop_used() {
            match u16::try_from(u.head) {
                Ok(h) if h < self.size && self.nfree < usize::from(self.size) => {
                    self.free[self.nfree] = h;
                    self.nfree += 1;
                }
                _ => bad += 1,
            }
        }
        bad
    }
}

/// A received frame, handed to smoltcp; re-posts its buffer when consumed.
pub struct RxToken<'a> {
    rx: &'a mut Rx,
    head: u16,
    len: usize,
}

/// Room for one frame to send.
pub struct TxToken<'a> {
    tx: &'a mut Tx,
    counters: &'a mut Counters,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let addr = buf(RX_BUFS, self.head) + HDR_LEN as u64;
        // SAFETY: the buffer is this descriptor's, used by the device (it
        // wrote `len` bytes, checked against BUF_LEN) and not re-posted
        // until after `f` returns, so nothing else writes it meanwhile.
        let frame = unsafe { core::slice::from_raw_parts(addr as *const u8, self.len) };
        let r = f(frame);
        self.rx.post(self.head);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        if self.tx.nfree == 0 {
            self.tx.reclaim();
        }
        if self.tx.nfree == 0 {
            // Every buffer in flight (the device takes them at the next
            // notification): build the frame in scratch and drop it.
            self.counters.tx_full += 1;
            let mut scratch = [0u8; MTU];
            return f(&mut scratch[..len]);
        }
        self.tx.nfree -= 1;
        let i = self.tx.free[self.tx.nfree];
        let addr = buf(TX_BUFS, i);
        // SAFETY: buffer `i` is free (the device returned it or never had
        // it), BUF_LEN long, and in the reserved device memory area.
        let b = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, HDR_LEN + len) };
        b[..HDR_LEN].fill(0);
        let r = f(&mut b[HDR_LEN..]);
        self.tx.queue.push(
            i,
            &[Buf {
                addr,
                len: (HDR_LEN + len) as u32,
                device_writes: false,
            }],
        );
        self.tx.queued = true;
        self.counters.tx += 1;
        r
    }
}

impl phy::Device for Net {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        loop {
            let u = self.rx.queue.pop_used()?;
            self.rx.outstanding = self.rx.outstanding.saturating_sub(1);
            if self.rx.outstanding == 0 {
                self.rx.starved = true;
            }
            let len = u.len as usize;
            let head = match u16::try_from(u.head) {
                Ok(h) if h < self.rx.size => h,
                _ => {
                    self.counters.bad_used += 1;
                    continue;
                }
            };
            if len <= HDR_LEN || len > BUF_LEN as usize {
                self.counters.bad_used += 1;
                self.rx.post(head);
                continue;
            }
            self.counters.rx += 1;
            return Some((
                RxToken {
                    rx: &mut self.rx,
                    head,
                    len: len - HDR_LEN,
                },
                TxToken {
                    tx: &mut self.tx,
                    counters: &mut self.counters,
                },
            ));
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tx: &mut self.tx,
            counters: &mut self.counters,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = MTU;
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The device stops using the rings and buffers before they are
        // reused.
        self.mmio.write(reg::STATUS, 0);
    }
}
