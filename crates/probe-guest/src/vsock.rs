//! A polling virtio-vsock driver (virtio 1.2, §5.10) on the virtio-mmio
//! transport, with the connection table the `vsock` workload echoes on.
//!
//! It uses the device memory area the ABI reserves ([`DEVICE_MEM_BASE`]
//! ..`DATA_BASE`), which no other driver uses while a `vsock` step runs:
//! the three split queues, then [`RX_COUNT`] receive buffers (a header
//! and up to 64 KiB of payload each; descriptor `i` always points at
//! buffer `i`), [`TX_COUNT`] transmit buffers, and one receive ring of
//! [`CONN_BUF`] bytes per connection slot, which is the buffer the driver
//! advertises as `buf_alloc`.
//!
//! Credit (§5.10.6.3): a connection's received bytes stay in its ring
//! until they are sent back; only then do they count as forwarded
//! (`fwd_cnt`). So a host that does not read the echo of one connection
//! fills that connection's ring and the host's credit for it runs out,
//! and nothing else waits.
//!
//! Everything the device writes is checked: a used entry with a head the
//! driver did not post, a length beyond the buffer or shorter than a
//! header, a packet for a connection that does not exist, more data than
//! the credit given: each is counted and dropped (or answered with RST).

use crate::setup::{self, SetupError};
use crate::virtio::{reg, Buf, Mmio, QueueMem, SplitQueue};
use core::fmt;
use core::ptr;
use tern_probe_abi::{BootInfo, DEVICE_MEM_BASE, DEVICE_VIRTIO_VSOCK};

/// Virtio device id of a socket device.
const DEVICE_ID_VSOCK: u32 = 19;
/// The header in front of every packet.
pub const HDR_LEN: usize = 44;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Receive buffers posted.
const RX_COUNT: u16 = 64;
/// Bytes per receive buffer: a header and a 64 KiB packet.
const RX_BUF: u64 = 64 << 10;
/// Transmit buffers.
const TX_COUNT: u16 = 32;
/// Bytes per transmit buffer.
const TX_BUF: u64 = 32 << 10;
/// Connection slots.
pub const MAX_CONNS: usize = 72;
/// Each connection's receive ring (its `buf_alloc`).
pub const CONN_BUF: u32 = 32 << 10;

const RX_DESC: u64 = DEVICE_MEM_BASE;
const RX_AVAIL: u64 = DEVICE_MEM_BASE + 0x1000;
const RX_USED: u64 = DEVICE_MEM_BASE + 0x2000;
const TX_DESC: u64 = DEVICE_MEM_BASE + 0x3000;
const TX_AVAIL: u64 = DEVICE_MEM_BASE + 0x4000;
const TX_USED: u64 = DEVICE_MEM_BASE + 0x5000;
const EV_DESC: u64 = DEVICE_MEM_BASE + 0x6000;
const EV_AVAIL: u64 = DEVICE_MEM_BASE + 0x7000;
const EV_USED: u64 = DEVICE_MEM_BASE + 0x8000;
/// Event buffers (8 bytes each).
const EV_BUFS: u64 = DEVICE_MEM_BASE + 0x9000;
const EV_COUNT: u16 = 4;
const RX_BUFS: u64 = DEVICE_MEM_BASE + 0x1_0000;
const TX_BUFS: u64 = RX_BUFS + RX_COUNT as u64 * RX_BUF;
const CONN_RINGS: u64 = TX_BUFS + TX_COUNT as u64 * TX_BUF;
const CONN_END: u64 = CONN_RINGS + MAX_CONNS as u64 * CONN_BUF as u64;

const _: () = assert!(CONN_END <= tern_probe_abi::DATA_BASE);

/// Operations (`op`).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}
const TYPE_STREAM: u16 = 1;

/// Why the driver gave up; shown as `reason=WORD` plus details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The boot info has no vsock device.
    NoDevice,
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
            Error::NoDevice => write!(f, "reason=no-device"),
            Error::Setup(e) => e.fmt(f),
        }
    }
}

