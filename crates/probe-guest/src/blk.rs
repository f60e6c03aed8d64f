//! A polling virtio-blk driver (virtio 1.2, §5.2) on the virtio-mmio
//! transport.
//!
//! One device is driven at a time, on the device memory area the ABI
//! reserves ([`DEVICE_MEM_BASE`]..[`DATA_BASE`]): the split queue and the
//! per-request headers and status bytes at its start, I/O buffers in the
//! rest ([`DATA_AREA`]). A request ("slot" `i`) owns descriptors
//! `3i..3i+3` (header, data, status), so a queue of `n` entries carries
//! `n / 3` requests at once. Dropping the [`Blk`] resets the device, after
//! which the memory may serve another one.
//!
//! Every wait is bounded ([`TIMEOUT_MS`] of the guest's own running time,
//! by the TSC, see [`Timeout`]): a device that stops answering becomes
//! [`Error::Timeout`], never a hang, and a VM paused meanwhile does not.

use crate::clock;
use crate::setup::{self, SetupError};
use crate::virtio::{reg, status, Buf, Mmio, QueueMem, SplitQueue, Timeout, INT_CONFIG};
use core::fmt;
use core::hint::spin_loop;
use core::ptr;
use tern_probe_abi::blk::SECTOR_SIZE;
use tern_probe_abi::{BootInfo, DATA_BASE, DEVICE_MEM_BASE, DEVICE_VIRTIO_BLK};

/// Virtio device id of a block device.
const DEVICE_ID_BLOCK: u32 = 2;

/// Feature bits (§5.2.3).
pub mod feature {
    pub const RO: u32 = 5;
    pub const BLK_SIZE: u32 = 6;
    pub const FLUSH: u32 = 9;
    pub const DISCARD: u32 = 13;
}

/// Request types.
mod req {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
}

/// Request status: success.
pub const S_OK: u8 = 0;
/// Request status: I/O error.
pub const S_IOERR: u8 = 1;
/// Request status: unsupported request.
pub const S_UNSUPP: u8 = 2;
/// What the driver puts in the status byte before submitting: a device
/// that completes a request without writing its status leaves it there.
pub const S_NONE: u8 = 0xff;

/// Longest wait for the device (a request, a reset) before giving up.
pub const TIMEOUT_MS: u64 = 10_000;
/// Largest queue the driver sets up (the table fills one page).
const MAX_QUEUE: u32 = 256;
/// Most requests in flight: three descriptors each.
pub const MAX_SLOTS: usize = MAX_QUEUE as usize / 3;

const DESC_AREA: u64 = DEVICE_MEM_BASE;
const AVAIL_AREA: u64 = DEVICE_MEM_BASE + 0x1000;
const USED_AREA: u64 = DEVICE_MEM_BASE + 0x2000;
/// Request headers, 16 bytes per slot.
const HEADERS: u64 = DEVICE_MEM_BASE + 0x3000;
/// Status bytes, one per slot.
const STATUSES: u64 = DEVICE_MEM_BASE + 0x4000;
/// Discard segments (16 bytes) and GET_ID answers (20 bytes): 32 per slot.
const SMALL_BUFS: u64 = DEVICE_MEM_BASE + 0x5000;
/// Start of the I/O buffer area.
pub const DATA_AREA: u64 = DEVICE_MEM_BASE + 0x10000;
/// Size of the I/O buffer area.
pub const DATA_AREA_LEN: u64 = DATA_BASE - DATA_AREA;

const _: () = assert!(16 * MAX_QUEUE as u64 <= AVAIL_AREA - DESC_AREA);
const _: () = assert!(6 + 8 * MAX_QUEUE as u64 <= HEADERS - USED_AREA);
const _: () = assert!(SMALL_BUFS + 32 * MAX_SLOTS as u64 <= DATA_AREA);

