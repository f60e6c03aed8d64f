//! The vsock device driven as a guest driver would, through the register
//! window and split queues in test guest memory, with real UNIX sockets
//! on the host side (in a temporary directory). The device's thread is
//! not started: each test serves the receive queue itself, as the thread
//! would when the host side is ready.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::conn::BUF_ALLOC;
use super::packet::{op, Header, HDR_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{Vsock, VsockConfig, VsockHandle, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::virtio::mmio::{reg, MmioTransport};
use crate::virtio::test_driver::{self as drv, DriverQueue};
use crate::virtio::{status, Mem, VIRTIO_F_VERSION_1};

const QSIZE: u16 = 64;
const CID: u64 = 3;
/// Receive buffers: QSIZE of RX_BUF bytes each.
const RX_BUFS: u64 = 0x10_0000;
const RX_BUF: u64 = 8192;
/// TX packets are built here.
const TX_AREA: u64 = 0x40_0000;
const EVENT_BUF: u64 = 0x50_0000;

struct Drv {
    mem: Mem,
    t: Arc<Mutex<MmioTransport>>,
    q: [DriverQueue; 3],
    handle: Arc<VsockHandle>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
    _irq: EventFd,
    /// Where the next TX packet goes.
    tx_at: u64,
}

/// A packet the device gave the guest.
#[derive(Debug)]
struct Pkt {
    h: Header,
    data: Vec<u8>,
}

impl Drv {
    fn new() -> Drv {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("v.sock");
        let dev = Vsock::new(
            &VsockConfig {
                cid: CID,
                socket: socket.clone(),
            },
            Box::new(|_| {}),
        )
        .unwrap();
        let handle = dev.handle();
        let mem = Mem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = Arc::new(Mutex::new(MmioTransport::new(
            Box::new(dev),
            mem.clone(),
            irq.try_clone().unwrap(),
        )));
        let q = |i: u64| {
            DriverQueue::new(
                0x1000 + i * 0x4000,
                0x2000 + i * 0x4000,
                0x3000 + i * 0x4000,
                QSIZE,
            )
        };
        let mut d = Drv {
            mem,
            t,
            q: [q(0), q(1), q(2)],
            handle,
            socket,
            _dir: dir,
            _irq: irq,
            tx_at: TX_AREA,
        };
        d.init();
        d
    }

    fn r32(&self, off: u64) -> u32 {
        drv::r32(&self.t, off)
    }

    fn w32(&self, off: u64, v: u32) {
        drv::w32(&self.t, off, v)
    }

    fn init(&mut self) {
        for q in &mut self.q {
            q.reset(&self.mem);
        }
        self.w32(reg::STATUS, 0);
        self.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w32(reg::DRIVER_FEATURES_SEL, 1);
        self.w32(reg::DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
        let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.w32(reg::STATUS, ok);
        for (i, q) in self.q.iter().enumerate() {
            drv::setup_queue(&self.t, i as u32, q);
        }
        self.w32(reg::STATUS, ok | status::DRIVER_OK);
        assert_eq!(self.r32(reg::STATUS) & status::DRIVER_OK, status::DRIVER_OK);
        for i in 0..QSIZE {
            self.post_rx(i);
        }
        self.submit(EVENT_QUEUE, 0, &[(EVENT_BUF, 8, true)]);
    }

    /// Puts a chain at descriptors `base..` on queue `qi`.
    fn submit(&mut self, qi: usize, base: u16, descs: &[(u64, u32, bool)]) {
        self.q[qi].submit_at(&self.mem, base, descs);
    }

    fn post_rx(&mut self, i: u16) {
        self.submit(
            RX_QUEUE,
            i,
            &[(RX_BUFS + i as u64 * RX_BUF, RX_BUF as u32, true)],
        );
    }

    fn used(&mut self, qi: usize) -> Vec<(u32, u32)> {
        self.q[qi].take_used(&self.mem)
    }

    /// What the device's thread does when the host side is ready.
    fn serve_rx(&self) {
        self.t.lock().unwrap().process(RX_QUEUE);
    }

    /// Every packet the device delivered so far (buffers re-posted).
    fn rx(&mut self) -> Vec<Pkt> {
        self.serve_rx();
        let mut out = vec![];
        for (head, len) in self.used(RX_QUEUE) {
            let at = RX_BUFS + head as u64 * RX_BUF;
            let mut hb = [0u8; HDR_LEN];
            self.mem.read_slice(&mut hb, GuestAddress(at)).unwrap();
            assert!(len as usize >= HDR_LEN, "used length {len}");
            let h = Header::decode(&hb);
            assert_eq!(len as usize, HDR_LEN + h.len as usize);
            let mut data = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(at + HDR_LEN as u64))
                .unwrap();
            out.push(Pkt { h, data });
            self.post_rx(head as u16);
        }
        out
    }

    /// Serves RX until `f` has seen what it wants or two seconds pass.
    fn rx_until(&mut self, mut f: impl FnMut(&[Pkt]) -> bool) -> Vec<Pkt> {
        let t0 = Instant::now();
        let mut all = vec![];
        loop {
            all.extend(self.rx());
            if f(&all) || t0.elapsed() > Duration::from_secs(2) {
                return all;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends one packet from the guest (header and payload in one
    /// descriptor, or split in two).
    fn send(&mut self, mut h: Header, data: &[u8]) {
        h.len = data.len() as u32;
        let at = self.tx_at;
        self.tx_at = if self.tx_at > TX_AREA + 0x8_0000 {
            TX_AREA
        } else {
            self.tx_at + 0x1_1000
        };
        self.mem.write_slice(&h.encode(), GuestAddress(at)).unwrap();
        self.mem
            .write_slice(data, GuestAddress(at + 0x100))
            .unwrap();
        let base = (self.q[TX_QUEUE].avail_idx % (QSIZE / 2)) * 2;
        if data.is_empty() {
            self.submit(TX_QUEUE, base, &[(at, HDR_LEN as u32, false)]);
        } else {
            self.submit(
                TX_QUEUE,
                base,
                &[
                    (at, HDR_LEN as u32, false),
                    (at + 0x100, data.len() as u32, false),
                ],
            );
        }
        self.w32(reg::QUEUE_NOTIFY, TX_QUEUE as u32);
        assert!(!self.used(TX_QUEUE).is_empty());
    }

    fn stat(&self, f: impl Fn(&super::VsockStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(self.handle.stats()).load(Ordering::Relaxed)
    }
}

/// A header from the guest's port `src` to host port `dst`.
fn guest(src: u32, dst: u32, op: u16, fwd_cnt: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        kind: TYPE_STREAM,
        op,
        buf_alloc: 64 << 10,
        fwd_cnt,
        ..Header::default()
    }
}

fn has_op(p: &[Pkt], op: u16) -> bool {
    p.iter().any(|p| p.h.op == op)
}

/// A host program connecting to guest port `port`: the device asks the
/// guest; returns the stream and the REQUEST.
fn host_connect(d: &mut Drv, port: u32) -> (UnixStream, Header) {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let p = d.rx_until(|p| has_op(p, op::REQUEST));
    let req = p
        .iter()
        .find(|p| p.h.op == op::REQUEST)
        .expect("a REQUEST")
        .h;
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (HOST_CID, CID, port)
    );
    assert_eq!(req.buf_alloc, BUF_ALLOC);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    (s, req)
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = vec![];
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// A host connection the guest accepted: (stream, host port).
fn established(d: &mut Drv, port: u32) -> (UnixStream, u32) {
    let (mut s, req) = host_connect(d, port);
    d.send(guest(port, req.src_port, op::RESPONSE, 0), &[]);
    assert_eq!(read_line(&mut s), format!("OK {}", req.src_port));
    (s, req.src_port)
}

#[test]
fn identifies_and_shows_the_guest_cid() {
    let d = Drv::new();
    assert_eq!(d.r32(reg::DEVICE_ID), 19);
    assert_eq!(d.r32(reg::CONFIG), CID as u32);
    assert_eq!(d.r32(reg::CONFIG + 4), 0);
    for bad in [0, 1, 2, u32::MAX as u64] {
        let dir = tempfile::tempdir().unwrap();
        let r = Vsock::new(
            &VsockConfig {
                cid: bad,
                socket: dir.path().join("s"),
            },
            Box::new(|_| {}),
        );
        assert!(r.is_err(), "CID {bad}");
    }
    // Not a socket in the way: refused, and left alone.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"keep").unwrap();
    let r = Vsock::new(
        &VsockConfig {
            cid: 3,
            socket: file.clone(),
        },
        Box::new(|_| {}),
    );
    let Err(e) = r else {
        panic!("a file was taken for a socket")
    };
    assert!(e.to_string().contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
}

#[test]
fn host_connects_and_data_flows_both_ways() {
    let mut d = Drv::new();
    let (mut s, hp) = established(&mut d, 1234);
    assert!(hp >= super::FIRST_LOCAL_PORT);
    // Host to guest.
    s.write_all(b"hello guest").unwrap();
    let p = d.rx_until(|p| has_op(p, op::RW));
    let rw = p.iter().find(|p| p.h.op == op::RW).unwrap();
    assert_eq!(rw.data, b"hello guest");
    assert_eq!((rw.h.src_port, rw.h.dst_port), (hp, 1234));
    // Guest to host.
    d.send(guest(1234, hp, op::RW, 11), b"hello host");
    let mut b = [0u8; 10];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello host");
    assert_eq!(d.stat(|s| &s.host_connections), 1);
    assert_eq!(d.stat(|s| &s.connections), 1);
    // A credit request is answered with the device's counters.
    d.send(guest(1234, hp, op::CREDIT_REQUEST, 11), &[]);
    let p = d.rx_until(|p| has_op(p, op::CREDIT_UPDATE));
    let cu = p.iter().find(|p| p.h.op == op::CREDIT_UPDATE).unwrap();
    assert_eq!((cu.h.buf_alloc, cu.h.fwd_cnt), (BUF_ALLOC, 10));
    // The guest closes: RST to it, EOF to the host.
    d.send(
        guest(1234, hp, op::SHUTDOWN, 11).with_flags(SHUTDOWN_RCV | SHUTDOWN_SEND),
        &[],
    );
    let p = d.rx_until(|p| has_op(p, op::RST));
    assert!(has_op(&p, op::RST));
    assert_eq!(s.read(&mut b).unwrap(), 0);
    assert_eq!(d.stat(|s| &s.connections), 0);
}

impl Header {
    fn with_flags(mut self, f: u32) -> Header {
        self.flags = f;
        self
    }
}

#[test]
fn a_port_nobody_listens_on_is_refused_both_ways() {
    let mut d = Drv::new();
    // Host to a guest port with no listener: the guest answers RST, the
    // host's stream closes with no OK.
    let (mut s, req) = host_connect(&mut d, 99);
    d.send(guest(99, req.src_port, op::RST, 0), &[]);
    let mut b = [0u8; 8];
    assert_eq!(s.read(&mut b).unwrap(), 0, "closed without an answer");
    assert_eq!(d.stat(|s| &s.refused), 1);
    // A bad CONNECT line: closed too.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"HELLO\n").unwrap();
    d.serve_rx();
    assert_eq!(s.read(&mut b).unwrap(), 0);
    // Guest to a host port with no socket: RST.
    d.send(guest(5000, 7000, op::REQUEST, 0), &[]);
    let p = d.rx_until(|p| has_op(p, op::RST));
    let rst = p.iter().find(|p| p.h.op == op::RST).unwrap();
    assert_eq!((rst.h.src_port, rst.h.dst_port), (7000, 5000));
    // Data on a connection that does not exist: RST too.
    d.send(guest(5001, 7001, op::RW, 0), b"x");
    let p = d.rx_until(|p| has_op(p, op::RST));
    assert!(has_op(&p, op::RST));
}

#[test]
fn guest_connects_to_the_hosts_port_socket() {
    let mut d = Drv::new();
    let mut path = d.socket.clone().into_os_string();
    path.push("_5000");
    let l = UnixListener::bind(&path).unwrap();
    d.send(guest(40000, 5000, op::REQUEST, 0), &[]);
    let p = d.rx_until(|p| has_op(p, op::RESPONSE));
    let resp = p.iter().find(|p| p.h.op == op::RESPONSE).unwrap();
    assert_eq!((resp.h.src_port, resp.h.dst_port), (5000, 40000));
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    d.send(guest(40000, 5000, op::RW, 0), b"from the guest");
    let mut b = [0u8; 14];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"from the guest");
    s.write_all(b"back").unwrap();
    let p = d.rx_until(|p| has_op(p, op::RW));
    assert_eq!(p.iter().find(|p| p.h.op == op::RW).unwrap().data, b"back");
    // The host closes: the rest is read, then the guest gets RST.
    s.write_all(b"last").unwrap();
    drop(s);
    let p = d.rx_until(|p| has_op(p, op::RST));
    let data: Vec<u8> = p
        .iter()
        .filter(|p| p.h.op == op::RW)
        .flat_map(|p| p.data.clone())
        .collect();
    assert_eq!(data, b"last");
    assert!(has_op(&p, op::RST));
    assert_eq!(d.stat(|s| &s.guest_connections), 1);
}

#[test]
fn a_slow_reader_stalls_only_its_own_connection() {
    let mut d = Drv::new();
    let (mut slow, slow_hp) = established(&mut d, 1);
    let (mut fast, fast_hp) = established(&mut d, 2);
    slow.set_nonblocking(true).unwrap();
    // Host to guest: the guest never consumes on `slow` (fwd_cnt stays
    // 0, buffer 64 KiB), and keeps up on `fast`.
    let chunk = vec![0x5au8; 32 << 10];
    let mut slow_sent = 0usize;
    for _ in 0..16 {
        match slow.write(&chunk) {
            Ok(n) => slow_sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    let (mut slow_got, mut fast_got) = (0usize, 0usize);
    let total_fast = 1 << 20;
    let writer = {
        let mut f = fast.try_clone().unwrap();
        std::thread::spawn(move || {
            let data = vec![0xa5u8; total_fast];
            f.write_all(&data).unwrap();
        })
    };
    let t0 = Instant::now();
    while fast_got < total_fast && t0.elapsed() < Duration::from_secs(10) {
        for p in d.rx() {
            if p.h.op != op::RW {
                continue;
            }
            if p.h.src_port == slow_hp {
                slow_got += p.data.len();
            } else if p.h.src_port == fast_hp {
                fast_got += p.data.len();
                d.send(guest(2, fast_hp, op::CREDIT_UPDATE, fast_got as u32), &[]);
            }
        }
    }
    writer.join().unwrap();
    assert_eq!(fast_got, total_fast, "the fast connection went on");
    assert_eq!(slow_got, 64 << 10, "the slow one got its credit, no more");
    assert!(slow_sent > slow_got);

    // Guest to host: the host does not read `slow`; the guest may fill
    // the device's buffer for it and no more, and `fast` still flows.
    let piece = vec![1u8; 60 << 10];
    let mut sent = 0usize;
    while sent < 64 << 20 && d.stat(|s| &s.credit_violations) == 0 {
        d.send(guest(1, slow_hp, op::RW, 64 << 10), &piece);
        sent += piece.len();
    }
    // Taken until the host socket's buffer and the device's were full;
    // the packet that overran the credit reset only `slow`.
    assert_eq!(d.stat(|s| &s.credit_violations), 1);
    assert!(sent > BUF_ALLOC as usize, "{sent}");
    d.send(guest(2, fast_hp, op::RW, fast_got as u32), b"still here");
    let mut b = [0u8; 10];
    fast.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still here");
}

#[test]
fn transport_reset_drops_connections_and_tells_the_guest() {
    let mut d = Drv::new();
    let (mut s, _) = established(&mut d, 7);
    d.handle.request_transport_reset();
    // The VMM kicks the transport after a restore: every queue is served.
    d.t.lock().unwrap().process(EVENT_QUEUE);
    let used = d.used(EVENT_QUEUE);
    assert_eq!(used, vec![(0, 4)]);
    let mut id = [0xffu8; 4];
    d.mem.read_slice(&mut id, GuestAddress(EVENT_BUF)).unwrap();
    assert_eq!(
        u32::from_le_bytes(id),
        0,
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"
    );
    assert_eq!(d.stat(|s| &s.transport_resets), 1);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0, "the host stream closed");
    // New connections work.
    let (mut s, hp) = established(&mut d, 7);
    d.send(guest(7, hp, op::RW, 0), b"again");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"again");
}

#[test]
fn bad_packets_are_dropped_and_counted() {
    let mut d = Drv::new();
    let (mut s, hp) = established(&mut d, 7);
    let before = d.stat(|s| &s.bad_packets);
    // Wrong source CID, wrong destination, wrong type, unknown op, a
    // length beyond the chain, a payload on a control packet.
    let mut h = guest(7, hp, op::RW, 0);
    h.src_cid = 9;
    d.send(h, b"x");
    h = guest(7, hp, op::RW, 0);
    h.dst_cid = 5;
    d.send(h, b"x");
    h = guest(7, hp, op::RW, 0);
    h.kind = 2;
    d.send(h, b"x");
    h = guest(7, hp, 42, 0);
    d.send(h, &[]);
    // Header says 100 bytes, the chain has 1.
    let at = TX_AREA + 0x9_0000;
    let mut long = guest(7, hp, op::RW, 0);
    long.len = 100;
    d.mem.write_slice(&long.encode(), GuestAddress(at)).unwrap();
    d.mem.write_slice(b"y", GuestAddress(at + 44)).unwrap();
    let base = (d.q[TX_QUEUE].avail_idx % (QSIZE / 2)) * 2;
    d.submit(TX_QUEUE, base, &[(at, 45, false)]);
    // Shorter than a header.
    let base = (d.q[TX_QUEUE].avail_idx % (QSIZE / 2)) * 2;
    d.submit(TX_QUEUE, base, &[(at, 10, false)]);
    d.w32(reg::QUEUE_NOTIFY, TX_QUEUE as u32);
    assert_eq!(d.stat(|s| &s.bad_packets) - before, 6);
    // The connection is untouched.
    d.send(guest(7, hp, op::RW, 0), b"ok");
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
    // The guest's half-close: the host sees EOF, and can still send.
    d.send(guest(7, hp, op::SHUTDOWN, 0).with_flags(SHUTDOWN_SEND), &[]);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);
    s.write_all(b"z").unwrap();
    let p = d.rx_until(|p| has_op(p, op::RW));
    assert!(p.iter().any(|p| p.data == b"z"));
}

#[test]
fn random_rings_never_panic() {
    // Garbage descriptors, chains, headers and register writes on all
    // three queues while host programs connect: the device may drop
    // packets or ask for a reset, never panic or stall.
    let mut d = Drv::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut hosts = vec![];
    for round in 0..2000 {
        let st = d.r32(reg::STATUS);
        if st & status::DRIVER_OK == 0 || st & status::DEVICE_NEEDS_RESET != 0 {
            d.init();
        }
        if round % 100 == 0 {
            if let Ok(mut s) = UnixStream::connect(&d.socket) {
                let _ = s.write_all(format!("CONNECT {}\n", rnd() % 4).as_bytes());
                hosts.push(s);
            }
        }
        let qi = (rnd() % 3) as usize;
        for i in 0..QSIZE as u64 {
            let r = rnd();
            let addr = match r % 4 {
                0 => rnd(),
                1 => rnd() % (16 << 20),
                _ => TX_AREA + (rnd() % 0x10000),
            };
            let len = match (r >> 8) % 3 {
                0 => rnd() as u32,
                1 => (rnd() % 70000) as u32,
                _ => (rnd() % 200) as u32,
            };
            let flags = (rnd() % 8) as u16;
            let next = (rnd() % (QSIZE as u64 + 2)) as u16;
            let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            d.mem
                .write_obj(desc, GuestAddress(d.q[qi].desc + i * 16))
                .unwrap();
        }
        // Headers that are mostly plausible, so the checks past the
        // first are reached too.
        let mut h = guest(
            (rnd() % 4) as u32,
            (rnd() % 4) as u32
                + if rnd() % 2 == 0 {
                    super::FIRST_LOCAL_PORT
                } else {
                    0
                },
            (rnd() % 9) as u16,
            rnd() as u32,
        );
        h.len = (rnd() % 300) as u32;
        if rnd() % 5 == 0 {
            h.src_cid = rnd();
        }
        if rnd() % 5 == 0 {
            h.flags = rnd() as u32;
        }
        let mut b = h.encode().to_vec();
        b.extend((0..300).map(|_| rnd() as u8));
        d.mem
            .write_slice(&b, GuestAddress(TX_AREA + (rnd() % 0x10000)))
            .unwrap();
        let q = &mut d.q[qi];
        for _ in 0..rnd() % 5 {
            let slot = q.avail + 4 + 2 * (q.avail_idx % QSIZE) as u64;
            d.mem
                .write_obj((rnd() % (QSIZE as u64 + 1)) as u16, GuestAddress(slot))
                .unwrap();
            q.avail_idx = q.avail_idx.wrapping_add(1);
        }
        if round % 50 == 49 {
            q.avail_idx = q.avail_idx.wrapping_add(rnd() as u16);
        }
        let idx = q.avail_idx;
        d.mem.write_obj(idx, GuestAddress(q.avail + 2)).unwrap();
        d.w32(reg::QUEUE_NOTIFY, qi as u32);
        d.serve_rx();
        let _ = d.used(qi);
        if round % 37 == 0 {
            d.w32((rnd() % 0x200) & !3, rnd() as u32);
        }
        if round % 300 == 0 {
            d.handle.request_transport_reset();
        }
    }
    let bad = d.stat(|s| &s.bad_packets);
    eprintln!("random rings: {bad} bad packets dropped");
    assert!(bad > 100, "the garbage reached the device");
    // Still a working device after a reset.
    d.init();
    let (mut s, hp) = established(&mut d, 5);
    d.send(guest(5, hp, op::RW, 0), b"alive");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"alive");
}
