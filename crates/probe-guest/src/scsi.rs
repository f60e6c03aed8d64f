//! A polling virtio-scsi driver (virtio 1.2, §5.6) on the virtio-mmio
//! transport: one command at a time on the request queue, event buffers
//! kept posted on the event queue.
//!
//! It uses the device memory area the ABI reserves ([`DEVICE_MEM_BASE`]..
//! [`DATA_BASE`]), as the block driver does (one device at a time):
//! queue `q` at `DEVICE_MEM_BASE + q * 0x3000`, headers and event buffers
//! after them, data buffers from [`DATA_AREA`].

use crate::setup::{self, SetupError};
use crate::virtio::{reg, status, Buf, Mmio, QueueMem, SplitQueue, Timeout};
use core::fmt;
use core::hint::spin_loop;
use core::ptr;
use tern_probe_abi::{BootInfo, DATA_BASE, DEVICE_MEM_BASE, DEVICE_VIRTIO_SCSI};

/// Virtio device id of a SCSI host.
const DEVICE_ID_SCSI: u32 = 8;
/// Feature bits: hot-plug events, parameter-change events.
const F_HOTPLUG: u32 = 1;
const F_CHANGE: u32 = 2;
/// Entries per queue.
const QUEUE: u16 = 16;
/// Event buffers kept posted.
const EVENT_BUFS: u16 = 8;
/// Longest wait for the device.
pub const TIMEOUT_MS: u64 = 10_000;

const REQ_HDR: u64 = DEVICE_MEM_BASE + 0x9000;
const RESP_HDR: u64 = DEVICE_MEM_BASE + 0xA000;
const EVENTS: u64 = DEVICE_MEM_BASE + 0xB000;
/// Request header: lun 8, id 8, task_attr, prio, crn, cdb 32.
const REQ_LEN: u32 = 51;
/// Response header: sense_len 4, resid 4, status_qualifier 2, status,
/// response, sense 96.
const RESP_LEN: u32 = 108;
const EVENT_LEN: u32 = 16;
/// Start of the data buffers.
pub const DATA_AREA: u64 = DEVICE_MEM_BASE + 0x10000;
/// Size of the data area.
pub const DATA_AREA_LEN: u64 = DATA_BASE - DATA_AREA;

/// Why the driver gave up; shown as `reason=WORD` plus details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No virtio-scsi device in the boot info.
    NoDevice,
    /// The device could not be brought up.
    Setup(SetupError),
    /// The device set DEVICE_NEEDS_RESET.
    NeedsReset { status: u32 },
    /// The device did not answer in time.
    Timeout { what: &'static str },
    /// A used entry for a chain the driver did not submit.
    BadUsed { head: u32 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoDevice => write!(f, "reason=no-device"),
            Error::Setup(e) => e.fmt(f),
            Error::NeedsReset { status } => {
                write!(f, "reason=needs-reset device_status={status:#x}")
            }
            Error::Timeout { what } => write!(f, "reason=timeout waiting_for={what}"),
            Error::BadUsed { head } => write!(f, "reason=bad-used-entry head={head}"),
        }
    }
}

/// How a command ended.
impl From<SetupError> for Error {
    fn from(e: SetupError) -> Error {
        Error::Setup(e)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// virtio-scsi response code (0: OK, the command ran).
    pub response: u8,
    /// SCSI status (0 GOOD, 2 CHECK CONDITION, 0x18 RESERVATION CONFLICT).
    pub status: u8,
    /// Sense key, ASC, ASCQ (fixed or descriptor format), 0 without sense.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Its qualifier.
    pub ascq: u8,
    /// Data-in bytes the device wrote.
    pub data_len: u32,
}

impl Outcome {
    /// GOOD with response OK.
    pub fn good(&self) -> bool {
        self.response == 0 && self.status == 0
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "response={} status={:#04x} sense={:x}/{:02x}/{:02x}",
            self.response, self.status, self.key, self.asc, self.ascq
        )
    }
}

