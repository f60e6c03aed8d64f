//! Transport and block device driven as a guest driver would, through the
//! register window and split queues in test guest memory.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_block::qos::{Clock, ManualClock, Qos, QosEvent, QosEventKind, QosLimits};
use tern_block::BlockBackend;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::block::{self, req, Block, BlockStats};
use super::mmio::{reg, MmioTransport, INT_CONFIG, INT_VRING};
use super::{status, Mem, Timed, Timer, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;

const QSIZE: u16 = 16;
use super::test_driver::{self as drv, DriverQueue, F_NEXT};

struct Drv {
    mem: Mem,
    t: Arc<Mutex<MmioTransport>>,
    irq: EventFd,
    q: DriverQueue,
    stats: Arc<BlockStats>,
    events: Arc<Mutex<Vec<QosEvent>>>,
    errors: Arc<Mutex<Vec<String>>>,
    clock: Arc<ManualClock>,
    qos: Arc<Mutex<Qos>>,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    backend: Arc<dyn BlockBackend>,
}

fn mem() -> Mem {
    Mem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

impl Drv {
    fn new(ro: bool, limits: QosLimits) -> Drv {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(1 << 20).unwrap();
        let backend = tern_block::open(&tern_block::OpenOptions::new(&path).read_only(ro)).unwrap();
        let clock = Arc::new(ManualClock::default());
        let qos = Arc::new(Mutex::new(
            Qos::new(limits, clock.clone() as Arc<dyn Clock>).unwrap(),
        ));
        let events = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (ev, er) = (events.clone(), errors.clone());
        let dev = Block::new(
            backend.clone(),
            qos.clone(),
            Box::new(move |e| ev.lock().unwrap().push(e)),
            Box::new(move |e| er.lock().unwrap().push(e.to_string())),
        );
        let stats = dev.stats();
        let m = mem();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = Arc::new(Mutex::new(MmioTransport::new(
            Box::new(dev),
            m.clone(),
            irq.try_clone().unwrap(),
        )));
        // Rings apart from each other and from the request buffers.
        Drv {
            mem: m,
            t,
            irq,
            q: DriverQueue::new(0x1000, 0x2000, 0x3000, QSIZE),
            stats,
            events,
            errors,
            clock,
            qos,
            _dir: dir,
            path,
            backend,
        }
    }

    fn t(&self) -> std::sync::MutexGuard<'_, MmioTransport> {
        self.t.lock().unwrap()
    }

    fn r32(&mut self, off: u64) -> u32 {
        drv::r32(&self.t, off)
    }

    fn w32(&mut self, off: u64, v: u32) {
        drv::w32(&self.t, off, v)
    }

    fn config_u64(&mut self, off: u64) -> u64 {
        let lo = self.r32(reg::CONFIG + off) as u64;
        let hi = self.r32(reg::CONFIG + off + 4) as u64;
        lo | hi << 32
    }

    /// The driver init sequence of §3.1.1; returns the final status.
    fn init(&mut self) -> u32 {
        self.w32(reg::STATUS, 0);
        self.w32(reg::STATUS, status::ACKNOWLEDGE);
        self.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.r32(reg::DEVICE_FEATURES);
        self.w32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.r32(reg::DEVICE_FEATURES);
        self.w32(reg::DRIVER_FEATURES_SEL, 0);
        self.w32(reg::DRIVER_FEATURES, lo & !(1 << 29)); // no event idx: interrupt every time
        self.w32(reg::DRIVER_FEATURES_SEL, 1);
        self.w32(reg::DRIVER_FEATURES, hi);
        self.w32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(self.r32(reg::STATUS) & status::FEATURES_OK, 0);
        assert_eq!(
            drv::setup_queue(&self.t, 0, &self.q),
            block::QUEUE_SIZE as u32
        );
        self.w32(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        self.r32(reg::STATUS)
    }

    /// Puts a chain on the avail ring (descriptor slots by ring position).
    fn submit(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        self.q.submit(&self.mem, descs)
    }

    fn notify(&mut self) {
        self.w32(reg::QUEUE_NOTIFY, 0);
    }

    /// Used entries since the last call: (head, len).
    fn used(&mut self) -> Vec<(u32, u32)> {
        self.q.take_used(&self.mem)
    }

    /// Catches up with the used index without checking the entries.
    fn used_unchecked(&mut self) -> u16 {
        self.q.skip_used(&self.mem)
    }

    /// One request through the ring: header at `buf`, data after it, the
    /// status byte at `buf + 0xf000`. Returns (status, used len).
    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        data: Option<(u32, bool)>,
        buf: u64,
    ) -> (u8, u32) {
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&hdr, GuestAddress(buf)).unwrap();
        self.mem
            .write_obj(0xffu8, GuestAddress(buf + 0xf000))
            .unwrap();
        let mut d = vec![(buf, 16, false)];
        if let Some((len, write)) = data {
            d.push((buf + 0x1000, len, write));
        }
        d.push((buf + 0xf000, 1, true));
        let head = self.submit(&d);
        self.notify();
        let used = self.used();
        assert_eq!(used.len(), 1, "{used:?}");
        assert_eq!(used[0].0, head as u32);
        (
            self.mem.read_obj(GuestAddress(buf + 0xf000)).unwrap(),
            used[0].1,
        )
    }
}

