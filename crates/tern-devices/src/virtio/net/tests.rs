//! The virtio-net device driven as a guest driver would, through the
//! register window and split queues in test guest memory, over a fake
//! backend.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tern_net::{Mac, Offloads, VNET_HDR_LEN};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{
    feature, Net, NetBackend, NetConfig, NetStats, RxSignal, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::bus::BusDevice;
use crate::virtio::mmio::{reg, MmioTransport};
use crate::virtio::{status, Mem, VIRTIO_F_VERSION_1};

const QSIZE: u16 = 16;
use crate::virtio::test_driver::{self as drv, DriverQueue, F_WRITE};
const BUF: u64 = 0x10_0000;

#[derive(Default)]
struct Fake {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    full: bool,
    offloads: Option<Offloads>,
}

struct FakeBackend(Arc<Mutex<Fake>>);

impl NetBackend for FakeBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let Some(f) = self.0.lock().unwrap().rx.pop_front() else {
            return Ok(None);
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(Some(n))
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<bool> {
        let mut s = self.0.lock().unwrap();
        if s.full {
            return Ok(false);
        }
        s.tx.push(frame.to_vec());
        Ok(true)
    }
    fn set_offloads(&mut self, o: Offloads) -> std::io::Result<()> {
        self.0.lock().unwrap().offloads = Some(o);
        Ok(())
    }
}

struct Drv {
    mem: Mem,
    t: Arc<Mutex<MmioTransport>>,
    q: [DriverQueue; 2],
    fake: Arc<Mutex<Fake>>,
    stats: Arc<NetStats>,
    signal: Arc<RxSignal>,
    _irq: EventFd,
}

const MAC: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

impl Drv {
    fn new() -> Drv {
        let fake = Arc::new(Mutex::new(Fake::default()));
        let signal = Arc::new(RxSignal::new().unwrap());
        let dev = Net::new(
            Box::new(FakeBackend(fake.clone())),
            NetConfig { mac: MAC },
            signal.clone(),
            Box::new(|_| {}),
        );
        let stats = dev.stats();
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
        Drv {
            mem,
            t,
            q: [q(0), q(1)],
            fake,
            stats,
            signal,
            _irq: irq,
        }
    }

    fn r32(&self, off: u64) -> u32 {
        drv::r32(&self.t, off)
    }

    fn w32(&self, off: u64, v: u32) {
        drv::w32(&self.t, off, v)
    }

    /// Initializes the device accepting `features` (of those offered).
    fn init(&mut self, features: u64) -> u64 {
        for q in &mut self.q {
            q.reset(&self.mem);
        }
        self.w32(reg::STATUS, 0);
        self.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.r32(reg::DEVICE_FEATURES) as u64;
        self.w32(reg::DEVICE_FEATURES_SEL, 1);
        let offered = lo | (self.r32(reg::DEVICE_FEATURES) as u64) << 32;
        let f = offered & (features | 1 << VIRTIO_F_VERSION_1);
        self.w32(reg::DRIVER_FEATURES_SEL, 0);
        self.w32(reg::DRIVER_FEATURES, f as u32);
        self.w32(reg::DRIVER_FEATURES_SEL, 1);
        self.w32(reg::DRIVER_FEATURES, (f >> 32) as u32);
        self.w32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for (i, q) in self.q.iter().enumerate() {
            assert_eq!(drv::setup_queue(&self.t, i as u32, q), QUEUE_SIZE as u32);
        }
        self.w32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert_eq!(self.r32(reg::STATUS) & status::DRIVER_OK, status::DRIVER_OK);
        offered
    }

    /// Puts a chain on queue `qi` (descriptor slots by ring position).
    fn submit(&mut self, qi: usize, descs: &[(u64, u32, bool)]) -> u16 {
        self.q[qi].submit(&self.mem, descs)
    }

    fn notify(&self, qi: usize) {
        self.w32(reg::QUEUE_NOTIFY, qi as u32);
    }

    fn used(&mut self, qi: usize) -> Vec<(u32, u32)> {
        self.q[qi].take_used(&self.mem)
    }

    /// Sends `frame` (header added) from one readable descriptor.
    fn send(&mut self, hdr: [u8; VNET_HDR_LEN], frame: &[u8], at: u64) -> Vec<(u32, u32)> {
        self.mem.write_slice(&hdr, GuestAddress(at)).unwrap();
        self.mem
            .write_slice(frame, GuestAddress(at + VNET_HDR_LEN as u64))
            .unwrap();
        self.submit(
            TX_QUEUE,
            &[(at, (VNET_HDR_LEN + frame.len()) as u32, false)],
        );
        self.notify(TX_QUEUE);
        self.used(TX_QUEUE)
    }

