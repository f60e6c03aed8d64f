//! The virtio-vsock device (virtio 1.2, §5.10) with its host side on UNIX
//! sockets, in the protocol Firecracker and Cloud Hypervisor use:
//!
//! - a host program connects to the VM's socket (`--vsock socket=PATH`)
//!   and writes `CONNECT <port>\n`; the device asks the guest for that
//!   port and, once the guest accepts, answers `OK <hostport>\n` (the
//!   host-side port the guest sees) and the stream carries the data. A
//!   guest that refuses (RST: nobody listens) makes the device close the
//!   stream without an answer;
//! - a guest connection to the host's CID 2, port P, is connected to the
//!   UNIX socket `PATH_P`; if nobody listens there the guest gets RST.
//!
//! Queue 0 receives (device to guest), queue 1 transmits, queue 2 carries
//! events. TX runs on the vCPU thread that notified; RX is driven by the
//! device's thread ([`thread::VsockThread`]) waiting on one epoll set that
//! holds the listener and every host stream. Flow control is the
//! protocol's credit ([`conn`]): each connection stops on its own when its
//! reader (guest or host) is slow, and the others go on.
//!
//! Everything the guest writes is untrusted: a chain too short for a
//! header, a header that fails [`packet::Header::check_from_guest`] or a
//! connection that overruns its credit is dropped (or reset) and counted,
//! never a panic and never a stall of other connections.
//!
//! Connections are not saved: after a restore (or a migration, which
//! restores) the device tells the guest with a
//! `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` event
//! ([`VsockHandle::request_transport_reset`]), and the guest drops its
//! connections and makes new ones.

pub mod conn;
mod guest;
mod host;
pub mod packet;
#[cfg(test)]
mod tests;
pub mod thread;

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};

use self::conn::{Conn, GuestWrite, Handshake, HostHandshake, HostRead, State};
use self::packet::{op, Header, HDR_LEN, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND};
use self::thread::Signal;
use super::{Mem, QueueOutcome, VirtioDevice, VIRTIO_F_VERSION_1};

/// Virtio device id of a socket device.
pub const DEVICE_ID: u32 = 19;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue.
pub const RX_QUEUE: usize = 0;
/// The transmit queue.
pub const TX_QUEUE: usize = 1;
/// The event queue.
pub const EVENT_QUEUE: usize = 2;
/// Most connections at once (host and guest initiated together); beyond
/// it a request is refused with RST.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host streams still sending their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 64;
/// How long a host stream may take to send `CONNECT`, and the guest to
/// answer the request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Control packets (RST, RESPONSE, credit updates) waiting for receive
/// buffers beyond which TX waits: a guest that floods requests while
/// giving no receive buffers cannot make the device's queue grow.
pub const MAX_CONTROL: usize = 1024;
/// How long TX waits before retrying when [`MAX_CONTROL`] is reached.
pub const TX_RETRY: Duration = Duration::from_millis(1);
/// Host-side ports given to host-initiated connections start here (as
/// Firecracker's do), apart from any port a host program listens on.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// The epoll token of the listener; connections and handshakes get their
/// own from 1 up.
const LISTENER: u64 = 0;

/// Configuration of the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// The host-side socket: host programs connect here, guest
    /// connections to port P go to `<socket>_P`.
    pub socket: PathBuf,
}

/// Errors setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0, 1 and 2 are reserved, and `u32::MAX` means any.
    #[error("vsock CID {0} is reserved (a guest's CID is 3 or more, below 2^32 - 1)")]
    ReservedCid(u64),
    /// Something other than a socket is in the way.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The socket cannot be made.
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// epoll or eventfd setup.
    #[error("cannot set up the vsock device's event sources")]
    Setup(#[source] std::io::Error),
}