/// One packet header (`struct virtio_vsock_hdr`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// Reads a header at `addr`.
    ///
    /// # Safety
    /// `addr..addr + HDR_LEN` must be readable memory nothing writes now.
    unsafe fn read(addr: u64) -> Header {
        // SAFETY: the caller's contract; unaligned reads of plain integers.
        unsafe {
            let p = addr as *const u8;
            Header {
                src_cid: ptr::read_unaligned(p as *const u64),
                dst_cid: ptr::read_unaligned(p.add(8) as *const u64),
                src_port: ptr::read_unaligned(p.add(16) as *const u32),
                dst_port: ptr::read_unaligned(p.add(20) as *const u32),
                len: ptr::read_unaligned(p.add(24) as *const u32),
                kind: ptr::read_unaligned(p.add(28) as *const u16),
                op: ptr::read_unaligned(p.add(30) as *const u16),
                flags: ptr::read_unaligned(p.add(32) as *const u32),
                buf_alloc: ptr::read_unaligned(p.add(36) as *const u32),
                fwd_cnt: ptr::read_unaligned(p.add(40) as *const u32),
            }
        }
    }

    /// Writes the header at `addr`.
    ///
    /// # Safety
    /// `addr..addr + HDR_LEN` must be writable memory only this driver uses.
    unsafe fn write(&self, addr: u64) {
        // SAFETY: the caller's contract.
        unsafe {
            let p = addr as *mut u8;
            ptr::write_unaligned(p as *mut u64, self.src_cid);
            ptr::write_unaligned(p.add(8) as *mut u64, self.dst_cid);
            ptr::write_unaligned(p.add(16) as *mut u32, self.src_port);
            ptr::write_unaligned(p.add(20) as *mut u32, self.dst_port);
            ptr::write_unaligned(p.add(24) as *mut u32, self.len);
            ptr::write_unaligned(p.add(28) as *mut u16, self.kind);
            ptr::write_unaligned(p.add(30) as *mut u16, self.op);
            ptr::write_unaligned(p.add(32) as *mut u32, self.flags);
            ptr::write_unaligned(p.add(36) as *mut u32, self.buf_alloc);
            ptr::write_unaligned(p.add(40) as *mut u32, self.fwd_cnt);
        }
    }
}

/// Counters the workload reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Connections accepted from the host.
    pub accepted: u64,
    /// Connections this guest made (answered by the host).
    pub connected: u64,
    /// Requests refused (no slot, a port not listened on; or the host
    /// refused ours).
    pub refused: u64,
    /// Bytes echoed.
    pub echoed: u64,
    /// Transport resets seen.
    pub resets: u64,
    /// Used entries or packets that could not be used (bad head, bad
    /// length, wrong CIDs, data beyond the credit).
    pub bad: u64,
    /// Notifications written (exits).
    pub notifies: u64,
}

/// A connection slot's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Free,
    /// This guest sent a REQUEST.
    Connecting,
    /// Data flows.
    Open,
}

/// One connection: ports, credit both ways, and its receive ring.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub state: State,
    /// The guest's port.
    pub local: u32,
    /// The host's port.
    pub peer: u32,
    /// Read position in the ring.
    head: u32,
    /// Bytes in the ring.
    len: u32,
    /// Bytes taken out of the ring (wrapping).
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the host.
    fwd_sent: u32,
    /// Bytes sent to the host (wrapping).
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host will send no more.
    pub peer_done: bool,
    /// The host asked for our counters.
    credit_asked: bool,
}

impl Conn {
    const FREE: Conn = Conn {
        state: State::Free,
        local: 0,
        peer: 0,
        head: 0,
        len: 0,
        fwd_cnt: 0,
        fwd_sent: 0,
        tx_cnt: 0,
        peer_buf_alloc: 0,
        peer_fwd_cnt: 0,
        peer_done: false,
        credit_asked: false,
    };

    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }
}