    /// What the RX thread does when the tap is readable.
    fn rx_ready(&self) {
        self.t.lock().unwrap().process(RX_QUEUE);
    }

    fn stat(&self, f: impl Fn(&NetStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.stats).load(Ordering::Relaxed)
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + len];
    for (i, b) in f[VNET_HDR_LEN..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    f
}

const ALL: u64 = u64::MAX;

#[test]
fn config_space_features_and_offloads() {
    let mut d = Drv::new();
    let offered = d.init(1 << feature::MAC | 1 << feature::STATUS);
    for bit in [
        feature::MAC,
        feature::STATUS,
        feature::MRG_RXBUF,
        feature::CSUM,
        feature::GUEST_TSO4,
    ] {
        assert_ne!(offered & 1 << bit, 0, "feature {bit} offered");
    }
    assert_eq!(d.r32(reg::DEVICE_ID), super::DEVICE_ID);
    let mut c = [0u8; 8];
    d.t.lock().unwrap().read(reg::CONFIG, &mut c);
    assert_eq!(&c[..6], &MAC.0);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), super::S_LINK_UP);
    // Past the end reads as zero.
    let mut far = [0xffu8; 4];
    d.t.lock().unwrap().read(reg::CONFIG + 0x40, &mut far);
    assert_eq!(far, [0; 4]);
    // No offload accepted: the tap hands over nothing unfinished.
    assert_eq!(d.fake.lock().unwrap().offloads, Some(Offloads::default()));
    d.init(ALL);
    assert_eq!(
        d.fake.lock().unwrap().offloads,
        Some(Offloads {
            csum: true,
            tso4: true,
            tso6: true,
            tso_ecn: true
        })
    );
    // GSO without checksum offload is never set on the tap.
    d.init(1 << feature::GUEST_TSO4);
    assert_eq!(d.fake.lock().unwrap().offloads, Some(Offloads::default()));
}

#[test]
fn link_status_follows_set_link_up() {
    let fake = Arc::new(Mutex::new(Fake::default()));
    let n = Net::new(
        Box::new(FakeBackend(fake)),
        NetConfig { mac: MAC },
        Arc::new(RxSignal::new().unwrap()),
        Box::new(|_| {}),
    );
    use crate::virtio::VirtioDevice;
    let mut c = [0u8; 2];
    n.read_config(6, &mut c);
    assert_eq!(c, [1, 0]);
    let shared = n.shared();
    shared.set_link_up(false);
    n.read_config(6, &mut c);
    assert_eq!(c, [0, 0]);
    assert!(!shared.link_up());
    let other = Mac([2, 0, 0, 0, 0, 9]);
    shared.set_mac(other);
    let mut m = [0u8; 6];
    n.read_config(0, &mut m);
    assert_eq!(m, other.0);
}

#[test]
fn transmits_frames_and_drops_bad_ones_counted() {
    let mut d = Drv::new();
    d.init(1 << feature::MAC);
    let f = frame(100, 7);
    let used = d.send([0; 12], &f[VNET_HDR_LEN..], BUF);
    assert_eq!(used.len(), 1);
    assert_eq!(d.fake.lock().unwrap().tx, vec![f.clone()]);
    assert_eq!(d.stat(|s| &s.tx_frames), 1);
    assert_eq!(d.stat(|s| &s.tx_bytes), 100);
    // Shorter than the header.
    d.submit(TX_QUEUE, &[(BUF, 5, false)]);
    d.notify(TX_QUEUE);
    assert_eq!(d.used(TX_QUEUE).len(), 1);
    // Oversize without TSO.
    let big = vec![0u8; 4000];
    assert_eq!(d.send([0; 12], &big, BUF).len(), 1);
    // Checksum offload asked for, not negotiated.
    let mut h = [0u8; 12];
    h[0] = super::HDR_F_NEEDS_CSUM;
    assert_eq!(d.send(h, &f[VNET_HDR_LEN..], BUF).len(), 1);
    // GSO asked for, not negotiated.
    let mut h = [0u8; 12];
    h[1] = super::gso::TCPV4;
    assert_eq!(d.send(h, &f[VNET_HDR_LEN..], BUF).len(), 1);
    // Unmapped buffer.
    d.submit(TX_QUEUE, &[(1 << 40, 100, false)]);
    d.notify(TX_QUEUE);
    assert_eq!(d.used(TX_QUEUE).len(), 1);
    // A write-only buffer holds no frame to send.
    d.submit(TX_QUEUE, &[(BUF, 100, true)]);
    d.notify(TX_QUEUE);
    assert_eq!(d.used(TX_QUEUE).len(), 1);
    assert_eq!(d.stat(|s| &s.tx_errors), 6);
    assert_eq!(
        d.fake.lock().unwrap().tx.len(),
        1,
        "nothing bad reached the tap"
    );
    // With the offloads negotiated the same headers pass.
    d.init(ALL);
    let mut h = [0u8; 12];
    h[0] = super::HDR_F_NEEDS_CSUM;
    h[1] = super::gso::TCPV4;
    let big = vec![1u8; 30000];
    assert_eq!(d.send(h, &big, BUF).len(), 1);
    assert_eq!(d.fake.lock().unwrap().tx.len(), 2);
}