/// Counters a VMM can show.
#[derive(Debug, Default)]
pub struct VsockStats {
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections the host opened (CONNECT accepted by the guest).
    pub host_connections: AtomicU64,
    /// Connections the guest opened to `<socket>_<port>`.
    pub guest_connections: AtomicU64,
    /// Requests refused: by the guest (nobody listens) or by the host
    /// (no socket, too many connections, a bad CONNECT line).
    pub refused: AtomicU64,
    /// Payload bytes delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// Payload bytes the guest sent.
    pub tx_bytes: AtomicU64,
    /// Packets from the guest dropped as malformed (short chain, bad
    /// header, unknown operation, CIDs that are not its own).
    pub bad_packets: AtomicU64,
    /// Connections reset because the guest overran its credit.
    pub credit_violations: AtomicU64,
    /// Transport-reset events delivered to the guest.
    pub transport_resets: AtomicU64,
    /// Events handled on the host side (accepts, reads, writes): the
    /// device's thread sees it move when a pass did something.
    pub progress: AtomicU64,
}

/// What the VMM keeps of a device: its counters and the transport reset.
#[derive(Debug, Default)]
pub struct VsockHandle {
    stats: VsockStats,
    reset: AtomicBool,
}

impl VsockHandle {
    /// The counters.
    pub fn stats(&self) -> &VsockStats {
        &self.stats
    }

    /// Drops every connection and tells the guest with a transport-reset
    /// event (at its next event buffer); for a restored or migrated VM,
    /// whose host streams did not come along. Kick the transport after.
    pub fn request_transport_reset(&self) {
        self.reset.store(true, Ordering::Release);
    }
}

/// Most guest mistakes logged per device (they are all counted).
const MAX_LOGGED: u64 = 16;

type W<'a> =
    Writer<'a, <vm_memory::bitmap::AtomicBitmap as vm_memory::bitmap::WithBitmapSlice<'a>>::S>;

/// The virtio-vsock device.
pub struct Vsock {
    cid: u64,
    socket: PathBuf,
    listener: UnixListener,
    /// (device, inode) of the socket file this device made.
    socket_id: (u64, u64),
    epoll: Arc<OwnedFd>,
    signal: Arc<Signal>,
    handle: Arc<VsockHandle>,
    conns: HashMap<u64, Conn>,
    /// (host port, guest port) to token.
    by_ports: HashMap<(u32, u32), u64>,
    handshakes: HashMap<u64, HostHandshake>,
    next_token: u64,
    next_local_port: u32,
    /// Control packets for the guest, in order.
    control: VecDeque<Header>,
    /// Connections that may have data for the guest, round robin.
    ready: VecDeque<u64>,
    /// A transport-reset event waits for an event buffer.
    reset_event: bool,
    scratch: Vec<u8>,
    on_error: Box<dyn Fn(&str) + Send>,
    errors_logged: u64,
}

/// Removes a stale socket left at `path` by an earlier run (a restored VM
/// listens where the saved one did); refuses anything but a socket.
fn clear_stale_socket(path: &Path) -> Result<(), VsockError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| VsockError::Listen {
                path: path.into(),
                source,
            })
        }
        Ok(_) => Err(VsockError::NotASocket(path.into())),
        Err(_) => Ok(()),
    }
}