/// Why the driver gave up; shown as `reason=WORD` plus details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The boot info lists no device with this index.
    NoDevice { count: u32 },
    /// The device at this index is not a virtio-blk device (boot info kind).
    NotBlock { kind: u32 },
    /// The device could not be brought up.
    Setup(SetupError),
    /// The device set DEVICE_NEEDS_RESET (it judged the driver wrong).
    NeedsReset { status: u32 },
    /// The device did not answer in time.
    Timeout { what: &'static str },
    /// The device put a chain on the used ring the driver did not submit.
    BadUsed { head: u32 },
    /// A request completed with a status other than OK.
    Io { status: u8, sector: u64 },
    /// The workload would write to a read-only device.
    ReadOnly,
    /// The workload needs DISCARD, which the device does not offer.
    DiscardUnsupported,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoDevice { count } => write!(f, "reason=no-device devices={count}"),
            Error::NotBlock { kind } => write!(f, "reason=not-block kind={kind}"),
            Error::Setup(e) => e.fmt(f),
            Error::NeedsReset { status } => {
                write!(f, "reason=needs-reset device_status={status:#x}")
            }
            Error::Timeout { what } => write!(f, "reason=timeout waiting_for={what}"),
            Error::BadUsed { head } => write!(f, "reason=bad-used-entry head={head}"),
            Error::Io { status, sector } => {
                let word = match status {
                    S_IOERR => "ioerr",
                    S_UNSUPP => "unsupported",
                    S_NONE => "no-status",
                    _ => "bad-status",
                };
                write!(f, "reason={word} status={status} sector={sector}")
            }
            Error::ReadOnly => write!(f, "reason=read-only"),
            Error::DiscardUnsupported => write!(f, "reason=discard-unsupported"),
        }
    }
}

impl From<SetupError> for Error {
    fn from(e: SetupError) -> Error {
        Error::Setup(e)
    }
}

/// A request.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Read `len` bytes at `sector` into `addr`.
    Read { sector: u64, addr: u64, len: u32 },
    /// Write `len` bytes from `addr` at `sector`.
    Write { sector: u64, addr: u64, len: u32 },
    /// Make completed writes durable.
    Flush,
    /// Discard `sectors` sectors from `sector` (one segment).
    Discard { sector: u64, sectors: u32 },
    /// The device's id string (20 bytes into the slot's small buffer).
    GetId,
}

impl Op {
    fn sector(&self) -> u64 {
        match *self {
            Op::Read { sector, .. } | Op::Write { sector, .. } | Op::Discard { sector, .. } => {
                sector
            }
            Op::Flush | Op::GetId => 0,
        }
    }
}

/// A completed request.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    /// The slot it ran in (free again now).
    pub slot: usize,
    /// The status byte the device wrote ([`S_OK`] and so on).
    pub status: u8,
    /// Bytes the device said it wrote into the chain.
    pub len: u32,
}

/// A virtio-blk device ready for requests. Reset when dropped.
pub struct Blk {
    mmio: Mmio,
    queue: SplitQueue,
    features: u64,
    ticks_per_sec: u64,
    slots: usize,
    /// Bit `i`: slot `i` is in flight.
    busy: u128,
    /// The sector each slot's request started at, for error reports.
    sectors: [u64; MAX_SLOTS],
}

impl Blk {
    /// Finds disk `disk` in the boot info and brings it up (§3.1.1).
    /// `ticks_per_sec` bounds every wait.
    pub fn open(info: &BootInfo, disk: u64, ticks_per_sec: u64) -> Result<Blk, Error> {
        let count = info.device_count.min(info.devices.len() as u32);
        let dev = usize::try_from(disk)
            .ok()
            .filter(|&d| d < count as usize)
            .map(|d| info.devices[d])
            .ok_or(Error::NoDevice { count })?;
        if dev.kind != DEVICE_VIRTIO_BLK {
            return Err(Error::NotBlock { kind: dev.kind });
        }
        let mmio = Mmio::new(dev.mmio_base);
        setup::begin(mmio, DEVICE_ID_BLOCK, ticks_per_sec)?;
        let result = Self::init(mmio, ticks_per_sec);
        if result.is_err() {
            setup::fail(mmio);
        }
        result
    }

    fn init(mmio: Mmio, ticks_per_sec: u64) -> Result<Blk, Error> {
        let usable =
            1 << feature::RO | 1 << feature::BLK_SIZE | 1 << feature::FLUSH | 1 << feature::DISCARD;
        let wanted = setup::negotiate(mmio, usable)?;
        let mem = QueueMem {
            desc: DESC_AREA,
            avail: AVAIL_AREA,
            used: USED_AREA,
        };
        // SAFETY: the three areas lie in the device memory area the ABI
        // reserves for drivers, sized for MAX_QUEUE entries (asserted
        // above); only this driver uses it, one device at a time, and the
        // device was reset, so it holds no old queue there.
        let (queue, size) = unsafe { setup::queue(mmio, 0, mem, MAX_QUEUE, 4) }?;
        let size = u32::from(size);
        setup::driver_ok(mmio)?;
        Ok(Blk {
            mmio,
            queue,
            features: wanted,
            ticks_per_sec,
            slots: (size / 3) as usize,
            busy: 0,
            sectors: [0; MAX_SLOTS],
        })
    }

    /// Whether feature `bit` was negotiated.
    pub fn has(&self, bit: u32) -> bool {
        self.features & 1 << bit != 0
    }