/// A virtio-scsi event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Event code (1 TRANSPORT_RESET, 3 PARAM_CHANGE; bit 31 missed).
    pub code: u32,
    /// The LUN it names.
    pub lun: u16,
    /// Reason (RESCAN 1, REMOVED 2; for PARAM_CHANGE ASC | ASCQ << 8).
    pub reason: u32,
}

/// Data to send or receive.
#[derive(Clone, Copy, Debug)]
pub enum Data {
    /// None.
    None,
    /// Data-out of `len` bytes at `addr`.
    Out { addr: u64, len: u32 },
    /// Data-in into `len` bytes at `addr`.
    In { addr: u64, len: u32 },
}

/// The driver.
pub struct Scsi {
    mmio: Mmio,
    /// Set up (the device has it) but unused: no task management.
    _control: SplitQueue,
    events: SplitQueue,
    request: SplitQueue,
    ticks_per_sec: u64,
}

fn qmem(q: u64) -> QueueMem {
    let base = DEVICE_MEM_BASE + q * 0x3000;
    QueueMem {
        desc: base,
        avail: base + 0x1000,
        used: base + 0x2000,
    }
}

impl Scsi {
    /// Finds the first virtio-scsi device in the boot info and brings it
    /// up (§3.1.1), with [`EVENT_BUFS`] event buffers posted.
    pub fn open(info: &BootInfo, ticks_per_sec: u64) -> Result<Scsi, Error> {
        let count = info.device_count.min(info.devices.len() as u32) as usize;
        let dev = info.devices[..count]
            .iter()
            .find(|d| d.kind == DEVICE_VIRTIO_SCSI)
            .ok_or(Error::NoDevice)?;
        let mmio = Mmio::new(dev.mmio_base);
        setup::begin(mmio, DEVICE_ID_SCSI, ticks_per_sec)?;
        let r = Self::init(mmio, ticks_per_sec);
        if r.is_err() {
            setup::fail(mmio);
        }
        r
    }

    fn init(mmio: Mmio, ticks_per_sec: u64) -> Result<Scsi, Error> {
        setup::negotiate(mmio, 1 << F_HOTPLUG | 1 << F_CHANGE)?;
        let mut qs: [Option<SplitQueue>; 3] = [None, None, None];
        for (q, slot) in qs.iter_mut().enumerate() {
            // SAFETY: the queue's three areas lie in the device memory
            // area the ABI reserves for drivers (0x3000 per queue, below
            // the headers at 0x9000); only this driver uses it, and the
            // device was reset, so it holds no old queue there.
            let (queue, _) = unsafe {
                setup::queue(mmio, q as u32, qmem(q as u64), QUEUE.into(), QUEUE.into())
            }?;
            *slot = Some(queue);
        }
        setup::driver_ok(mmio)?;
        let [Some(control), Some(events), Some(request)] = qs else {
            unreachable!("every queue was set up above");
        };
        let mut d = Scsi {
            mmio,
            _control: control,
            events,
            request,
            ticks_per_sec,
        };
        for i in 0..EVENT_BUFS {
            d.post_event(i);
        }
        d.mmio.write(reg::QUEUE_NOTIFY, 1);
        Ok(d)
    }

    fn post_event(&mut self, i: u16) {
        self.events.push(
            i,
            &[Buf {
                addr: EVENTS + u64::from(i) * 16,
                len: EVENT_LEN,
                device_writes: true,
            }],
        );
    }