const BUF: u64 = 0x10_0000;

#[test]
fn identifies_and_negotiates() {
    let mut d = Drv::new(false, QosLimits::default());
    assert_eq!(d.r32(reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(d.r32(reg::VERSION), 2);
    assert_eq!(d.r32(reg::DEVICE_ID), 2);
    d.w32(reg::DEVICE_FEATURES_SEL, 1);
    assert_ne!(
        d.r32(reg::DEVICE_FEATURES) & (1 << (VIRTIO_F_VERSION_1 - 32)),
        0
    );
    // Capacity in 512-byte sectors; seg_max; blk_size.
    assert_eq!(d.config_u64(0), 2048);
    assert_eq!(d.r32(reg::CONFIG + 12), block::QUEUE_SIZE as u32 - 2);
    assert_eq!(d.r32(reg::CONFIG + 20), 512);
    // Misaligned or narrow register accesses are ignored and read 0.
    let mut b = [0xffu8; 2];
    d.t().read(reg::MAGIC_VALUE, &mut b);
    assert_eq!(b, [0, 0]);
    d.t().read(reg::VERSION + 1, &mut [0u8; 4]);
    // A driver without VERSION_1 is refused at FEATURES_OK.
    d.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w32(reg::DRIVER_FEATURES_SEL, 0);
    d.w32(reg::DRIVER_FEATURES, 1 << block::feature::FLUSH);
    d.w32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(d.r32(reg::STATUS) & status::FEATURES_OK, 0);
    // Features the device does not offer are refused too.
    d.w32(reg::DRIVER_FEATURES_SEL, 1);
    d.w32(reg::DRIVER_FEATURES, 0xffff_ffff);
    d.w32(
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(d.r32(reg::STATUS) & status::FEATURES_OK, 0);
    let st = d.init();
    assert_ne!(st & status::DRIVER_OK, 0);
    // No shared memory regions.
    assert_eq!(d.r32(reg::SHM_LEN_LOW), u32::MAX);
}

#[test]
fn write_read_flush_get_id() {
    let mut d = Drv::new(false, QosLimits::default());
    d.init();
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 256) as u8).collect();
    d.mem
        .write_slice(&data, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(d.request(req::OUT, 16, Some((8192, false)), BUF), (0, 1));
    assert_ne!(d.t().read_interrupt_status() & INT_VRING, 0);
    assert_eq!(d.irq.read().unwrap(), 1);
    d.w32(reg::INTERRUPT_ACK, INT_VRING);
    assert_eq!(d.t().read_interrupt_status(), 0);
    let b2 = BUF + 0x10_0000;
    assert_eq!(d.request(req::IN, 16, Some((8192, true)), b2), (0, 8193));
    let mut back = vec![0u8; 8192];
    d.mem
        .read_slice(&mut back, GuestAddress(b2 + 0x1000))
        .unwrap();
    assert_eq!(back, data);
    // A driver that polls says so: no interrupt then.
    d.w32(reg::INTERRUPT_ACK, INT_VRING);
    let _ = d.irq.read();
    d.mem.write_obj(1u16, GuestAddress(d.q.avail)).unwrap();
    assert_eq!(d.request(req::FLUSH, 0, None, BUF), (0, 1));
    assert_eq!(d.t().read_interrupt_status(), 0);
    assert!(d.irq.read().is_err(), "no eventfd signal");
    d.mem.write_obj(0u16, GuestAddress(d.q.avail)).unwrap();
    assert_eq!(std::fs::read(&d.path).unwrap()[8192..16384], data[..]);
    assert_eq!(d.request(req::GET_ID, 0, Some((20, true)), BUF), (0, 21));
    let mut id = [0u8; 20];
    d.mem
        .read_slice(&mut id, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(&id[..8], b"disk.img");
    assert_eq!(id[8..], [0u8; 12]);
    assert_eq!(d.request(99, 0, None, BUF), (block::status::UNSUPP, 1));
    assert_eq!(d.stats.read_bytes.load(Ordering::Relaxed), 8192);
}

#[test]
fn bad_requests_get_ioerr_and_the_device_goes_on() {
    let mut d = Drv::new(false, QosLimits::default());
    d.init();
    // Past the end (the disk has 2048 sectors), and a sector that overflows.
    assert_eq!(
        d.request(req::IN, 2047, Some((1024, true)), BUF).0,
        block::status::IOERR
    );
    assert_eq!(
        d.request(req::OUT, 2048, Some((512, false)), BUF).0,
        block::status::IOERR
    );
    assert_eq!(
        d.request(req::IN, u64::MAX / 256, Some((512, true)), BUF).0,
        block::status::IOERR
    );
    // A length that is not whole sectors.
    assert_eq!(
        d.request(req::OUT, 0, Some((100, false)), BUF).0,
        block::status::IOERR
    );
    // A data buffer outside guest memory: IOERR, nothing written.
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&req::OUT.to_le_bytes());
    d.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
    d.submit(&[
        (BUF, 16, false),
        (1 << 40, 4096, false),
        (BUF + 0xf000, 1, true),
    ]);
    d.notify();
    assert_eq!(d.used().len(), 1);
    assert_eq!(
        d.mem.read_obj::<u8>(GuestAddress(BUF + 0xf000)).unwrap(),
        block::status::IOERR
    );
    // A huge descriptor length is bounded by the disk, not allocated.
    d.submit(&[
        (BUF, 16, false),
        (BUF + 0x1000, u32::MAX, true),
        (BUF + 0xf000, 1, true),
    ]);
    d.notify();
    assert_eq!(d.used().len(), 1);
    // No writable descriptor at all: completed with length 0.
    let head = d.submit(&[(BUF, 16, false)]);
    d.notify();
    assert_eq!(d.used(), vec![(head as u32, 0)]);
    // A header too short.
    d.submit(&[(BUF, 8, false), (BUF + 0xf000, 1, true)]);
    d.notify();
    assert_eq!(d.used().len(), 1);
    assert_eq!(
        d.mem.read_obj::<u8>(GuestAddress(BUF + 0xf000)).unwrap(),
        block::status::IOERR
    );
    // A descriptor chain that loops on itself ends (virtio-queue's TTL).
    let loop_desc = RawDescriptor::from(SplitDescriptor::new(BUF, 16, F_NEXT, 8));
    d.mem
        .write_obj(loop_desc, GuestAddress(d.q.desc + 8 * 16))
        .unwrap();
    let slot = d.q.avail + 4 + 2 * (d.q.avail_idx % QSIZE) as u64;
    d.mem.write_obj(8u16, GuestAddress(slot)).unwrap();
    d.q.avail_idx += 1;
    d.mem
        .write_obj(d.q.avail_idx, GuestAddress(d.q.avail + 2))
        .unwrap();
    d.notify();
    assert_eq!(d.used().len(), 1);
    // Still working, and each failure kind was reported once.
    assert_eq!(d.request(req::IN, 0, Some((512, true)), BUF), (0, 513));
    assert_eq!(d.r32(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    let errors = d.errors.lock().unwrap().clone();
    assert!(
        errors.iter().any(|e| e.contains("beyond the disk's end")),
        "{errors:?}"
    );
}

#[test]
fn broken_avail_index_needs_reset_then_recovers() {
    let mut d = Drv::new(false, QosLimits::default());
    d.init();
    // The driver claims far more entries than the queue holds.
    d.mem
        .write_obj(QSIZE * 3, GuestAddress(d.q.avail + 2))
        .unwrap();
    d.notify();
    assert_ne!(d.r32(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(d.t().read_interrupt_status() & INT_CONFIG, 0);
    // Notifies are ignored until reset.
    d.notify();
    d.w32(reg::STATUS, 0);
    assert_eq!(d.r32(reg::STATUS), 0);
    d.q.avail_idx = 0;
    d.q.used_seen = 0;
    d.mem.write_obj(0u16, GuestAddress(d.q.avail + 2)).unwrap();
    d.mem.write_obj(0u16, GuestAddress(d.q.used + 2)).unwrap();
    d.init();
    assert_eq!(d.request(req::IN, 0, Some((512, true)), BUF), (0, 513));
}

#[test]
fn queue_with_bad_layout_is_refused() {
    let mut d = Drv::new(false, QosLimits::default());
    d.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w32(reg::QUEUE_SEL, 0);
    d.w32(reg::QUEUE_NUM, 3); // not a power of two
    d.w32(reg::QUEUE_DESC_LOW, 0x1000);
    d.w32(reg::QUEUE_DRIVER_LOW, 0x2000);
    d.w32(reg::QUEUE_DEVICE_LOW, 0x3000);
    d.w32(reg::QUEUE_READY, 1);
    assert_eq!(d.r32(reg::QUEUE_READY), 0);
    assert_ne!(d.r32(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    // After a reset: rings outside guest memory, then a misaligned ring.
    d.w32(reg::STATUS, 0);
    d.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w32(reg::QUEUE_DESC_LOW, 0x1000);
    d.w32(reg::QUEUE_DESC_HIGH, 0x100);
    d.w32(reg::QUEUE_DRIVER_LOW, 0x2000);
    d.w32(reg::QUEUE_DEVICE_LOW, 0x3000);
    d.w32(reg::QUEUE_READY, 1);
    assert_eq!(d.r32(reg::QUEUE_READY), 0);
    assert_ne!(d.r32(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    d.w32(reg::STATUS, 0);
    d.w32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.w32(reg::QUEUE_DEVICE_LOW, 0x3002);
    assert_ne!(d.r32(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    // A queue past the device's count reads as absent.
    d.w32(reg::QUEUE_SEL, 5);
    assert_eq!(d.r32(reg::QUEUE_NUM_MAX), 0);
    d.w32(reg::QUEUE_READY, 1);
    d.w32(reg::QUEUE_NOTIFY, 5);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut d = Drv::new(true, QosLimits::default());
    d.w32(reg::DEVICE_FEATURES_SEL, 0);
    let f = d.r32(reg::DEVICE_FEATURES);
    assert_ne!(f & (1 << block::feature::RO), 0);
    assert_eq!(f & (1 << block::feature::DISCARD), 0);
    d.init();
    assert_eq!(
        d.request(req::OUT, 0, Some((512, false)), BUF).0,
        block::status::IOERR
    );
    assert_eq!(d.request(req::IN, 0, Some((512, true)), BUF).0, 0);
}

#[test]
fn discard_segments() {
    let mut d = Drv::new(false, QosLimits::default());
    d.init();
    d.mem
        .write_slice(&[7u8; 4096], GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(d.request(req::OUT, 8, Some((4096, false)), BUF).0, 0);
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&8u64.to_le_bytes());
    seg[8..12].copy_from_slice(&8u32.to_le_bytes());
    d.mem.write_slice(&seg, GuestAddress(BUF + 0x1000)).unwrap();
    assert_eq!(d.request(req::DISCARD, 0, Some((16, false)), BUF).0, 0);
    assert_eq!(d.request(req::IN, 8, Some((4096, true)), BUF).0, 0);
    let mut b = [1u8; 4096];
    d.mem
        .read_slice(&mut b, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(b, [0u8; 4096]);
    // A ragged segment list, and a segment past the end.
    assert_eq!(
        d.request(req::DISCARD, 0, Some((15, false)), BUF).0,
        block::status::IOERR
    );
    seg[0..8].copy_from_slice(&2047u64.to_le_bytes());
    d.mem.write_slice(&seg, GuestAddress(BUF + 0x1000)).unwrap();
    assert_eq!(
        d.request(req::DISCARD, 0, Some((16, false)), BUF).0,
        block::status::IOERR
    );
}

#[test]
fn resize_changes_config_with_a_notification() {
    let mut d = Drv::new(false, QosLimits::default());
    d.init();
    let gen = d.r32(reg::CONFIG_GENERATION);
    d.backend
        .resize(4 << 20, &tern_block::ResizePolicy::default())
        .unwrap();
    d.t().config_changed();
    assert_ne!(d.r32(reg::CONFIG_GENERATION), gen);
    assert_eq!(d.config_u64(0), 8192);
    assert_ne!(d.t().read_interrupt_status() & INT_CONFIG, 0);
    assert!(d.irq.read().unwrap() >= 1);
    // The new end is addressable.
    assert_eq!(d.request(req::IN, 8191, Some((512, true)), BUF).0, 0);
}

#[test]
fn qos_holds_requests_on_the_ring_and_retries() {
    let mut d = Drv::new(
        false,
        QosLimits {
            max_iops: 100,
            ..Default::default()
        },
    );
    d.init();
    // The burst (10 normalized I/Os) goes at once...
    let mut done = 0;
    for _ in 0..10 {
        assert_eq!(d.request(req::IN, 0, Some((4096, true)), BUF).0, 0);
        done += 1;
    }
    // ... the next waits on the ring, without blocking the notifier.
    d.submit(&[
        (BUF, 16, false),
        (BUF + 0x1000, 4096, true),
        (BUF + 0xf000, 1, true),
    ]);
    d.notify();
    assert!(d.used().is_empty());
    assert_eq!(d.stats.throttled.load(Ordering::Relaxed), 1);
    d.t().on_timer(true);
    assert!(d.used().is_empty());
    d.clock.advance(Duration::from_millis(11));
    d.t().on_timer(true);
    assert_eq!(d.used().len(), 1);
    done += 1;
    // A 64 KiB request costs 8: after it, 8 requests' worth of time must pass.
    d.clock.advance(Duration::from_millis(20));
    assert_eq!(d.request(req::IN, 0, Some((65536, true)), BUF).0, 0);
    d.submit(&[
        (BUF, 16, false),
        (BUF + 0x1000, 4096, true),
        (BUF + 0xf000, 1, true),
    ]);
    d.notify();
    d.clock.advance(Duration::from_millis(50));
    d.t().on_timer(true);
    assert!(d.used().is_empty());
    d.clock.advance(Duration::from_millis(20));
    d.t().on_timer(true);
    assert_eq!(d.used().len(), 1);
    assert!(done > 0);
    // Limits change at runtime: lifted, the next request goes at once.
    d.qos
        .lock()
        .unwrap()
        .set_limits(QosLimits::default())
        .unwrap();
    for _ in 0..50 {
        assert_eq!(d.request(req::IN, 0, Some((4096, true)), BUF).0, 0);
    }
}

#[test]
fn unmet_minimum_reaches_the_event_callback() {
    let mut d = Drv::new(
        false,
        QosLimits {
            min_iops: 1_000_000,
            ..Default::default()
        },
    );
    d.init();
    for _ in 0..400 {
        assert_eq!(d.request(req::IN, 0, Some((512, true)), BUF).0, 0);
        d.clock.advance(Duration::from_millis(10));
        d.t().on_timer(false);
    }
    let ev = d.events.lock().unwrap().clone();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, QosEventKind::MinIopsNotMet);
}

#[test]
fn threaded_device_polls_with_notifications_off_then_sleeps() {
    let mut d = Drv::new(false, QosLimits::default());
    d.init();
    d.t().set_threaded(true);
    let waker = d.t().waker();
    let _timer = Timer::spawn("test-disk".into(), waker, Arc::downgrade(&d.t)).unwrap();
    let wait_used = |d: &mut Drv| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let u = d.used();
            if !u.is_empty() {
                return u;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "request never completed"
            );
            std::thread::yield_now();
        }
    };
    let flags = |d: &Drv| d.mem.read_obj::<u16>(GuestAddress(d.q.used)).unwrap();
    for round in 0..20u64 {
        let mut hdr = [0u8; 16];
        hdr[8..16].copy_from_slice(&round.to_le_bytes());
        d.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
        d.submit(&[
            (BUF, 16, false),
            (BUF + 0x1000, 512, true),
            (BUF + 0xf000, 1, true),
        ]);
        // A driver notifies only when the device has not said otherwise.
        if flags(&d) & 1 == 0 {
            d.notify();
        }
        assert_eq!(wait_used(&mut d).len(), 1);
    }
    // Idle: notifications come back on once the poll window passes.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while flags(&d) & 1 != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "notifications stay off"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(d.stats.requests.load(Ordering::Relaxed), 20);
}

#[test]
fn random_rings_never_panic() {
    // Garbage descriptors, chains, avail entries and register writes: the
    // device may fail requests or ask for a reset, never panic.
    let mut d = Drv::new(false, QosLimits::default());
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        if d.r32(reg::STATUS) & status::DRIVER_OK == 0
            || d.r32(reg::STATUS) & status::DEVICE_NEEDS_RESET != 0
        {
            d.q.avail_idx = 0;
            d.q.used_seen = 0;
            d.mem.write_obj(0u16, GuestAddress(d.q.avail + 2)).unwrap();
            d.init();
        }
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
                _ => 16,
            };
            let flags = (rnd() % 8) as u16; // NEXT, WRITE, INDIRECT
            let next = (rnd() % (QSIZE as u64 + 2)) as u16;
            let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            d.mem
                .write_obj(desc, GuestAddress(d.q.desc + i * 16))
                .unwrap();
        }
        // Request headers of every type at the buffers.
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&((rnd() % 14) as u32).to_le_bytes());
        hdr[8..16].copy_from_slice(&(rnd() % 4096).to_le_bytes());
        d.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
        let n = rnd() % 5;
        for _ in 0..n {
            let slot = d.q.avail + 4 + 2 * (d.q.avail_idx % QSIZE) as u64;
            d.mem
                .write_obj((rnd() % (QSIZE as u64 + 1)) as u16, GuestAddress(slot))
                .unwrap();
            d.q.avail_idx = d.q.avail_idx.wrapping_add(1);
        }
        if round % 50 == 49 {
            // Now and then an index that jumps too far.
            d.q.avail_idx = d.q.avail_idx.wrapping_add(rnd() as u16);
        }
        d.mem
            .write_obj(d.q.avail_idx, GuestAddress(d.q.avail + 2))
            .unwrap();
        d.notify();
        let _ = d.used_unchecked();
        if round % 37 == 0 {
            let off = rnd() % 0x200;
            d.w32(off & !3, rnd() as u32);
        }
    }
    let (reqs, errs) = (
        d.stats.requests.load(Ordering::Relaxed),
        d.stats.errors.load(Ordering::Relaxed),
    );
    eprintln!("random rings: {reqs} requests completed, {errs} failed");
    assert!(reqs > 500 && errs > 100, "the garbage reached the device");
    // Still a working device after a reset.
    d.q.avail_idx = 0;
    d.q.used_seen = 0;
    d.mem.write_obj(0u16, GuestAddress(d.q.avail + 2)).unwrap();
    d.mem.write_obj(0u16, GuestAddress(d.q.used + 2)).unwrap();
    d.init();
    assert_eq!(d.request(req::IN, 0, Some((512, true)), BUF).0, 0);
}

#[test]
fn a_stream_of_failing_requests_is_logged_once_not_per_request() {
    let mut d = Drv::new(false, QosLimits::default());
    d.init();
    // 200 reads past the end, each at another sector: one kind of failure.
    for i in 0..200u64 {
        assert_eq!(
            d.request(req::IN, 3000 + i, Some((512, true)), BUF).0,
            block::status::IOERR
        );
    }
    let errors = d.errors.lock().unwrap().clone();
    // Within a second only the first is logged (a slow run may add one
    // summary line per second, which says how many it stands for).
    assert!(!errors.is_empty());
    assert!(errors.len() <= 3, "{} lines: {errors:?}", errors.len());
    assert!(errors[0].contains("beyond the disk's end"), "{errors:?}");
    assert_eq!(d.stats.errors.load(Ordering::Relaxed), 200);
    // Another kind of failure is reported at once.
    assert_eq!(
        d.request(req::OUT, 0, Some((100, false)), BUF).0,
        block::status::IOERR
    );
    assert_eq!(d.errors.lock().unwrap().len(), errors.len() + 1);
}
