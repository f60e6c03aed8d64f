use super::*;
use crate::bus::BusDevice;
use crate::virtio::mmio::{reg, MmioTransport};
use crate::virtio::status;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

const MEM: u64 = 4 << 20;
/// Per queue: descriptors, avail, used at QBASE + q * 0x3000.
const QBASE: u64 = 0x10000;
const QSIZE: u16 = 16;
const BUF: u64 = 0x100000;

struct Driver {
    t: MmioTransport,
    mem: Mem,
    host: ScsiHost,
    /// Next avail index per queue.
    avail: [u16; 3],
    /// Next free buffer address.
    next: u64,
}

fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn qaddr(q: usize) -> (u64, u64, u64) {
    let base = QBASE + q as u64 * 0x3000;
    (base, base + 0x1000, base + 0x2000)
}

impl Driver {
    fn new(target: Arc<ScsiTarget>) -> Driver {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (dev, host) = Scsi::new(
            target,
            NexusId::Virtio {
                vm: "test-vm".into(),
                controller: 0,
            },
        );
        let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq);
        assert_eq!(r32(&mut t, reg::DEVICE_ID), DEVICE_ID);
        w32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        for sel in [0, 1] {
            w32(&mut t, reg::DEVICE_FEATURES_SEL, sel);
            let f = r32(&mut t, reg::DEVICE_FEATURES);
            w32(&mut t, reg::DRIVER_FEATURES_SEL, sel);
            w32(&mut t, reg::DRIVER_FEATURES, f);
        }
        let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w32(&mut t, reg::STATUS, ok);
        for q in 0..3 {
            w32(&mut t, reg::QUEUE_SEL, q as u32);
            w32(&mut t, reg::QUEUE_NUM, QSIZE as u32);
            let (d, a, u) = qaddr(q);
            for (lo, v) in [
                (reg::QUEUE_DESC_LOW, d),
                (reg::QUEUE_DRIVER_LOW, a),
                (reg::QUEUE_DEVICE_LOW, u),
            ] {
                w32(&mut t, lo, v as u32);
                w32(&mut t, lo + 4, 0);
            }
            w32(&mut t, reg::QUEUE_READY, 1);
        }
        w32(&mut t, reg::STATUS, ok | status::DRIVER_OK);
        Driver {
            t,
            mem,
            host,
            avail: [0; 3],
            next: BUF,
        }
    }

    fn alloc(&mut self, len: usize) -> u64 {
        let a = self.next;
        self.next += (len as u64).div_ceil(64) * 64 + 64;
        assert!(self.next < MEM, "test buffers fit");
        a
    }

    /// Puts a chain (readable parts, then writable lengths) on queue
    /// `q`; returns the writable buffers' addresses.
    fn post(&mut self, q: usize, readable: &[&[u8]], writable: &[usize]) -> Vec<u64> {
        let (desc, avail, _) = qaddr(q);
        let mut parts = Vec::new();
        for r in readable {
            let a = self.alloc(r.len());
            self.mem.write_slice(r, GuestAddress(a)).unwrap();
            parts.push((a, r.len() as u32, 0u16));
        }
        let mut outs = Vec::new();
        for &w in writable {
            let a = self.alloc(w);
            parts.push((a, w as u32, 2u16));
            outs.push(a);
        }
        // Descriptors from 0 each time: one chain in flight per call.
        for (i, (a, len, flags)) in parts.iter().enumerate() {
            let next = i + 1 < parts.len();
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&a.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&(flags | if next { 1 } else { 0 }).to_le_bytes());
            d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
            self.mem
                .write_slice(&d, GuestAddress(desc + i as u64 * 16))
                .unwrap();
        }
        let idx = self.avail[q];
        self.mem
            .write_obj(0u16, GuestAddress(avail + 4 + 2 * (idx % QSIZE) as u64))
            .unwrap();
        self.avail[q] = idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail[q], GuestAddress(avail + 2))
            .unwrap();
        outs
    }

    fn notify(&mut self, q: usize) {
        w32(&mut self.t, reg::QUEUE_NOTIFY, q as u32);
        let _ = self.t.process(q);
    }

    fn used(&self, q: usize) -> (u16, u32) {
        let (_, _, used) = qaddr(q);
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let slot = (idx.wrapping_sub(1) % QSIZE) as u64;
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(used + 4 + slot * 8 + 4))
            .unwrap();
        (idx, len)
    }

    fn read(&self, a: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(a)).unwrap();
        v
    }

    /// One SCSI command; returns (response header, data-in).
    fn scsi(&mut self, lun: [u8; 8], cdb: &[u8], out: &[u8], in_len: usize) -> (Vec<u8>, Vec<u8>) {
        let mut hdr = vec![0u8; REQ_HEADER];
        hdr[0..8].copy_from_slice(&lun);
        hdr[19..19 + cdb.len()].copy_from_slice(cdb);
        let readable: Vec<&[u8]> = if out.is_empty() {
            vec![&hdr]
        } else {
            vec![&hdr, out]
        };
        let writable: Vec<usize> = if in_len == 0 {
            vec![RESP_HEADER]
        } else {
            vec![RESP_HEADER, in_len]
        };
        let w = self.post(queue::REQUEST, &readable, &writable);
        self.notify(queue::REQUEST);
        let (_, used_len) = self.used(queue::REQUEST);
        let resp = self.read(w[0], RESP_HEADER);
        let data = if in_len == 0 {
            Vec::new()
        } else {
            self.read(w[1], (used_len as usize).saturating_sub(RESP_HEADER))
        };
        (resp, data)
    }
}