impl Vsock {
    /// A device for `config`, listening on its socket; `on_error` gets a
    /// line for the first guest mistakes and host failures (all counted).
    pub fn new(
        config: &VsockConfig,
        on_error: Box<dyn Fn(&str) + Send>,
    ) -> Result<Vsock, VsockError> {
        if config.cid <= packet::HOST_CID || config.cid >= u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid(config.cid));
        }
        clear_stale_socket(&config.socket)?;
        let listener = UnixListener::bind(&config.socket).map_err(|source| VsockError::Listen {
            path: config.socket.clone(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(VsockError::Setup)?;
        let socket_id = {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(&config.socket).map_err(VsockError::Setup)?;
            (m.dev(), m.ino())
        };
        let ep =
            epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| VsockError::Setup(e.into()))?;
        epoll::add(
            &ep,
            &listener,
            epoll::EventData::new_u64(LISTENER),
            epoll::EventFlags::IN,
        )
        .map_err(|e| VsockError::Setup(e.into()))?;
        Ok(Vsock {
            cid: config.cid,
            socket: config.socket.clone(),
            listener,
            socket_id,
            epoll: Arc::new(ep),
            signal: Arc::new(Signal::new().map_err(VsockError::Setup)?),
            handle: Arc::default(),
            conns: HashMap::new(),
            by_ports: HashMap::new(),
            handshakes: HashMap::new(),
            next_token: 1,
            next_local_port: FIRST_LOCAL_PORT,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            reset_event: false,
            scratch: vec![0; MAX_PAYLOAD as usize],
            on_error,
            errors_logged: 0,
        })
    }

    /// The counters and the transport-reset switch.
    pub fn handle(&self) -> Arc<VsockHandle> {
        self.handle.clone()
    }

    /// The epoll set the device's thread waits on.
    pub fn epoll(&self) -> Arc<OwnedFd> {
        self.epoll.clone()
    }

    /// What the device's thread and the device share (starved flag, wake).
    pub fn signal(&self) -> Arc<Signal> {
        self.signal.clone()
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    fn log(&mut self, e: &str) {
        if self.errors_logged < MAX_LOGGED {
            self.errors_logged += 1;
            (self.on_error)(e);
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// A host-side port no connection to guest port `peer` uses.
    fn local_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.by_ports.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    /// Puts connection `token` on the ready list (once) if it can send
    /// to the guest.
    fn mark_ready(&mut self, token: u64) {
        if let Some(c) = self.conns.get_mut(&token) {
            if c.wants_read() && !c.queued {
                c.queued = true;
                self.ready.push_back(token);
            }
        }
    }

    /// Sets connection `token`'s epoll interest from what it wants now.
    fn sync_interest(&mut self, token: u64) {
        let Some(c) = self.conns.get(&token) else {
            return;
        };
        if c.host_gone {
            // Out of the set already; read until EOF without epoll.
            self.mark_ready(token);
            return;
        }
        let mut f = epoll::EventFlags::empty();
        if c.wants_read() {
            f |= epoll::EventFlags::IN;
        }
        if c.wants_write() {
            f |= epoll::EventFlags::OUT;
        }
        // Only fails for a stream that is not in the set (never here).
        let _ = epoll::modify(&*self.epoll, &c.stream, epoll::EventData::new_u64(token), f);
    }

    fn add_conn(&mut self, c: Conn) -> Option<u64> {
        let token = self.token();
        let flags = epoll::EventFlags::empty();
        if let Err(e) = epoll::add(
            &*self.epoll,
            &c.stream,
            epoll::EventData::new_u64(token),
            flags,
        ) {
            self.log(&format!("cannot watch a host stream: {e}"));
            return None;
        }
        self.by_ports.insert((c.local_port, c.peer_port), token);
        self.conns.insert(token, c);
        self.handle
            .stats
            .connections
            .fetch_add(1, Ordering::Relaxed);
        self.sync_interest(token);
        Some(token)
    }

    /// Forgets connection `token` (its host stream is closed).
    fn remove(&mut self, token: u64) -> Option<Conn> {
        let c = self.conns.remove(&token)?;
        self.by_ports.remove(&(c.local_port, c.peer_port));
        if !c.host_gone {
            let _ = epoll::delete(&*self.epoll, &c.stream);
        }
        self.handle
            .stats
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        Some(c)
    }

    /// Resets connection `token`: RST to the guest, the host stream closed.
    fn reset_conn(&mut self, token: u64) {
        if let Some(c) = self.remove(token) {
            self.control.push_back(Header::to_guest(
                self.cid,
                c.local_port,
                c.peer_port,
                op::RST,
            ));
        }
    }

    /// A control packet for an established connection, with its credit.
    fn queue_control(&mut self, token: u64, op: u16, flags: u32) {
        let cid = self.cid;
        if let Some(c) = self.conns.get_mut(&token) {
            let mut h = Header::to_guest(cid, c.local_port, c.peer_port, op);
            h.flags = flags;
            c.stamp(&mut h);
            self.control.push_back(h);
        }
    }

    /// Drops every connection and handshake (the guest is told by the
    /// transport-reset event, or has reset the device itself).
    fn drop_all(&mut self) {
        let tokens: Vec<u64> = self.conns.keys().copied().collect();
        for t in tokens {
            self.remove(t);
        }
        for (_, h) in self.handshakes.drain() {
            let _ = epoll::delete(&*self.epoll, &h.stream);
        }
        self.control.clear();
        self.ready.clear();
    }

    /// Takes a transport reset the VMM asked for.
    fn take_reset(&mut self) {
        if self.handle.reset.swap(false, Ordering::AcqRel) {
            self.drop_all();
            self.reset_event = true;
        }
    }

    /// The next packet for the guest with at most `room` payload bytes:
    /// control first, then data round robin. The payload is in
    /// `self.scratch[..len]`.
    fn next_packet(&mut self, room: usize) -> Option<Header> {
        if let Some(h) = self.control.pop_front() {
            return Some(h);
        }
        while let Some(token) = self.ready.pop_front() {
            let cid = self.cid;
            let Some(c) = self.conns.get_mut(&token) else {
                continue;
            };
            c.queued = false;
            if !c.wants_read() {
                continue;
            }
            let max = room.min(c.peer_credit() as usize).min(MAX_PAYLOAD as usize);
            if max == 0 {
                // Room for a header only: nothing this time.
                c.queued = true;
                self.ready.push_front(token);
                return None;
            }
            match c.read_for_guest(&mut self.scratch[..max]) {
                HostRead::Data(n) => {
                    let mut h = Header::to_guest(cid, c.local_port, c.peer_port, op::RW);
                    h.len = n as u32;
                    c.stamp(&mut h);
                    self.handle
                        .stats
                        .rx_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                    self.handle.stats.progress.fetch_add(1, Ordering::Relaxed);
                    let more = n == max || c.host_gone;
                    let stalled = !c.wants_read();
                    if more {
                        // Maybe more: after the others.
                        self.mark_ready(token);
                    }
                    if stalled {
                        self.sync_interest(token);
                    }
                    return Some(h);
                }
                HostRead::WouldBlock => {}
                HostRead::Eof if c.host_gone => self.reset_conn(token),
                HostRead::Eof => {
                    // The host sends no more; the guest may still.
                    self.queue_control(token, op::SHUTDOWN, SHUTDOWN_SEND);
                    self.sync_interest(token);
                }
                HostRead::Failed(e) => {
                    self.log(&format!("reading a host stream failed: {e}"));
                    self.reset_conn(token);
                }
            }
            if let Some(h) = self.control.pop_front() {
                return Some(h);
            }
        }
        None
    }

    /// Fills the guest's receive buffers while there is something to send.
    fn receive(&mut self, queue: &mut Queue, mem: &Mem) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        self.take_reset();
        self.poll_host();
        loop {
            if self.control.is_empty() && self.ready.is_empty() {
                break;
            }
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    out.broken = true;
                    return out;
                }
            };
            let Some(chain) = chain else {
                self.signal_starved(true);
                out.backend_wait = true;
                return out;
            };
            let head = chain.head_index();
            let w: Option<W<'_>> = Writer::new(mem, chain)
                .ok()
                .filter(|w| w.available_bytes() >= HDR_LEN);
            let Some(mut w) = w else {
                self.handle
                    .stats
                    .bad_packets
                    .fetch_add(1, Ordering::Relaxed);
                self.log("RX chain unusable (unmapped, read-only or shorter than a header)");
                if queue.add_used(mem, head, 0).is_err() {
                    out.broken = true;
                    return out;
                }
                out.used = true;
                continue;
            };
            let Some(h) = self.next_packet(w.available_bytes() - HDR_LEN) else {
                // Nothing after all: the chain goes back for later.
                queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                break;
            };
            let len = h.len as usize;
            let ok = w.write_all(&h.encode()).is_ok() && w.write_all(&self.scratch[..len]).is_ok();
            let used = if ok { (HDR_LEN + len) as u32 } else { 0 };
            if queue.add_used(mem, head, used).is_err() {
                out.broken = true;
                return out;
            }
            out.used = true;
        }
        self.signal_starved(false);
        out.backend_wait = true;
        out
    }

    fn signal_starved(&self, on: bool) {
        self.signal.set_starved(on);
    }

    /// Takes every packet the guest queued on TX.
    fn transmit(&mut self, queue: &mut Queue, mem: &Mem) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        self.take_reset();
        loop {
            if self.control.len() >= MAX_CONTROL {
                out.retry_after = Some(TX_RETRY);
                break;
            }
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    out.broken = true;
                    return out;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            match Reader::new(mem, chain) {
                Ok(mut r) => self.packet_from_guest(&mut r),
                Err(e) => self.bad(&format!("TX chain unusable: {e}")),
            }
            if queue.add_used(mem, head, 0).is_err() {
                out.broken = true;
                return out;
            }
            out.used = true;
        }
        if !self.control.is_empty() || !self.ready.is_empty() {
            // Answers wait for the receive queue, which the thread serves.
            self.signal.wake();
        }
        out
    }

    /// Delivers a waiting transport-reset event.
    fn events(&mut self, queue: &mut Queue, mem: &Mem) -> QueueOutcome {
        // Event buffers wait on the ring for events: their presence is no
        // reason to process again.
        let mut out = QueueOutcome {
            backend_wait: true,
            ..QueueOutcome::default()
        };
        self.take_reset();
        if !self.reset_event {
            return out;
        }
        let chain = match queue.iter(mem) {
            Ok(mut it) => it.next(),
            Err(_) => {
                out.broken = true;
                return out;
            }
        };
        let Some(chain) = chain else {
            return out;
        };
        let head = chain.head_index();
        let id = packet::EVENT_TRANSPORT_RESET.to_le_bytes();
        let written = Writer::new(mem, chain)
            .ok()
            .filter(|w: &W<'_>| w.available_bytes() >= id.len())
            .is_some_and(|mut w| w.write_all(&id).is_ok());
        let used = match written {
            true => {
                self.reset_event = false;
                self.handle
                    .stats
                    .transport_resets
                    .fetch_add(1, Ordering::Relaxed);
                id.len() as u32
            }
            _ => {
                self.bad("event buffer unusable");
                0
            }
        };
        if queue.add_used(mem, head, used).is_err() {
            out.broken = true;
            return out;
        }
        out.used = true;
        out
    }
}