/// The vsock device, brought up.
pub struct Vsock {
    mmio: Mmio,
    cid: u64,
    rx: SplitQueue,
    rx_outstanding: u16,
    rx_starved: bool,
    tx: SplitQueue,
    tx_free: [u16; TX_COUNT as usize],
    tx_nfree: usize,
    tx_queued: bool,
    ev: SplitQueue,
    conns: &'static mut [Conn; MAX_CONNS],
    next_port: u32,
    pub counters: Counters,
}

fn ring(slot: usize) -> u64 {
    CONN_RINGS + slot as u64 * CONN_BUF as u64
}

impl Vsock {
    /// Finds the vsock device in the boot info and brings it up.
    pub fn open(info: &BootInfo, ticks_per_sec: u64) -> Result<Vsock, Error> {
        let count = info.device_count.min(info.devices.len() as u32) as usize;
        let dev = info.devices[..count]
            .iter()
            .find(|d| d.kind == DEVICE_VIRTIO_VSOCK)
            .ok_or(Error::NoDevice)?;
        let mmio = Mmio::new(dev.mmio_base);
        setup::begin(mmio, DEVICE_ID_VSOCK, ticks_per_sec)?;
        let r = Self::init(mmio);
        if r.is_err() {
            setup::fail(mmio);
        }
        r
    }

    fn queue(mmio: Mmio, index: u32, mem: QueueMem, want: u16) -> Result<SplitQueue, Error> {
        // SAFETY: the areas lie in the device memory area reserved for
        // drivers (asserted above); only this driver uses it while its
        // step runs, and the device was reset.
        let (q, _) = unsafe { setup::queue(mmio, index, mem, want.into(), want.into()) }?;
        Ok(q)
    }

    fn init(mmio: Mmio) -> Result<Vsock, Error> {
        setup::negotiate(mmio, 0)?;
        let qm = |desc, avail, used| QueueMem { desc, avail, used };
        let rx = Self::queue(mmio, 0, qm(RX_DESC, RX_AVAIL, RX_USED), RX_COUNT)?;
        let tx = Self::queue(mmio, 1, qm(TX_DESC, TX_AVAIL, TX_USED), TX_COUNT)?;
        let ev = Self::queue(mmio, 2, qm(EV_DESC, EV_AVAIL, EV_USED), EV_COUNT)?;
        // SAFETY: the table lies past the rings in the reserved device
        // memory area (asserted above), nothing else refers to it while
        // the step runs, and it is written whole before use.
        let conns = unsafe {
            let p = CONN_END as *mut [Conn; MAX_CONNS];
            const _: () = assert!(
                CONN_END + core::mem::size_of::<[Conn; MAX_CONNS]>() as u64
                    <= tern_probe_abi::DATA_BASE
            );
            p.write([Conn::FREE; MAX_CONNS]);
            &mut *p
        };
        let mut v = Vsock {
            mmio,
            cid: 0,
            rx,
            rx_outstanding: 0,
            rx_starved: false,
            tx,
            tx_free: [0; TX_COUNT as usize],
            tx_nfree: TX_COUNT as usize,
            tx_queued: false,
            ev,
            conns,
            next_port: 49152,
            counters: Counters::default(),
        };
        for i in 0..TX_COUNT {
            v.tx_free[usize::from(i)] = i;
        }
        for i in 0..RX_COUNT {
            v.post_rx(i);
        }
        for i in 0..EV_COUNT {
            v.post_ev(i);
        }
        setup::driver_ok(mmio)?;
        v.cid = v.read_cid();
        Ok(v)
    }

    fn read_cid(&self) -> u64 {
        u64::from(self.mmio.config32(4)) << 32 | u64::from(self.mmio.config32(0))
    }

    /// The guest's CID (from config space).
    pub fn cid(&self) -> u64 {
        self.cid
    }

    fn post_rx(&mut self, i: u16) {
        self.rx.push(
            i,
            &[Buf {
                addr: RX_BUFS + u64::from(i) * RX_BUF,
                len: RX_BUF as u32,
                device_writes: true,
            }],
        );
        self.rx_outstanding += 1;
    }

