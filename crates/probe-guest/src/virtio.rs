//! The virtio-mmio transport, version 2 (virtio 1.2, §4.2.2), and a split
//! virtqueue (§2.7), driven by polling: the probe runs with interrupts off
//! and watches the used ring instead.
//!
//! Register loads and stores are single 32-bit volatile accesses; under KVM
//! (PVM included) each one exits to the VMM as MMIO, so drivers keep them
//! out of tight loops. Ring memory is ordinary guest RAM the device reads
//! and writes from another thread: the two ring indexes are atomics (a
//! release store publishes the avail index, an acquire load reads the used
//! one), everything else is volatile, and a full fence separates publishing
//! from the notification check, as §2.7.13 asks.

use crate::clock;
use core::hint::spin_loop;
use core::ptr;
use core::sync::atomic::{fence, AtomicU16, Ordering};

/// Register offsets (§4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
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
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// "virt" in little-endian: [`reg::MAGIC_VALUE`].
pub const MAGIC: u32 = 0x7472_6976;

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Feature bit: a virtio 1.0+ device.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// A virtio-mmio register window.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// The window at guest-physical (= virtual) `base`.
    pub fn new(base: u64) -> Self {
        Mmio { base }
    }

    /// Reads the 32-bit register at `offset`.
    #[inline(always)]
    pub fn read(self, offset: u64) -> u32 {
        // SAFETY: `base` is a virtio-mmio window from the boot info, identity
        // mapped with the user bit; the access exits to the VMM, which
        // emulates it. Nothing in this program aliases it.
        unsafe { ptr::read_volatile((self.base + offset) as *const u32) }
    }

    /// Writes the 32-bit register at `offset`.
    #[inline(always)]
    pub fn write(self, offset: u64, value: u32) {
        // SAFETY: as in `read`.
        unsafe { ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// Writes a 64-bit value to a LOW/HIGH register pair (HIGH is LOW + 4).
    pub fn write64(self, low: u64, value: u64) {
        self.write(low, value as u32);
        self.write(low + 4, (value >> 32) as u32);
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read(reg::DEVICE_FEATURES);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read(reg::DEVICE_FEATURES);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// Tells the device which features the driver accepts.
    pub fn set_driver_features(self, features: u64) {
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// Reads the 32-bit config field at `offset` (no generation check).
    pub fn config32(self, offset: u64) -> u32 {
        self.read(reg::CONFIG + offset)
    }
}

/// A time budget, for bounding every wait on the device, that counts only
/// time the guest ran: the TSC keeps going while the VMM pauses the VM
/// (or saves it, or migrates it). [`clock::now`] takes out jumps of more
/// than a second (a restore on another host); below that, each step between
/// two looks counts for at most [`Timeout::MAX_STEP_MS`]. Call
/// [`Timeout::expired`] often (every spin of a poll loop).
#[derive(Clone, Copy, Debug)]
pub struct Timeout {
    last: u64,
    left: u64,
    max_step: u64,
}

impl Timeout {
    /// Longest step between two looks that counts in full.
    pub const MAX_STEP_MS: u64 = 100;

    /// A budget of `ms` milliseconds at `ticks_per_sec`, from now.
    pub fn ms(ticks_per_sec: u64, ms: u64) -> Self {
        let ticks = |ms: u64| {
            u64::try_from(u128::from(ticks_per_sec) * u128::from(ms) / 1000).unwrap_or(u64::MAX)
        };
        Timeout {
            last: clock::now(),
            left: ticks(ms),
            max_step: ticks(Self::MAX_STEP_MS).max(1),
        }
    }

    /// Charges the time since the last look; whether the budget is spent.
    #[inline(always)]
    pub fn expired(&mut self) -> bool {
        let now = clock::now();
        if now > self.last {
            self.left = self
                .left
                .saturating_sub((now - self.last).min(self.max_step));
        }
        self.last = now;
        self.left == 0
    }
}

/// Descriptor flag: the chain continues in `next`.
const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
const DESC_F_WRITE: u16 = 2;
/// Avail ring flag: the driver wants no used-buffer interrupts (it polls).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device wants no notifications now.
const USED_F_NO_NOTIFY: u16 = 1;

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (else it reads it).
    pub device_writes: bool,
}

/// An entry the device put on the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor of the chain (as the device wrote it: unchecked).
    pub head: u32,
    /// Bytes the device wrote into the chain.
    pub len: u32,
}

/// Memory for a split virtqueue: three areas the driver hands the device.
#[derive(Clone, Copy, Debug)]
pub struct QueueMem {
    /// Descriptor table (16-byte aligned, 16 bytes per entry).
    pub desc: u64,
    /// Available ring (2-byte aligned, 6 + 2 * size bytes).
    pub avail: u64,
    /// Used ring (4-byte aligned, 6 + 8 * size bytes).
    pub used: u64,
}

/// A split virtqueue the driver owns, on memory reserved for it.
pub struct SplitQueue {
    mem: QueueMem,
    size: u16,
    /// Next avail index to publish.
    avail_idx: u16,
    /// Used index seen so far.
    last_used: u16,
}

impl SplitQueue {
    /// A queue of `size` entries (a power of two) on `mem`, zeroed here.
    ///
    /// # Safety
    /// `mem`'s three areas must be identity-mapped RAM reserved for this
    /// queue, large enough for `size`, and not used by anything else for
    /// as long as the device may access them.
    pub unsafe fn new(mem: QueueMem, size: u16) -> Self {
        let s = usize::from(size);
        // SAFETY: the caller reserved the areas for this queue.
        unsafe {
            ptr::write_bytes(mem.desc as *mut u8, 0, 16 * s);
            ptr::write_bytes(mem.avail as *mut u8, 0, 6 + 2 * s);
            ptr::write_bytes(mem.used as *mut u8, 0, 6 + 8 * s);
        }
        let q = SplitQueue {
            mem,
            size,
            avail_idx: 0,
            last_used: 0,
        };
        q.write16(mem.avail, AVAIL_F_NO_INTERRUPT);
        q
    }

    #[inline(always)]
    fn write16(&self, addr: u64, v: u16) {
        // SAFETY: `addr` lies in one of the queue's areas (`new`'s contract),
        // 2-byte aligned by the layout of the split ring.
        unsafe { ptr::write_volatile(addr as *mut u16, v) }
    }

    #[inline(always)]
    fn read16(&self, addr: u64) -> u16 {
        // SAFETY: as in `write16`.
        unsafe { ptr::read_volatile(addr as *const u16) }
    }

    /// The ring index at `addr` as an atomic: the device is, to this
    /// program, another thread, and the index is what synchronizes with it.
    #[inline(always)]
    fn index(&self, addr: u64) -> &AtomicU16 {
        // SAFETY: `addr` is the idx field of the avail or used ring, in the
        // queue's areas (`new`'s contract), 2-byte aligned; the areas live
        // as long as the queue, and the device's accesses are single
        // 16-bit ones, as atomic as ours.
        unsafe { AtomicU16::from_ptr(addr as *mut u16) }
    }

    #[inline(always)]
    fn read32(&self, addr: u64) -> u32 {
        // SAFETY: as in `write16`, 4-byte aligned.
        unsafe { ptr::read_volatile(addr as *const u32) }
    }

    /// Writes descriptors `head..head + bufs.len()` as one chain and makes
    /// it available. The caller keeps chains apart (each owns its
    /// descriptor range) and the buffers untouched until the chain is used.
    pub fn push(&mut self, head: u16, bufs: &[Buf]) {
        debug_assert!(!bufs.is_empty());
        debug_assert!(usize::from(head) + bufs.len() <= usize::from(self.size));
        for (i, b) in bufs.iter().enumerate() {
            let idx = head + i as u16;
            let mut flags = if b.device_writes { DESC_F_WRITE } else { 0 };
            let next = if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
                idx + 1
            } else {
                0
            };
            let d = self.mem.desc + u64::from(idx) * 16;
            // SAFETY: descriptor `idx` is inside the table (`idx < size`)
            // and owned by this chain, which the device does not hold now.
            unsafe {
                ptr::write_volatile(d as *mut u64, b.addr);
                ptr::write_volatile((d + 8) as *mut u32, b.len);
                ptr::write_volatile((d + 12) as *mut u16, flags);
                ptr::write_volatile((d + 14) as *mut u16, next);
            }
        }
        let slot = u64::from(self.avail_idx % self.size);
        self.write16(self.mem.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: the descriptors and the ring entry before the index
        // (§2.7.13).
        self.index(self.mem.avail + 2)
            .store(self.avail_idx, Ordering::Release);
    }

    /// Whether the device asks not to be notified now (§2.7.10).
    pub fn notify_suppressed(&self) -> bool {
        // The avail index store before the flags load (§2.7.13.4).
        fence(Ordering::SeqCst);
        self.read16(self.mem.used) & USED_F_NO_NOTIFY != 0
    }

    /// The next used entry, if the device added one.
    #[inline(always)]
    pub fn pop_used(&mut self) -> Option<Used> {
        // Acquire: the index load before the entry's (and the buffers')
        // loads.
        let idx = self.index(self.mem.used + 2).load(Ordering::Acquire);
        if idx == self.last_used {
            return None;
        }
        let e = self.mem.used + 4 + 8 * u64::from(self.last_used % self.size);
        let id = self.read32(e);
        let len = self.read32(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        Some(Used { head: id, len })
    }
}

/// Spins until `f` returns true or `timeout` is spent; whether `f` did.
pub fn spin_until(mut timeout: Timeout, mut f: impl FnMut() -> bool) -> bool {
    loop {
        if f() {
            return true;
        }
        if timeout.expired() {
            return false;
        }
        spin_loop();
    }
}