#[test]
fn a_full_tap_holds_tx_on_the_ring_for_a_retry() {
    let mut d = Drv::new();
    d.init(0);
    d.fake.lock().unwrap().full = true;
    let f = frame(60, 1);
    assert!(d.send([0; 12], &f[VNET_HDR_LEN..], BUF).is_empty());
    d.fake.lock().unwrap().full = false;
    d.notify(TX_QUEUE);
    assert_eq!(d.used(TX_QUEUE).len(), 1);
    assert_eq!(d.fake.lock().unwrap().tx, vec![f]);
}

#[test]
fn receive_waits_for_buffers_then_delivers() {
    let mut d = Drv::new();
    d.init(0);
    let f = frame(1000, 3);
    d.fake.lock().unwrap().rx.push_back(f.clone());
    d.rx_ready();
    assert!(d.signal.starved(), "no buffers: the frame waits");
    assert_eq!(d.stat(|s| &s.rx_frames), 0);
    let head = d.submit(RX_QUEUE, &[(BUF, 2048, true)]);
    d.notify(RX_QUEUE);
    assert!(!d.signal.starved());
    assert_eq!(d.used(RX_QUEUE), vec![(head as u32, f.len() as u32)]);
    let mut got = vec![0u8; f.len()];
    d.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(d.stat(|s| &s.rx_frames), 1);
    // A buffer too small (no MRG_RXBUF): dropped, the chain used empty.
    d.fake.lock().unwrap().rx.push_back(frame(1000, 4));
    let head = d.submit(RX_QUEUE, &[(BUF, 100, true)]);
    d.notify(RX_QUEUE);
    assert_eq!(d.used(RX_QUEUE), vec![(head as u32, 0)]);
    assert_eq!(d.stat(|s| &s.rx_dropped), 1);
    // A read-only chain: dropped, used empty, the device goes on.
    d.fake.lock().unwrap().rx.push_back(frame(100, 5));
    d.submit(RX_QUEUE, &[(BUF, 2048, false)]);
    d.notify(RX_QUEUE);
    assert_eq!(d.used(RX_QUEUE).len(), 1);
    assert_eq!(d.stat(|s| &s.rx_dropped), 2);
}