    fn post_ev(&mut self, i: u16) {
        self.ev.push(
            i,
            &[Buf {
                addr: EV_BUFS + u64::from(i) * 8,
                len: 8,
                device_writes: true,
            }],
        );
    }

    /// Connections open now.
    pub fn open_conns(&self) -> u64 {
        self.conns.iter().filter(|c| c.state == State::Open).count() as u64
    }

    /// Sends one packet from slot `slot` (or a bare header for no slot)
    /// with `data` from the ring; false when no TX buffer is free.
    fn send(&mut self, h: &mut Header, data: Option<(usize, u32, u32)>) -> bool {
        if self.tx_nfree == 0 {
            self.reclaim_tx();
        }
        if self.tx_nfree == 0 {
            return false;
        }
        self.tx_nfree -= 1;
        let i = self.tx_free[self.tx_nfree];
        let addr = TX_BUFS + u64::from(i) * TX_BUF;
        h.src_cid = self.cid;
        h.dst_cid = HOST_CID;
        h.kind = TYPE_STREAM;
        let mut len = HDR_LEN as u32;
        if let Some((slot, from, n)) = data {
            h.len = n;
            // The ring may wrap: copy in two pieces.
            let first = n.min(CONN_BUF - from);
            // SAFETY: the TX buffer is free (not with the device), TX_BUF
            // long (n <= TX_BUF - HDR_LEN, checked by the caller); the
            // ring range is inside slot `slot`'s ring.
            unsafe {
                let dst = (addr + HDR_LEN as u64) as *mut u8;
                ptr::copy_nonoverlapping(
                    (ring(slot) + u64::from(from)) as *const u8,
                    dst,
                    first as usize,
                );
                ptr::copy_nonoverlapping(
                    ring(slot) as *const u8,
                    dst.add(first as usize),
                    (n - first) as usize,
                );
            }
            len += n;
        } else {
            h.len = 0;
        }
        // SAFETY: as above; the header fits the buffer.
        unsafe { h.write(addr) };
        self.tx.push(
            i,
            &[Buf {
                addr,
                len,
                device_writes: false,
            }],
        );
        self.tx_queued = true;
        true
    }

    fn reclaim_tx(&mut self) {
        while let Some(u) = self.tx.pop_used() {
            match u16::try_from(u.head) {
                Ok(h) if h < TX_COUNT && self.tx_nfree < TX_COUNT as usize => {
                    self.tx_free[self.tx_nfree] = h;
                    self.tx_nfree += 1;
                }
                _ => self.counters.bad += 1,
            }
        }
    }

    /// A control packet for slot `slot` with its credit.
    fn control(&mut self, slot: usize, op: u16, flags: u32) -> bool {
        let c = self.conns[slot];
        let mut h = Header {
            src_port: c.local,
            dst_port: c.peer,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: c.fwd_cnt,
            ..Header::default()
        };
        let sent = self.send(&mut h, None);
        if sent {
            self.conns[slot].fwd_sent = c.fwd_cnt;
        }
        sent
    }

    /// An RST for ports that have no slot.
    fn rst(&mut self, local: u32, peer: u32) {
        let mut h = Header {
            src_port: local,
            dst_port: peer,
            op: op::RST,
            ..Header::default()
        };
        // No buffer: the host's request times out instead.
        let _ = self.send(&mut h, None);
    }

