//! Entry points fuzzers drive (`fuzz/`, and the stable fallback in this
//! module's tests): virtio-blk requests through the MMIO transport and
//! block device, from a guest that writes arbitrary descriptors, rings and
//! request headers. Any outcome but a panic (or a write outside guest
//! memory, which `vm-memory` would refuse) is fine.

use std::sync::{Arc, Mutex};

use tern_block::qos::{Clock, ManualClock, Qos, QosLimits};
use tern_block::{BlockBackend, BlockError, DiskFormat, ResizePolicy};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::virtio::block::{req, Block};
use crate::virtio::mmio::{reg, MmioTransport};
use crate::virtio::{status, Mem};

/// Guest memory of the fuzzed device.
const MEM_SIZE: u64 = 1 << 20;
/// The disk's size.
const DISK_SIZE: u64 = 64 << 10;
/// Queue size the fuzzed driver sets up.
const QSIZE: u16 = 16;
/// Where the driver puts its rings.
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Where the input's payload (headers, data) goes.
const PAYLOAD: u64 = 0x4000;

/// A disk in memory: the device's backend without files.
struct MemDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemDisk {
    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, BlockError> {
        let capacity = self.capacity();
        match offset.checked_add(len as u64) {
            Some(end) if end <= capacity => Ok(offset as usize..end as usize),
            _ => Err(BlockError::OutOfRange {
                offset,
                len: len as u64,
                capacity,
            }),
        }
    }
}

impl BlockBackend for MemDisk {
    fn capacity(&self) -> u64 {
        self.data.lock().unwrap_or_else(|p| p.into_inner()).len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn id(&self) -> &str {
        "fuzz-disk"
    }
    fn format(&self) -> DiskFormat {
        DiskFormat::Raw
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data.lock().unwrap_or_else(|p| p.into_inner())[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let r = self.range(offset, buf.len())?;
        self.data.lock().unwrap_or_else(|p| p.into_inner())[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let len = usize::try_from(len).map_err(|_| BlockError::OutOfRange {
            offset,
            len,
            capacity: self.capacity(),
        })?;
        let r = self.range(offset, len)?;
        self.data.lock().unwrap_or_else(|p| p.into_inner())[r].fill(0);
        Ok(())
    }
    fn resize(&self, _new_size: u64, _policy: &ResizePolicy) -> Result<(), BlockError> {
        Err(BlockError::ReadOnly)
    }
}

/// Reads little-endian fields off the front of the input; zeros once it
/// runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let n = N.min(self.0.len());
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        b
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Runs one fuzz input through a virtio-blk device. Layout: a flags byte
/// (bit 0: read-only disk; bit 1: negotiate without event indexes), then
/// 16 descriptors (addr u64, len u32, flags u16, next u16; addresses are
/// folded into guest memory and a little beyond), the avail ring's index
/// and up to 16 heads, and the rest as the payload the descriptors point
/// into (request headers, data, status bytes) at [`PAYLOAD`]. Returns the
/// used ring's index afterwards (requests the device completed).
pub fn virtio_blk(data: &[u8]) -> u16 {
    let mut input = Input(data);
    let flags = input.u8();
    let Ok(mem) = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]) else {
        return 0;
    };
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        return 0;
    };
    let disk = Arc::new(MemDisk {
        data: Mutex::new(vec![0x5a; DISK_SIZE as usize]),
        read_only: flags & 1 != 0,
    });
    let clock = Arc::new(ManualClock::default());
    let Ok(qos) = Qos::new(QosLimits::default(), clock as Arc<dyn Clock>) else {
        return 0;
    };
    let dev = Block::new(
        disk,
        Arc::new(Mutex::new(qos)),
        Box::new(|_| {}),
        Box::new(|_| {}),
    );
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq);

    // The driver's side of §3.1.1.
    w32(&mut t, reg::STATUS, 0);
    w32(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    for sel in [0, 1] {
        w32(&mut t, reg::DEVICE_FEATURES_SEL, sel);
        let mut f = r32(&mut t, reg::DEVICE_FEATURES);
        if sel == 0 && flags & 2 != 0 {
            f &= !(1 << crate::virtio::VIRTIO_RING_F_EVENT_IDX);
        }
        w32(&mut t, reg::DRIVER_FEATURES_SEL, sel);
        w32(&mut t, reg::DRIVER_FEATURES, f);
    }
    let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w32(&mut t, reg::STATUS, ok);
    w32(&mut t, reg::QUEUE_SEL, 0);
    w32(&mut t, reg::QUEUE_NUM, QSIZE as u32);
    for (lo, v) in [
        (reg::QUEUE_DESC_LOW, DESC),
        (reg::QUEUE_DRIVER_LOW, AVAIL),
        (reg::QUEUE_DEVICE_LOW, USED),
    ] {
        w32(&mut t, lo, v as u32);
        w32(&mut t, lo + 4, (v >> 32) as u32);
    }
    w32(&mut t, reg::QUEUE_READY, 1);
    w32(&mut t, reg::STATUS, ok | status::DRIVER_OK);

    // The descriptor table and the avail ring, as the input says.
    for i in 0..QSIZE as u64 {
        let addr = input.u64() % (MEM_SIZE + 0x2000);
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&input.u32().to_le_bytes());
        d[12..14].copy_from_slice(&input.u16().to_le_bytes());
        d[14..16].copy_from_slice(&input.u16().to_le_bytes());
        let _ = mem.write_slice(&d, GuestAddress(DESC + i * 16));
    }
    let avail_idx = input.u16();
    for i in 0..QSIZE as u64 {
        let _ = mem.write_obj(input.u16(), GuestAddress(AVAIL + 4 + 2 * i));
    }
    let _ = mem.write_obj(avail_idx, GuestAddress(AVAIL + 2));
    let payload = input.0;
    let n = payload.len().min((MEM_SIZE - PAYLOAD) as usize);
    let _ = mem.write_slice(&payload[..n], GuestAddress(PAYLOAD));

    // Twice: a second notify sees what the first left on the rings.
    for _ in 0..2 {
        w32(&mut t, reg::QUEUE_NOTIFY, 0);
        let _ = t.process(0);
    }
    let _ = r32(&mut t, reg::INTERRUPT_STATUS);
    let _ = t.save();
    let used = mem.read_obj(GuestAddress(USED + 2)).unwrap_or(0);
    w32(&mut t, reg::STATUS, 0);
    used
}