#[test]
fn mergeable_buffers_carry_a_large_frame_over_several_chains() {
    let mut d = Drv::new();
    d.init(1 << feature::MRG_RXBUF | 1 << feature::GUEST_CSUM | 1 << feature::GUEST_TSO4);
    let f = frame(5000, 9);
    d.fake.lock().unwrap().rx.push_back(f.clone());
    // Two 2 KiB buffers are not enough: nothing is consumed.
    let h1 = d.submit(RX_QUEUE, &[(BUF, 2048, true)]);
    let h2 = d.submit(RX_QUEUE, &[(BUF + 0x1000, 2048, true)]);
    d.notify(RX_QUEUE);
    assert!(d.used(RX_QUEUE).is_empty());
    assert!(d.signal.starved());
    let h3 = d.submit(RX_QUEUE, &[(BUF + 0x2000, 2048, true)]);
    d.notify(RX_QUEUE);
    let used = d.used(RX_QUEUE);
    assert_eq!(
        used,
        vec![
            (h1 as u32, 2048),
            (h2 as u32, 2048),
            (h3 as u32, (f.len() - 4096) as u32)
        ]
    );
    let mut got = Vec::new();
    for (i, (_, len)) in used.iter().enumerate() {
        let mut b = vec![0u8; *len as usize];
        d.mem
            .read_slice(&mut b, GuestAddress(BUF + i as u64 * 0x1000))
            .unwrap();
        got.extend(b);
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
}

#[test]
fn a_ring_too_small_for_a_frame_drops_it_instead_of_stalling() {
    let mut d = Drv::new();
    d.init(1 << feature::MRG_RXBUF | 1 << feature::GUEST_CSUM | 1 << feature::GUEST_TSO4);
    d.fake.lock().unwrap().rx.push_back(frame(60000, 1));
    d.fake.lock().unwrap().rx.push_back(frame(60, 2));
    // The whole ring (16 chains of 64 bytes) cannot hold 60 kB.
    for i in 0..QSIZE as u64 {
        let q = &mut d.q[RX_QUEUE];
        let desc = RawDescriptor::from(SplitDescriptor::new(BUF + i * 64, 64, F_WRITE, 0));
        d.mem
            .write_obj(desc, GuestAddress(q.desc + i * 16))
            .unwrap();
        let slot = q.avail + 4 + 2 * (q.avail_idx % QSIZE) as u64;
        d.mem.write_obj(i as u16, GuestAddress(slot)).unwrap();
        q.avail_idx = q.avail_idx.wrapping_add(1);
    }
    let idx = d.q[RX_QUEUE].avail_idx;
    d.mem
        .write_obj(idx, GuestAddress(d.q[RX_QUEUE].avail + 2))
        .unwrap();
    d.notify(RX_QUEUE);
    assert_eq!(d.used(RX_QUEUE).len(), QSIZE as usize);
    assert_eq!(d.stat(|s| &s.rx_dropped), 1);
    // The next frame waits for new buffers, and gets them.
    assert!(d.signal.starved());
    d.submit(RX_QUEUE, &[(BUF, 2048, true)]);
    d.notify(RX_QUEUE);
    assert_eq!(d.used(RX_QUEUE).len(), 1);
    assert_eq!(d.stat(|s| &s.rx_frames), 1);
}

#[test]
fn random_rings_never_panic() {
    // Garbage descriptors, chains, avail entries, headers and register
    // writes on both queues, with frames arriving all along: the device
    // may drop frames or ask for a reset, never panic or stall.
    let mut d = Drv::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let st = d.r32(reg::STATUS);
        if st & status::DRIVER_OK == 0 || st & status::DEVICE_NEEDS_RESET != 0 {
            d.init(rnd());
        }
        let qi = (rnd() % 2) as usize;
        for i in 0..QSIZE as u64 {
            let r = rnd();
            let addr = match r % 4 {
                0 => rnd(),
                1 => rnd() % (16 << 20),
                _ => BUF + (rnd() % 0x10000),
            };
            let len = match (r >> 8) % 3 {
                0 => rnd() as u32,
                1 => (rnd() % 70000) as u32,
                _ => (rnd() % 2048) as u32,
            };
            let flags = (rnd() % 8) as u16;
            let next = (rnd() % (QSIZE as u64 + 2)) as u16;
            let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            d.mem
                .write_obj(desc, GuestAddress(d.q[qi].desc + i * 16))
                .unwrap();
        }
        let mut hdr = [0u8; 12];
        for b in &mut hdr {
            *b = rnd() as u8;
        }
        d.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
        if rnd() % 2 == 0 {
            let len = (rnd() % 70000) as usize;
            d.fake.lock().unwrap().rx.push_back(vec![rnd() as u8; len]);
        }
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
        d.notify(qi);
        d.rx_ready();
        let _ = d.used(qi);
        if round % 37 == 0 {
            d.w32((rnd() % 0x200) & !3, rnd() as u32);
        }
        d.fake.lock().unwrap().tx.clear();
    }
    let s = |f: fn(&NetStats) -> &std::sync::atomic::AtomicU64| d.stat(f);
    let (tx, txe, rx, rxd) = (
        s(|s| &s.tx_frames),
        s(|s| &s.tx_errors),
        s(|s| &s.rx_frames),
        s(|s| &s.rx_dropped),
    );
    eprintln!("random rings: tx {tx} sent {txe} refused, rx {rx} delivered {rxd} dropped");
    assert!(txe > 100 && rxd > 100, "the garbage reached the device");
    // Still a working device after a reset.
    d.fake.lock().unwrap().rx.clear();
    d.init(0);
    let f = frame(200, 1);
    d.fake.lock().unwrap().rx.push_back(f.clone());
    d.submit(RX_QUEUE, &[(BUF, 2048, true)]);
    d.notify(RX_QUEUE);
    assert_eq!(d.used(RX_QUEUE).len(), 1);
    let used = d.send([0; 12], &f[VNET_HDR_LEN..], BUF + 0x8000);
    assert_eq!(used.len(), 1);
    assert_eq!(d.fake.lock().unwrap().tx, vec![f]);
}