    /// The device is read-only (VIRTIO_BLK_F_RO).
    pub fn read_only(&self) -> bool {
        self.has(feature::RO)
    }

    /// Requests the queue carries at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.busy.count_ones()
    }

    /// The register window.
    pub fn mmio(&self) -> Mmio {
        self.mmio
    }

    /// (ConfigGeneration, capacity in bytes), read consistently (§4.2.2.2:
    /// again until the generation did not change across the read).
    pub fn config(&self) -> Result<(u32, u64), Error> {
        let mut timeout = self.timeout();
        loop {
            let g = self.mmio.read(reg::CONFIG_GENERATION);
            let lo = self.mmio.config32(0);
            let hi = self.mmio.config32(4);
            if self.mmio.read(reg::CONFIG_GENERATION) == g {
                let sectors = u64::from(hi) << 32 | u64::from(lo);
                return Ok((g, sectors.saturating_mul(SECTOR_SIZE)));
            }
            if timeout.expired() {
                return Err(Error::Timeout { what: "config" });
            }
        }
    }

    /// ConfigGeneration alone (one register read).
    pub fn config_generation(&self) -> u32 {
        self.mmio.read(reg::CONFIG_GENERATION)
    }

    /// Acknowledges a configuration-change interrupt; whether one was set.
    pub fn ack_config_interrupt(&self) -> bool {
        let pending = self.mmio.read(reg::INTERRUPT_STATUS) & INT_CONFIG != 0;
        if pending {
            self.mmio.write(reg::INTERRUPT_ACK, INT_CONFIG);
        }
        pending
    }

    /// The largest discard segment the device takes, in sectors.
    pub fn max_discard_sectors(&self) -> u32 {
        // §5.2.4: max_discard_sectors at offset 36.
        self.mmio.config32(36).max(1)
    }

    /// A free slot among the first `limit`, if any.
    pub fn free_slot(&self, limit: usize) -> Option<usize> {
        let slot = (!self.busy).trailing_zeros() as usize;
        (slot < limit.min(self.slots)).then_some(slot)
    }

    /// Address of slot `slot`'s 32-byte buffer (the GET_ID answer).
    pub fn small_buf(slot: usize) -> u64 {
        SMALL_BUFS + 32 * slot as u64
    }

    /// Submits `op` in free slot `slot` (not yet notified: see [`Blk::kick`]).
    /// The data buffer must stay untouched until the request completes.
    pub fn submit(&mut self, slot: usize, op: Op) {
        assert!(
            slot < self.slots && self.busy & 1 << slot == 0,
            "slot {slot} is not free"
        );
        let hdr = HEADERS + 16 * slot as u64;
        let st = STATUSES + slot as u64;
        let small = Self::small_buf(slot);
        let (kind, data) = match op {
            Op::Read { addr, len, .. } => (
                req::IN,
                Some(Buf {
                    addr,
                    len,
                    device_writes: true,
                }),
            ),
            Op::Write { addr, len, .. } => (
                req::OUT,
                Some(Buf {
                    addr,
                    len,
                    device_writes: false,
                }),
            ),
            Op::Flush => (req::FLUSH, None),
            Op::Discard { sector, sectors } => {
                // SAFETY: the slot's small buffer is reserved driver memory
                // (see the layout above) that the device does not hold now.
                unsafe {
                    ptr::write_volatile(small as *mut u64, sector);
                    ptr::write_volatile((small + 8) as *mut u32, sectors);
                    // flags: no unmap, no write-zeroes.
                    ptr::write_volatile((small + 12) as *mut u32, 0);
                }
                (
                    req::DISCARD,
                    Some(Buf {
                        addr: small,
                        len: 16,
                        device_writes: false,
                    }),
                )
            }
            Op::GetId => (
                req::GET_ID,
                Some(Buf {
                    addr: small,
                    len: 20,
                    device_writes: true,
                }),
            ),
        };
        // The header's sector is 0 for requests without one (§5.2.6).
        let sector = match op {
            Op::Read { sector, .. } | Op::Write { sector, .. } => sector,
            _ => 0,
        };
        // SAFETY: the slot's header and status byte are reserved driver
        // memory that the device does not hold while the slot is free.
        unsafe {
            ptr::write_volatile(hdr as *mut u32, kind);
            ptr::write_volatile((hdr + 4) as *mut u32, 0);
            ptr::write_volatile((hdr + 8) as *mut u64, sector);
            ptr::write_volatile(st as *mut u8, S_NONE);
        }
        let header = Buf {
            addr: hdr,
            len: 16,
            device_writes: false,
        };
        let status = Buf {
            addr: st,
            len: 1,
            device_writes: true,
        };
        let head = (3 * slot) as u16;
        match data {
            Some(d) => self.queue.push(head, &[header, d, status]),
            None => self.queue.push(head, &[header, status]),
        }
        self.busy |= 1 << slot;
        self.sectors[slot] = op.sector();
    }

    /// Notifies the device of what was submitted (unless it asked not to be).
    pub fn kick(&mut self) {
        if !self.queue.notify_suppressed() {
            self.mmio.write(reg::QUEUE_NOTIFY, 0);
        }
    }

    /// A completed request, if there is one.
    #[inline]
    pub fn poll(&mut self) -> Result<Option<Done>, Error> {
        let Some(used) = self.queue.pop_used() else {
            return Ok(None);
        };
        let slot = (used.head / 3) as usize;
        if used.head % 3 != 0 || slot >= self.slots || self.busy & 1 << slot == 0 {
            return Err(Error::BadUsed { head: used.head });
        }
        self.busy &= !(1 << slot);
        // SAFETY: the slot's status byte is driver memory; the device is
        // done with it (the used entry was read after an acquire fence).
        let status = unsafe { ptr::read_volatile((STATUSES + slot as u64) as *const u8) };
        Ok(Some(Done {
            slot,
            status,
            len: used.len,
        }))
    }

    /// A fresh budget of [`TIMEOUT_MS`] of the guest's running time.
    pub fn timeout(&self) -> Timeout {
        Timeout::ms(self.ticks_per_sec, TIMEOUT_MS)
    }

    /// Waits for a completion (there must be a request in flight), at most
    /// [`TIMEOUT_MS`]; fails early if the device needs a reset.
    pub fn wait(&mut self) -> Result<Done, Error> {
        debug_assert!(self.busy != 0, "nothing in flight");
        let mut stall = self.timeout();
        // With no end of its own, only the timeout ends the wait.
        self.wait_until(u64::MAX, &mut stall)?
            .ok_or(Error::Timeout { what: "request" })
    }

    /// Like [`Blk::wait`], but also returns `None` once the TSC reaches
    /// `until` with nothing completed (for callers that keep time), and
    /// charges the wait to `stall`, which the caller renews when it sees
    /// progress.
    pub fn wait_until(&mut self, until: u64, stall: &mut Timeout) -> Result<Option<Done>, Error> {
        let mut check = Timeout::ms(self.ticks_per_sec, 100);
        loop {
            if let Some(d) = self.poll()? {
                return Ok(Some(d));
            }
            if clock::now() >= until {
                return Ok(None);
            }
            if stall.expired() {
                return Err(Error::Timeout { what: "request" });
            }
            if check.expired() {
                let s = self.mmio.read(reg::STATUS);
                if s & status::DEVICE_NEEDS_RESET != 0 {
                    return Err(Error::NeedsReset { status: s });
                }
                check = Timeout::ms(self.ticks_per_sec, 100);
            }
            spin_loop();
        }
    }

    /// The sector slot `slot`'s request started at.
    pub fn sector_of(&self, slot: usize) -> u64 {
        self.sectors[slot]
    }

    /// Turns a completion into an error unless its status is OK.
    pub fn check(&self, done: Done) -> Result<Done, Error> {
        if done.status == S_OK {
            Ok(done)
        } else {
            Err(Error::Io {
                status: done.status,
                sector: self.sector_of(done.slot),
            })
        }
    }

    /// Runs one request alone (nothing else may be in flight).
    pub fn run(&mut self, op: Op) -> Result<Done, Error> {
        debug_assert_eq!(self.busy, 0);
        self.submit(0, op);
        self.kick();
        let done = self.wait()?;
        self.check(done)
    }

    /// FLUSH if the device offers it (a no-op otherwise).
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.has(feature::FLUSH) {
            self.run(Op::Flush)?;
        }
        Ok(())
    }

    /// The device's id string (GET_ID; up to 20 bytes, NUL-padded).
    pub fn id(&mut self) -> Result<[u8; 20], Error> {
        let done = self.run(Op::GetId)?;
        let mut id = [0u8; 20];
        let n = (done.len.saturating_sub(1) as usize).min(20);
        for (i, b) in id.iter_mut().enumerate().take(n) {
            // SAFETY: slot 0's small buffer is driver memory the device
            // finished writing (the request completed).
            *b = unsafe { ptr::read_volatile((Self::small_buf(0) + i as u64) as *const u8) };
        }
        Ok(id)
    }
}

impl Drop for Blk {
    fn drop(&mut self) {
        // Stops the device using the queue memory; a device that does not
        // confirm within the timeout is left as it is.
        let _ = setup::reset(self.mmio, self.ticks_per_sec);
    }
}