/// Valid inputs to start from: one request of each kind the device serves
/// (read, write, flush, get-id, discard, an unknown one) as a
/// header/data/status chain.
pub fn virtio_blk_seeds() -> Vec<Vec<u8>> {
    let kinds = [req::IN, req::OUT, req::FLUSH, req::GET_ID, req::DISCARD, 99];
    kinds
        .iter()
        .map(|&kind| {
            let mut v = vec![0u8];
            let hdr = PAYLOAD;
            let data = PAYLOAD + 0x100;
            let st = PAYLOAD + 0x1100;
            let (data_len, device_writes) = match kind {
                req::IN | req::GET_ID => (if kind == req::IN { 4096 } else { 20 }, true),
                req::DISCARD => (16, false),
                req::FLUSH => (0, false),
                _ => (512, false),
            };
            let mut descs = vec![(hdr, 16u32, 1u16, 1u16)];
            if data_len > 0 {
                descs.push((data, data_len, 1 | if device_writes { 2 } else { 0 }, 2));
            }
            let last = descs.len() as u16;
            descs.push((st, 1, 2, 0));
            if last == 1 {
                descs[0].3 = 1;
            }
            for i in 0..QSIZE as usize {
                let (a, l, f, n) = descs.get(i).copied().unwrap_or((0, 0, 0, 0));
                v.extend_from_slice(&a.to_le_bytes());
                v.extend_from_slice(&l.to_le_bytes());
                v.extend_from_slice(&f.to_le_bytes());
                v.extend_from_slice(&n.to_le_bytes());
            }
            v.extend_from_slice(&1u16.to_le_bytes());
            v.extend_from_slice(&[0u8; 2 * QSIZE as usize]);
            // Payload: the header (type, reserved, sector), then data.
            let mut payload = vec![0u8; 0x1200];
            payload[0..4].copy_from_slice(&kind.to_le_bytes());
            payload[8..16].copy_from_slice(&3u64.to_le_bytes());
            if kind == req::DISCARD {
                // One segment: sector 8, 16 sectors, no flags.
                payload[0x100..0x108].copy_from_slice(&8u64.to_le_bytes());
                payload[0x108..0x10c].copy_from_slice(&16u32.to_le_bytes());
            } else {
                payload[0x100..0x1100].fill(0xa5);
            }
            payload[0x1100] = 0xff;
            v.extend_from_slice(&payload);
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stable fallback: every seed, every prefix length of the first
    /// part of it, and single-byte changes all over.
    #[test]
    fn seeds_and_their_mutations_never_panic() {
        for seed in virtio_blk_seeds() {
            virtio_blk(&seed);
            for cut in (0..400.min(seed.len())).step_by(7) {
                virtio_blk(&seed[..cut]);
            }
            let mut m = seed.clone();
            for at in (0..m.len()).step_by(61) {
                for x in [0xff, 0x80, 0x01] {
                    m[at] ^= x;
                    virtio_blk(&m);
                    m[at] ^= x;
                }
            }
        }
    }

    #[test]
    fn every_seed_is_a_request_the_device_completes() {
        // Wrong layouts would make the fuzzer start from nothing.
        for (i, seed) in virtio_blk_seeds().iter().enumerate() {
            assert_eq!(virtio_blk(seed), 1, "seed {i}");
        }
        assert_eq!(virtio_blk(&[]), 0, "an empty avail ring");
    }
}