fn disk_target() -> (Arc<ScsiTarget>, Arc<dyn BlockBackend>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.img");
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    let disk = tern_block::open(&tern_block::OpenOptions::new(&p)).unwrap();
    let t = Arc::new(ScsiTarget::new());
    t.add_disk(0, DiskConfig::new(disk.clone())).unwrap();
    (t, disk)
}

fn tur() -> [u8; 6] {
    [0; 6]
}

#[test]
fn config_space() {
    let (t, _) = disk_target();
    let (dev, _) = Scsi::new(
        t,
        NexusId::Virtio {
            vm: "v".into(),
            controller: 0,
        },
    );
    let mut c = [0u8; 36];
    dev.read_config(0, &mut c);
    assert_eq!(u32::from_le_bytes(c[0..4].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 96);
    assert_eq!(u32::from_le_bytes(c[24..28].try_into().unwrap()), 32);
    assert_eq!(
        u32::from_le_bytes(c[32..36].try_into().unwrap()),
        MAX_LUN as u32
    );
    let mut past = [0xFFu8; 4];
    dev.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn commands_through_the_request_queue() {
    let (t, disk) = disk_target();
    let mut d = Driver::new(t);
    // First command: POWER ON unit attention, as sense data.
    let (r, _) = d.scsi(virtio_lun(0), &tur(), &[], 0);
    assert_eq!(r[10], 2, "CHECK CONDITION");
    assert_eq!(r[11], response::OK);
    assert_eq!(u32::from_le_bytes(r[0..4].try_into().unwrap()), 18);
    assert_eq!((r[12 + 2], r[12 + 12]), (6, 0x29));
    // A write, then a read of the same block.
    let data = [0x3Cu8; 512];
    let (r, _) = d.scsi(virtio_lun(0), &[0x2A, 0, 0, 0, 0, 9, 0, 0, 1, 0], &data, 0);
    assert_eq!((r[10], r[11]), (0, 0));
    let mut on_disk = [0u8; 512];
    disk.read_at(&mut on_disk, 9 * 512).unwrap();
    assert_eq!(on_disk, data);
    let (r, got) = d.scsi(virtio_lun(0), &[0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0], &[], 4096);
    assert_eq!((r[10], r[11]), (0, 0));
    assert_eq!(got, data);
    assert_eq!(
        u32::from_le_bytes(r[4..8].try_into().unwrap()),
        3584,
        "resid"
    );
    // A read larger than the data-in buffer: OVERRUN.
    let (r, _) = d.scsi(virtio_lun(0), &[0x28, 0, 0, 0, 0, 9, 0, 0, 2, 0], &[], 512);
    assert_eq!(r[11], response::OVERRUN);
    // Another target, a malformed LUN, a LUN that does not exist.
    let mut other = virtio_lun(0);
    other[1] = 1;
    let (r, _) = d.scsi(other, &tur(), &[], 0);
    assert_eq!(r[11], response::BAD_TARGET);
    let (r, _) = d.scsi([1, 0, 0x40, 0, 1, 0, 0, 0], &tur(), &[], 0);
    assert_eq!(r[11], response::INCORRECT_LUN);
    let (r, _) = d.scsi(virtio_lun(7), &tur(), &[], 0);
    assert_eq!((r[10], r[11], r[12 + 12]), (2, 0, 0x25));
    // A chain too short for the request header: FAILURE, VM runs on.
    let w = d.post(queue::REQUEST, &[&[1, 0, 0x40]], &[RESP_HEADER]);
    d.notify(queue::REQUEST);
    assert_eq!(d.read(w[0], RESP_HEADER)[11], response::FAILURE);
    // No room for a response header: used with length 0.
    d.post(queue::REQUEST, &[&[0u8; REQ_HEADER]], &[10]);
    d.notify(queue::REQUEST);
    assert_eq!(d.used(queue::REQUEST).1, 0);
    assert_eq!(d.t.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn task_management() {
    let (t, _) = disk_target();
    let mut d = Driver::new(t);
    let _ = d.scsi(virtio_lun(0), &tur(), &[], 0);
    let tmf = |sub: u32, lun: [u8; 8]| {
        let mut b = vec![0u8; 24];
        b[4..8].copy_from_slice(&sub.to_le_bytes());
        b[8..16].copy_from_slice(&lun);
        b
    };
    for (sub, want) in [
        (control::ABORT_TASK, response::FUNCTION_COMPLETE),
        (control::I_T_NEXUS_RESET, response::FUNCTION_SUCCEEDED),
        (control::LOGICAL_UNIT_RESET, response::FUNCTION_COMPLETE),
        (control::CLEAR_ACA, response::FUNCTION_REJECTED),
        (99, response::FUNCTION_REJECTED),
    ] {
        let req = tmf(sub, virtio_lun(0));
        let w = d.post(queue::CONTROL, &[&req], &[1]);
        d.notify(queue::CONTROL);
        assert_eq!(d.read(w[0], 1)[0], want, "subtype {sub}");
    }
    // The LUN reset brought POWER ON back.
    let (r, _) = d.scsi(virtio_lun(0), &tur(), &[], 0);
    assert_eq!((r[10], r[12 + 12]), (2, 0x29));
    // AN query: no events supported; an unknown type fails.
    let mut an = vec![0u8; 16];
    an[0] = 1;
    let w = d.post(queue::CONTROL, &[&an], &[5]);
    d.notify(queue::CONTROL);
    assert_eq!(d.read(w[0], 5), vec![0, 0, 0, 0, 0]);
    let w = d.post(queue::CONTROL, &[&[7, 0, 0, 0]], &[1]);
    d.notify(queue::CONTROL);
    assert_eq!(d.read(w[0], 1)[0], response::FAILURE);
}

#[test]
fn hotplug_and_resize_events() {
    let (t, _) = disk_target();
    let mut d = Driver::new(t);
    let host = d.host.clone();
    let extra = tern_scsi::fuzzing::mem_disk(1 << 20, false);
    host.add_disk(3, DiskConfig::new(extra)).unwrap();
    // No event buffer yet: the event waits. The driver posts one.
    let w = d.post(queue::EVENT, &[], &[EVENT_LEN]);
    d.notify(queue::EVENT);
    let e = d.read(w[0], EVENT_LEN);
    assert_eq!(
        u32::from_le_bytes(e[0..4].try_into().unwrap()),
        event::TRANSPORT_RESET
    );
    assert_eq!(&e[4..12], &virtio_lun(3));
    assert_eq!(
        u32::from_le_bytes(e[12..16].try_into().unwrap()),
        event::RESET_RESCAN
    );
    // A buffer posted first, then the host resizes and kicks.
    let w = d.post(queue::EVENT, &[], &[EVENT_LEN]);
    d.notify(queue::EVENT);
    assert_eq!(d.used(queue::EVENT).0, 1, "nothing to deliver yet");
    host.resize(0, 2 << 20, &ResizePolicy::default()).unwrap();
    d.notify(queue::EVENT);
    let e = d.read(w[0], EVENT_LEN);
    assert_eq!(
        u32::from_le_bytes(e[0..4].try_into().unwrap()),
        event::PARAM_CHANGE
    );
    assert_eq!(u32::from_le_bytes(e[12..16].try_into().unwrap()), 0x092A);
    // Removal: REMOVED; the LUN answers LOGICAL UNIT NOT SUPPORTED.
    host.remove(3).unwrap();
    let w = d.post(queue::EVENT, &[], &[EVENT_LEN]);
    d.notify(queue::EVENT);
    let e = d.read(w[0], EVENT_LEN);
    assert_eq!(
        u32::from_le_bytes(e[12..16].try_into().unwrap()),
        event::RESET_REMOVED
    );
    let (r, _) = d.scsi(virtio_lun(3), &tur(), &[], 0);
    assert_eq!(r[12 + 12], 0x25);
    // Many events with no buffer: the oldest go, EVENTS_MISSED is set.
    for _ in 0..(MAX_PENDING_EVENTS + 3) {
        host.resize(0, 2 << 20, &ResizePolicy::default()).unwrap();
    }
    let w = d.post(queue::EVENT, &[], &[EVENT_LEN]);
    d.notify(queue::EVENT);
    let e = d.read(w[0], EVENT_LEN);
    assert_eq!(
        u32::from_le_bytes(e[0..4].try_into().unwrap()),
        event::PARAM_CHANGE | event::EVENTS_MISSED
    );
}

#[test]
fn held_event_buffers_and_the_initiator_survive_a_save() {
    let (t, _) = disk_target();
    let mut d = Driver::new(t.clone());
    // The driver posts a buffer; nothing to deliver yet: the device
    // holds it (off the ring).
    let w = d.post(queue::EVENT, &[], &[EVENT_LEN]);
    d.notify(queue::EVENT);
    assert_eq!(d.used(queue::EVENT).0, 0);
    let saved = d.host.save_events();
    assert_eq!(saved.buffers.len(), 1);
    assert_eq!(
        saved.nexus,
        NexusId::Virtio {
            vm: "test-vm".into(),
            controller: 0
        }
    );
    let transport = d.t.save();
    // A fresh device (another process) restored from both.
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let (dev, host) = Scsi::new(
        t,
        NexusId::Virtio {
            vm: "other".into(),
            controller: 0,
        },
    );
    let mut t2 = MmioTransport::new(Box::new(dev), d.mem.clone(), irq);
    t2.restore(&transport).unwrap();
    host.restore_events(&saved).unwrap();
    assert_eq!(host.nexus(), saved.nexus, "the saved initiator wins");
    // An event now lands in the buffer the old device took.
    host.media_changed(0, true);
    let _ = t2.process(queue::EVENT);
    let e = d.read(w[0], EVENT_LEN);
    assert_eq!(
        u32::from_le_bytes(e[0..4].try_into().unwrap()),
        event::PARAM_CHANGE
    );
    assert_eq!(u32::from_le_bytes(e[12..16].try_into().unwrap()), 0x28);
    // Another version, or more buffers than a queue holds: refused.
    let mut bad = saved.clone();
    bad.version = 9;
    assert!(host.restore_events(&bad).unwrap_err().contains("version 9"));
    let mut bad = saved;
    bad.buffers = vec![bad.buffers[0].clone(); QUEUE_SIZE as usize + 1];
    assert!(host.restore_events(&bad).is_err());
}