/// Connects to the UNIX socket at `path` without blocking (a listener
/// with a full backlog refuses instead of holding the vCPU).
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use rustix::net::{socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd: OwnedFd = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&fd, &SocketAddrUnix::new(path)?)?;
    Ok(UnixStream::from(fd))
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        // VIRTIO_VSOCK_F_STREAM (bit 0) is implied without SEQPACKET; no
        // event indexes, as for the NIC (RX may leave chains on the ring).
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.cid.to_le_bytes();
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
            EVENT_QUEUE => self.events(queue, mem),
            _ => QueueOutcome::default(),
        }
    }

    fn tick(&mut self) {
        // Host streams that never finished CONNECT, and requests the guest
        // never answered, are given up on.
        let now = Instant::now();
        let stale: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) > CONNECT_TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for t in stale {
            if let Some(h) = self.handshakes.remove(&t) {
                let _ = epoll::delete(&*self.epoll, &h.stream);
                self.handle.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        let unanswered: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.state, State::HostConnecting { since } if now.duration_since(since) > CONNECT_TIMEOUT)
            })
            .map(|(t, _)| *t)
            .collect();
        for t in unanswered {
            self.handle.stats.refused.fetch_add(1, Ordering::Relaxed);
            self.reset_conn(t);
        }
        if !self.control.is_empty() {
            self.signal.wake();
        }
    }

    fn reset(&mut self) {
        // The driver is gone: so are its connections.
        self.drop_all();
        self.reset_event = false;
        self.signal_starved(false);
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // The socket file would only be in the way of the next run; one
        // another device bound there since (a migration's destination on
        // this host) is left alone.
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::symlink_metadata(&self.socket)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.socket_id);
        if ours {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}