    /// The next event the device delivered, if any (its buffer is posted
    /// again).
    pub fn poll_event(&mut self) -> Result<Option<Event>, Error> {
        let Some(u) = self.events.pop_used() else {
            return Ok(None);
        };
        if u.head >= u32::from(EVENT_BUFS) {
            return Err(Error::BadUsed { head: u.head });
        }
        let a = EVENTS + u64::from(u.head) * 16;
        // SAFETY: the event buffer is driver memory the device is done
        // with (its used entry was read with acquire ordering).
        let (code, lun_hi, lun_lo, reason) = unsafe {
            (
                ptr::read_volatile(a as *const u32),
                ptr::read_volatile((a + 6) as *const u8),
                ptr::read_volatile((a + 7) as *const u8),
                ptr::read_volatile((a + 12) as *const u32),
            )
        };
        let lun = u16::from(lun_hi & 0x3F) << 8 | u16::from(lun_lo);
        self.post_event(u.head as u16);
        self.mmio.write(reg::QUEUE_NOTIFY, 1);
        Ok(Some(Event {
            code: if u.len == 0 { 0 } else { code },
            lun,
            reason,
        }))
    }

    /// Runs one command on `lun` (flat-space address on target 0) and
    /// waits for it.
    pub fn command(&mut self, lun: u16, cdb: &[u8], data: Data) -> Result<Outcome, Error> {
        let mut req = [0u8; REQ_LEN as usize];
        req[0] = 1;
        req[2] = 0x40 | (lun >> 8) as u8 & 0x3F;
        req[3] = lun as u8;
        let n = cdb.len().min(32);
        req[19..19 + n].copy_from_slice(&cdb[..n]);
        // SAFETY: the header areas are driver memory no request in flight
        // uses (one command at a time).
        unsafe {
            ptr::copy_nonoverlapping(req.as_ptr(), REQ_HDR as *mut u8, req.len());
            ptr::write_bytes(RESP_HDR as *mut u8, 0xFF, RESP_LEN as usize);
        }
        let hdr = Buf {
            addr: REQ_HDR,
            len: REQ_LEN,
            device_writes: false,
        };
        let resp = Buf {
            addr: RESP_HDR,
            len: RESP_LEN,
            device_writes: true,
        };
        match data {
            Data::None => self.request.push(0, &[hdr, resp]),
            Data::Out { addr, len } => self.request.push(
                0,
                &[
                    hdr,
                    Buf {
                        addr,
                        len,
                        device_writes: false,
                    },
                    resp,
                ],
            ),
            Data::In { addr, len } => self.request.push(
                0,
                &[
                    hdr,
                    resp,
                    Buf {
                        addr,
                        len,
                        device_writes: true,
                    },
                ],
            ),
        }
        if !self.request.notify_suppressed() {
            self.mmio.write(reg::QUEUE_NOTIFY, 2);
        }
        let mut t = Timeout::ms(self.ticks_per_sec, TIMEOUT_MS);
        let used = loop {
            if let Some(u) = self.request.pop_used() {
                break u;
            }
            if t.expired() {
                let s = self.mmio.read(reg::STATUS);
                if s & status::DEVICE_NEEDS_RESET != 0 {
                    return Err(Error::NeedsReset { status: s });
                }
                return Err(Error::Timeout { what: "command" });
            }
            spin_loop();
        };
        if used.head != 0 {
            return Err(Error::BadUsed { head: used.head });
        }
        let mut r = [0u8; RESP_LEN as usize];
        // SAFETY: the response header is driver memory the device is done
        // with.
        unsafe { ptr::copy_nonoverlapping(RESP_HDR as *const u8, r.as_mut_ptr(), r.len()) };
        let sense_len = u32::from_le_bytes([r[0], r[1], r[2], r[3]]).min(96) as usize;
        let sense = &r[12..12 + sense_len];
        let (key, asc, ascq) = match sense.first().map(|b| b & 0x7F) {
            Some(0x70 | 0x71) if sense.len() >= 14 => (sense[2] & 0xF, sense[12], sense[13]),
            Some(0x72 | 0x73) if sense.len() >= 4 => (sense[1] & 0xF, sense[2], sense[3]),
            _ => (0, 0, 0),
        };
        Ok(Outcome {
            response: r[11],
            status: r[10],
            key,
            asc,
            ascq,
            data_len: used.len.saturating_sub(RESP_LEN),
        })
    }
}

impl Drop for Scsi {
    fn drop(&mut self) {
        self.mmio.write(reg::STATUS, 0);
    }
}