    fn find(&self, local: u32, peer: u32) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| c.state != State::Free && c.local == local && c.peer == peer)
    }

    fn free_slot(&self) -> Option<usize> {
        self.conns.iter().position(|c| c.state == State::Free)
    }

    /// Connects to host port `port`; the answer comes in [`Vsock::poll`].
    pub fn connect(&mut self, port: u32) -> bool {
        let Some(slot) = self.free_slot() else {
            return false;
        };
        let local = self.next_port;
        self.next_port = if self.next_port >= 65000 {
            49152
        } else {
            self.next_port + 1
        };
        self.conns[slot] = Conn {
            state: State::Connecting,
            local,
            peer: port,
            ..Conn::FREE
        };
        self.control(slot, op::REQUEST, 0)
    }

    /// Whether a connection this guest made to host `port` is open.
    pub fn connected_to(&self, port: u32) -> Option<bool> {
        self.conns
            .iter()
            .find(|c| c.peer == port && c.local >= 49152 && c.state != State::Free)
            .map(|c| c.state == State::Open)
    }

    /// One pass: takes what the device delivered (accepting requests to
    /// `listen`), echoes what it can, notifies once for everything.
    /// Returns true when a transport reset came (every connection gone).
    pub fn poll(&mut self, listen: u32) -> bool {
        let reset = self.events();
        for _ in 0..RX_COUNT {
            let Some(u) = self.rx.pop_used() else { break };
            self.rx_outstanding = self.rx_outstanding.saturating_sub(1);
            if self.rx_outstanding == 0 {
                self.rx_starved = true;
            }
            let head = match u16::try_from(u.head) {
                Ok(h) if h < RX_COUNT => h,
                _ => {
                    self.counters.bad += 1;
                    continue;
                }
            };
            let addr = RX_BUFS + u64::from(head) * RX_BUF;
            if (u.len as usize) < HDR_LEN || u64::from(u.len) > RX_BUF {
                self.counters.bad += 1;
            } else {
                // SAFETY: the device used the buffer (it wrote `u.len`
                // bytes, checked); it is re-posted only below.
                let h = unsafe { Header::read(addr) };
                if h.len as usize != u.len as usize - HDR_LEN {
                    self.counters.bad += 1;
                } else {
                    self.packet(&h, addr + HDR_LEN as u64, listen);
                }
            }
            self.post_rx(head);
        }
        self.echo();
        self.flush();
        reset
    }

    fn events(&mut self) -> bool {
        let mut reset = false;
        while let Some(u) = self.ev.pop_used() {
            let Ok(head) = u16::try_from(u.head) else {
                self.counters.bad += 1;
                continue;
            };
            if head >= EV_COUNT {
                self.counters.bad += 1;
                continue;
            }
            // SAFETY: the device used this 8-byte event buffer.
            let id = unsafe { ptr::read_volatile((EV_BUFS + u64::from(head) * 8) as *const u32) };
            if u.len >= 4 && id == 0 {
                reset = true;
            } else {
                self.counters.bad += 1;
            }
            self.post_ev(head);
        }
        if reset {
            // §5.10.6.6: every connection is gone; the CID may have changed.
            self.counters.resets += 1;
            for c in self.conns.iter_mut() {
                *c = Conn::FREE;
            }
            self.cid = self.read_cid();
        }
        reset
    }

    /// Acts on one packet from the device; its payload is at `data`.
    fn packet(&mut self, h: &Header, data: u64, listen: u32) {
        if h.src_cid != HOST_CID || h.dst_cid != self.cid || h.kind != TYPE_STREAM {
            self.counters.bad += 1;
            return;
        }
        let Some(slot) = self.find(h.dst_port, h.src_port) else {
            match h.op {
                op::REQUEST if h.dst_port == listen => match self.free_slot() {
                    Some(slot) => {
                        self.conns[slot] = Conn {
                            state: State::Open,
                            local: h.dst_port,
                            peer: h.src_port,
                            peer_buf_alloc: h.buf_alloc,
                            peer_fwd_cnt: h.fwd_cnt,
                            ..Conn::FREE
                        };
                        if self.control(slot, op::RESPONSE, 0) {
                            self.counters.accepted += 1;
                        } else {
                            self.conns[slot] = Conn::FREE;
                        }
                    }
                    None => {
                        self.counters.refused += 1;
                        self.rst(h.dst_port, h.src_port);
                    }
                },
                op::REQUEST => {
                    self.counters.refused += 1;
                    self.rst(h.dst_port, h.src_port);
                }
                op::RST => {}
                _ => self.rst(h.dst_port, h.src_port),
            }
            return;
        };
        let c = &mut self.conns[slot];
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match (c.state, h.op) {
            (State::Connecting, op::RESPONSE) => {
                c.state = State::Open;
                self.counters.connected += 1;
            }
            (State::Connecting, op::RST) => {
                *c = Conn::FREE;
                self.counters.refused += 1;
            }
            (_, op::RST) => *c = Conn::FREE,
            (State::Open, op::RW) => {
                if h.len > CONN_BUF - c.len {
                    // Beyond the credit given: the host broke the rules.
                    self.counters.bad += 1;
                    *c = Conn::FREE;
                    self.rst(h.dst_port, h.src_port);
                    return;
                }
                let tail = (c.head + c.len) % CONN_BUF;
                let first = h.len.min(CONN_BUF - tail);
                // SAFETY: the payload lies in the used RX buffer (length
                // checked against the used length); the ring range is
                // inside this slot's ring and free (len + h.len <= size).
                unsafe {
                    ptr::copy_nonoverlapping(
                        data as *const u8,
                        (ring(slot) + u64::from(tail)) as *mut u8,
                        first as usize,
                    );
                    ptr::copy_nonoverlapping(
                        (data + u64::from(first)) as *const u8,
                        ring(slot) as *mut u8,
                        (h.len - first) as usize,
                    );
                }
                c.len += h.len;
            }
            (State::Open, op::CREDIT_REQUEST) => c.credit_asked = true,
            (State::Open, op::CREDIT_UPDATE) => {}
            (State::Open, op::SHUTDOWN) => c.peer_done = true,
            _ => {
                self.counters.bad += 1;
                *c = Conn::FREE;
                self.rst(h.dst_port, h.src_port);
            }
        }
    }

    /// Sends back what every connection holds, as its host credit allows;
    /// closes connections the host finished with once they are empty.
    fn echo(&mut self) {
        for slot in 0..MAX_CONNS {
            loop {
                let c = self.conns[slot];
                if c.state != State::Open {
                    break;
                }
                if c.len == 0 {
                    if c.peer_done {
                        // Everything echoed: the connection ends.
                        if self.control(slot, op::RST, 0) {
                            self.conns[slot] = Conn::FREE;
                        }
                    } else if (c.credit_asked || c.fwd_cnt.wrapping_sub(c.fwd_sent) >= CONN_BUF / 2)
                        && self.control(slot, op::CREDIT_UPDATE, 0)
                    {
                        self.conns[slot].credit_asked = false;
                    }
                    break;
                }
                let contiguous = c.len.min(CONN_BUF - c.head);
                let n = contiguous
                    .min(c.peer_credit())
                    .min(TX_BUF as u32 - HDR_LEN as u32);
                if n == 0 {
                    // The host is not reading this one: others go on.
                    break;
                }
                let mut h = Header {
                    src_port: c.local,
                    dst_port: c.peer,
                    op: op::RW,
                    buf_alloc: CONN_BUF,
                    // Counted as forwarded once it leaves the ring.
                    fwd_cnt: c.fwd_cnt.wrapping_add(n),
                    ..Header::default()
                };
                if !self.send(&mut h, Some((slot, c.head, n))) {
                    return;
                }
                let c = &mut self.conns[slot];
                c.head = (c.head + n) % CONN_BUF;
                c.len -= n;
                c.fwd_cnt = c.fwd_cnt.wrapping_add(n);
                c.fwd_sent = c.fwd_cnt;
                c.tx_cnt = c.tx_cnt.wrapping_add(n);
                c.credit_asked = false;
                self.counters.echoed += u64::from(n);
            }
        }
    }

    /// Tells the device about packets queued and buffers re-posted (one
    /// exit each, at most).
    fn flush(&mut self) {
        if self.tx_queued {
            self.tx_queued = false;
            self.mmio.write(reg::QUEUE_NOTIFY, 1);
            self.counters.notifies += 1;
        }
        self.reclaim_tx();
        if self.rx_starved && self.rx_outstanding > 0 {
            self.rx_starved = false;
            self.mmio.write(reg::QUEUE_NOTIFY, 0);
            self.counters.notifies += 1;
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // The device stops using the rings and buffers before they are
        // reused.
        self.mmio.write(reg::STATUS, 0);
    }
}
