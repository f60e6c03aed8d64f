//! The virtio-scsi device (virtio 1.2, §5.6) over a [`tern_scsi::ScsiTarget`].
//!
//! One target (target 0) with LUNs 0..=[`MAX_LUN`]; queues: control, event,
//! one request queue. A request's CDB and data-out are read from the
//! driver's readable descriptors and handed to the target as the
//! controller's I_T nexus; its status, sense, residual and data-in go back
//! into the writable ones. Every number from the driver is checked: a
//! chain too short for the headers, a LUN address of another format or
//! target, or more data than [`MAX_DATA`] completes with a virtio-scsi
//! response code, never a panic, and the VM runs on.
//!
//! Host-side changes go through [`ScsiHost`]: hot add and remove of disks
//! and DVD drives (TRANSPORT_RESET events with RESCAN/REMOVED) and online
//! resize (a PARAM_CHANGE event with CAPACITY DATA HAS CHANGED), besides
//! the unit attentions the target raises. The device takes the driver's
//! event buffers off the ring as they come and fills them when an event
//! happens; after a change the caller kicks the transport
//! ([`super::mmio::MmioTransport::kick`]) so that happens at once. Those
//! held buffers and the undelivered events are not in the transport's
//! saved state: [`ScsiHost::save_events`] and [`ScsiHost::restore_events`]
//! carry them (and the initiator's name) across a save or migration.
//!
//! Every command completes before the request is used, so task management
//! has nothing in flight to abort: ABORT TASK (SET), CLEAR TASK SET and the
//! QUERY functions complete at once, the resets reset the LUN or this
//! controller's nexus,
//! CLEAR ACA is rejected (no ACA).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use tern_block::{BlockBackend, ResizePolicy};
use tern_scsi::{DiskConfig, DvdConfig, NexusId, ScsiTarget, TargetError};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::Bytes;

use super::{Mem, QueueOutcome, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

/// Virtio device id of a SCSI host.
pub const DEVICE_ID: u32 = 8;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 128;
/// CDB bytes in a request header.
pub const CDB_SIZE: usize = 32;
/// Sense bytes in a response header.
pub const SENSE_SIZE: usize = 96;
/// Highest LUN (flat space addressing).
pub const MAX_LUN: u16 = tern_scsi::target::MAX_LUN;
/// Most data-out or data-in bytes of one request (bounds what the device
/// allocates; above the target's block limits).
pub const MAX_DATA: usize = 16 << 20;
/// Most events kept while the driver has no event buffer.
pub const MAX_PENDING_EVENTS: usize = 64;

/// Request header: lun[8], id, task_attr, prio, crn, cdb.
const REQ_HEADER: usize = 8 + 8 + 3 + CDB_SIZE;
/// Response header: sense_len, resid, status_qualifier, status, response, sense.
const RESP_HEADER: usize = 4 + 4 + 2 + 1 + 1 + SENSE_SIZE;
/// An event: event, lun[8], reason.
const EVENT_LEN: usize = 16;

/// Queue indexes.
pub mod queue {
    /// Task management and asynchronous notification.
    pub const CONTROL: usize = 0;
    /// Events to the driver.
    pub const EVENT: usize = 1;
    /// The request queue.
    pub const REQUEST: usize = 2;
}

/// Feature bits (§5.6.3).
pub mod feature {
    #![allow(missing_docs)]
    pub const HOTPLUG: u32 = 1;
    pub const CHANGE: u32 = 2;
}

/// Response codes (§5.6.6.1).
pub mod response {
    #![allow(missing_docs)]
    pub const OK: u8 = 0;
    pub const OVERRUN: u8 = 1;
    pub const BAD_TARGET: u8 = 3;
    pub const FAILURE: u8 = 9;
    pub const FUNCTION_SUCCEEDED: u8 = 10;
    pub const FUNCTION_REJECTED: u8 = 11;
    pub const INCORRECT_LUN: u8 = 12;
    /// Task management: the function completed (same value as OK).
    pub const FUNCTION_COMPLETE: u8 = 0;
}

/// Control request types and task management functions (§5.6.6.2).
pub mod control {
    #![allow(missing_docs)]
    pub const TMF: u32 = 0;
    pub const AN_QUERY: u32 = 1;
    pub const AN_SUBSCRIBE: u32 = 2;
    pub const ABORT_TASK: u32 = 0;
    pub const ABORT_TASK_SET: u32 = 1;
    pub const CLEAR_ACA: u32 = 2;
    pub const CLEAR_TASK_SET: u32 = 3;
    pub const I_T_NEXUS_RESET: u32 = 4;
    pub const LOGICAL_UNIT_RESET: u32 = 5;
    pub const QUERY_TASK: u32 = 6;
    pub const QUERY_TASK_SET: u32 = 7;
}

/// Event codes (§5.6.6.3).
pub mod event {
    #![allow(missing_docs)]
    pub const TRANSPORT_RESET: u32 = 1;
    pub const PARAM_CHANGE: u32 = 3;
    pub const EVENTS_MISSED: u32 = 0x8000_0000;
    pub const RESET_RESCAN: u32 = 1;
    pub const RESET_REMOVED: u32 = 2;
}

/// The virtio LUN address of `lun` on target 0: byte 0 is 1, byte 1 the
/// target, bytes 2-3 the LUN in flat space format.
pub fn virtio_lun(lun: u16) -> [u8; 8] {
    [
        1,
        0,
        0x40 | ((lun >> 8) as u8 & 0x3F),
        lun as u8,
        0,
        0,
        0,
        0,
    ]
}

/// Why a LUN address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LunError {
    /// Another target, or not the virtio format.
    BadTarget,
    /// A LUN format this device does not address.
    IncorrectLun,
}

/// Decodes a virtio LUN address (peripheral or flat space, single level).
fn decode_lun(l: &[u8; 8]) -> Result<u16, LunError> {
    if l[0] != 1 || l[1] != 0 {
        return Err(LunError::BadTarget);
    }
    let mut sam = [0u8; 8];
    sam[..6].copy_from_slice(&l[2..]);
    tern_scsi::target::lun_from_sam(&sam).ok_or(LunError::IncorrectLun)
}

/// A pending event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Event {
    code: u32,
    lun: u16,
    reason: u32,
}

#[derive(Debug, Default)]
struct EventState {
    pending: VecDeque<Event>,
    /// Event buffers taken off the event queue, oldest first.
    buffers: VecDeque<EventBuffer>,
    /// The initiator this controller is to its target.
    nexus: Option<NexusId>,
    /// Events were dropped: the next one carries EVENTS_MISSED.
    missed: bool,
    /// What the driver accepted (events it did not ask for are not sent).
    hotplug: bool,
    change: bool,
}

/// Events shared between the device and its [`ScsiHost`].
#[derive(Debug, Default)]
struct Events(Mutex<EventState>);

impl Events {
    fn lock(&self) -> std::sync::MutexGuard<'_, EventState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, e: Event) {
        let mut s = self.lock();
        let wanted = match e.code {
            event::TRANSPORT_RESET => s.hotplug,
            _ => s.change,
        };
        if !wanted {
            return;
        }
        if s.pending.len() >= MAX_PENDING_EVENTS {
            s.pending.pop_front();
            s.missed = true;
        }
        s.pending.push_back(e);
    }
}

/// The host's side of a virtio-scsi controller: the target, and changes
/// that the driver must hear about. Call the transport's `kick` after a
/// change so the event is delivered.
#[derive(Clone)]
pub struct ScsiHost {
    target: Arc<ScsiTarget>,
    events: Arc<Events>,
}

impl ScsiHost {
    /// The target (for saved state, media, and direct inspection).
    pub fn target(&self) -> &Arc<ScsiTarget> {
        &self.target
    }

    /// The initiator this controller is (registrations are kept by it).
    pub fn nexus(&self) -> NexusId {
        self.events
            .lock()
            .nexus
            .clone()
            .unwrap_or_else(default_nexus)
    }

    /// The device's own state beyond the transport's: the initiator, the
    /// event buffers it holds and the events not yet delivered. Take it
    /// with the transport held (the VM paused).
    pub fn save_events(&self) -> ScsiEventsSaved {
        let s = self.events.lock();
        ScsiEventsSaved {
            version: ScsiEventsSaved::VERSION,
            nexus: s.nexus.clone().unwrap_or_else(default_nexus),
            pending: s
                .pending
                .iter()
                .map(|e| EventSaved {
                    code: e.code,
                    lun: e.lun,
                    reason: e.reason,
                })
                .collect(),
            missed: s.missed,
            buffers: s
                .buffers
                .iter()
                .map(|b| EventBufferSaved {
                    head: b.head,
                    parts: b.parts.clone(),
                })
                .collect(),
        }
    }

    /// Puts [`ScsiHost::save_events`]'s state back (after the transport's
    /// restore). Refuses another version and more buffers than a queue
    /// holds; buffer addresses are checked again when an event is written.
    pub fn restore_events(&self, saved: &ScsiEventsSaved) -> Result<(), String> {
        if saved.version != ScsiEventsSaved::VERSION {
            return Err(format!(
                "saved virtio-scsi event state version {} (this build reads {})",
                saved.version,
                ScsiEventsSaved::VERSION
            ));
        }
        if saved.buffers.len() > QUEUE_SIZE as usize || saved.pending.len() > MAX_PENDING_EVENTS {
            return Err(format!(
                "saved virtio-scsi state holds {} event buffers and {} events (at most {QUEUE_SIZE} and {MAX_PENDING_EVENTS})",
                saved.buffers.len(),
                saved.pending.len()
            ));
        }
        let mut s = self.events.lock();
        s.nexus = Some(saved.nexus.clone());
        s.missed = saved.missed;
        s.pending = saved
            .pending
            .iter()
            .map(|e| Event {
                code: e.code,
                lun: e.lun,
                reason: e.reason,
            })
            .collect();
        s.buffers = saved
            .buffers
            .iter()
            .map(|b| EventBuffer {
                head: b.head,
                parts: b.parts.clone(),
            })
            .collect();
        Ok(())
    }

    /// Queues a media-change notice for the driver (a DVD's medium was
    /// inserted or removed by the host): a PARAM_CHANGE event with
    /// MEDIUM MAY HAVE CHANGED (ASC 28h) or MEDIUM NOT PRESENT (3Ah).
    pub fn media_changed(&self, lun: u16, present: bool) {
        let asc: u32 = if present { 0x28 } else { 0x3A };
        self.events.push(Event {
            code: event::PARAM_CHANGE,
            lun,
            reason: asc,
        });
    }

    /// Hot-adds a disk at `lun`.
    pub fn add_disk(&self, lun: u16, cfg: DiskConfig) -> Result<(), TargetError> {
        self.target.add_disk(lun, cfg)?;
        self.rescan(lun);
        Ok(())
    }

    /// Hot-adds a DVD drive at `lun`.
    pub fn add_dvd(&self, lun: u16, cfg: DvdConfig) -> Result<(), TargetError> {
        self.target.add_dvd(lun, cfg)?;
        self.rescan(lun);
        Ok(())
    }

    fn rescan(&self, lun: u16) {
        self.events.push(Event {
            code: event::TRANSPORT_RESET,
            lun,
            reason: event::RESET_RESCAN,
        });
    }

    /// Hot-removes `lun`; returns its backend or medium.
    pub fn remove(&self, lun: u16) -> Result<Option<Arc<dyn BlockBackend>>, TargetError> {
        let b = self.target.remove(lun)?;
        self.events.push(Event {
            code: event::TRANSPORT_RESET,
            lun,
            reason: event::RESET_REMOVED,
        });
        Ok(b)
    }

    /// Resizes a disk online: CAPACITY DATA HAS CHANGED as a unit attention
    /// and as a PARAM_CHANGE event (reason: ASC 2Ah, ASCQ 09h).
    pub fn resize(
        &self,
        lun: u16,
        new_size: u64,
        policy: &ResizePolicy,
    ) -> Result<(), TargetError> {
        self.target.resize(lun, new_size, policy)?;
        self.events.push(Event {
            code: event::PARAM_CHANGE,
            lun,
            reason: 0x2A | (0x09 << 8),
        });
        Ok(())
    }
}

type R<'a> =
    Reader<'a, <vm_memory::bitmap::AtomicBitmap as vm_memory::bitmap::WithBitmapSlice<'a>>::S>;

/// A virtio-scsi device.
pub struct Scsi {
    target: Arc<ScsiTarget>,
    events: Arc<Events>,
}

/// The nexus of a controller that was never named (not reached: `new`
/// names it).
fn default_nexus() -> NexusId {
    NexusId::Virtio {
        vm: String::new(),
        controller: 0,
    }
}

/// A virtio-scsi device's own saved state (versioned, apart from the
/// runtime types): see [`ScsiHost::save_events`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiEventsSaved {
    /// Format version ([`ScsiEventsSaved::VERSION`]).
    pub version: u32,
    /// The initiator the controller is.
    pub nexus: NexusId,
    /// Events not yet delivered, oldest first.
    pub pending: Vec<EventSaved>,
    /// The next event carries EVENTS_MISSED.
    pub missed: bool,
    /// Event buffers taken off the ring, oldest first.
    pub buffers: Vec<EventBufferSaved>,
}

impl ScsiEventsSaved {
    /// The version this build writes and reads.
    pub const VERSION: u32 = 1;
}

/// A pending event, saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSaved {
    /// Event code.
    pub code: u32,
    /// The LUN.
    pub lun: u16,
    /// Reason.
    pub reason: u32,
}

/// A held event buffer, saved: its head and writable parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBufferSaved {
    /// Descriptor head.
    pub head: u16,
    /// (guest address, length) of each writable part.
    pub parts: Vec<(u64, u32)>,
}

impl Scsi {
    /// A controller over `target`; `nexus` names it as an initiator (for a
    /// VM: its id and the controller's index). Returns the host's handle.
    pub fn new(target: Arc<ScsiTarget>, nexus: NexusId) -> (Scsi, ScsiHost) {
        let events = Arc::new(Events::default());
        events.lock().nexus = Some(nexus);
        let host = ScsiHost {
            target: target.clone(),
            events: events.clone(),
        };
        (Scsi { target, events }, host)
    }

    fn config(&self) -> [u8; 36] {
        let mut c = [0u8; 36];
        let fields: [u32; 7] = [
            1,                       // num_queues
            QUEUE_SIZE as u32 - 2,   // seg_max
            (MAX_DATA / 512) as u32, // max_sectors
            QUEUE_SIZE as u32,       // cmd_per_lun
            EVENT_LEN as u32,        // event_info_size
            SENSE_SIZE as u32,       // sense_size
            CDB_SIZE as u32,         // cdb_size
        ];
        for (i, f) in fields.iter().enumerate() {
            c[i * 4..i * 4 + 4].copy_from_slice(&f.to_le_bytes());
        }
        // max_channel 0, max_target 0, max_lun.
        c[32..36].copy_from_slice(&(MAX_LUN as u32).to_le_bytes());
        c
    }

    fn nexus(&self) -> NexusId {
        self.events
            .lock()
            .nexus
            .clone()
            .unwrap_or_else(default_nexus)
    }

    /// Runs one request chain; returns the bytes written to the driver.
    fn request(&self, chain: virtio_queue::DescriptorChain<&Mem>, mem: &Mem) -> u32 {
        let Ok(mut w) = Writer::new(mem, chain.clone()) else {
            return 0;
        };
        if w.available_bytes() < RESP_HEADER {
            // Nowhere to put a response header.
            return 0;
        }
        let Ok(mut data_w) = w.split_at(RESP_HEADER) else {
            return 0;
        };
        let mut header = [0u8; RESP_HEADER];
        let mut data_len = 0usize;
        match Reader::new(mem, chain) {
            Err(_) => header[11] = response::FAILURE,
            Ok(mut r) => match self.run(&mut r, data_w.available_bytes()) {
                Err(code) => header[11] = code,
                Ok(rsp) => {
                    if data_w.write_all(&rsp.data_in).is_err() {
                        header[11] = response::FAILURE;
                    } else {
                        data_len = rsp.data_in.len();
                        let sense_len = rsp.sense.len().min(SENSE_SIZE);
                        header[0..4].copy_from_slice(&(sense_len as u32).to_le_bytes());
                        header[4..8].copy_from_slice(&rsp.resid.to_le_bytes());
                        header[10] = rsp.status;
                        header[11] = rsp.response;
                        header[12..12 + sense_len].copy_from_slice(&rsp.sense[..sense_len]);
                    }
                }
            },
        }
        if w.write_all(&header).is_err() {
            return 0;
        }
        (RESP_HEADER + data_len) as u32
    }

    /// Decodes and runs a request; a virtio response code when it cannot.
    fn run(&self, r: &mut R<'_>, data_in_room: usize) -> Result<Done, u8> {
        let mut hdr = [0u8; REQ_HEADER];
        r.read_exact(&mut hdr).map_err(|_| response::FAILURE)?;
        let mut lun = [0u8; 8];
        lun.copy_from_slice(&hdr[0..8]);
        let lun = decode_lun(&lun).map_err(|e| match e {
            LunError::BadTarget => response::BAD_TARGET,
            LunError::IncorrectLun => response::INCORRECT_LUN,
        })?;
        let cdb = &hdr[19..19 + CDB_SIZE];
        let out_len = r.available_bytes();
        if out_len > MAX_DATA {
            return Err(response::FAILURE);
        }
        let mut data_out = vec![0u8; out_len];
        r.read_exact(&mut data_out).map_err(|_| response::FAILURE)?;
        let data_in_len = data_in_room.min(MAX_DATA);
        let nexus = self.nexus();
        let rsp = self
            .target
            .execute(&nexus, lun, cdb, &data_out, data_in_len);
        // For a data-out command the residual is what was not consumed:
        // all of it unless the command succeeded.
        let resid = if out_len > 0 {
            if rsp.status == tern_scsi::Status::Good {
                0
            } else {
                out_len as u32
            }
        } else {
            rsp.residual
        };
        Ok(Done {
            status: rsp.status as u8,
            response: if rsp.overrun {
                response::OVERRUN
            } else {
                response::OK
            },
            resid,
            sense: rsp.sense,
            data_in: rsp.data_in,
        })
    }

    /// Runs one control chain; returns the bytes written.
    fn control(&self, chain: virtio_queue::DescriptorChain<&Mem>, mem: &Mem) -> u32 {
        let Ok(mut w) = Writer::new(mem, chain.clone()) else {
            return 0;
        };
        let Ok(mut r) = Reader::new(mem, chain) else {
            return 0;
        };
        let mut t = [0u8; 4];
        if r.read_exact(&mut t).is_err() {
            return 0;
        }
        let reply: Vec<u8> = match u32::from_le_bytes(t) {
            control::TMF => {
                let mut b = [0u8; 20];
                let code = if r.read_exact(&mut b).is_err() {
                    response::FAILURE
                } else {
                    let subtype = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    let mut lun = [0u8; 8];
                    lun.copy_from_slice(&b[4..12]);
                    self.tmf(subtype, &lun)
                };
                vec![code]
            }
            control::AN_QUERY | control::AN_SUBSCRIBE => {
                let mut b = [0u8; 12];
                let code = if r.read_exact(&mut b).is_err() {
                    response::FAILURE
                } else {
                    response::OK
                };
                // No asynchronous notifications: event_actual is 0.
                vec![0, 0, 0, 0, code]
            }
            _ => vec![response::FAILURE],
        };
        let n = reply.len().min(w.available_bytes());
        match w.write_all(&reply[..n]) {
            Ok(()) => n as u32,
            Err(_) => 0,
        }
    }

    fn tmf(&self, subtype: u32, lun: &[u8; 8]) -> u8 {
        let lun = match decode_lun(lun) {
            Ok(l) => l,
            Err(LunError::BadTarget) => return response::BAD_TARGET,
            Err(LunError::IncorrectLun) => return response::INCORRECT_LUN,
        };
        match subtype {
            control::ABORT_TASK
            | control::ABORT_TASK_SET
            | control::CLEAR_TASK_SET
            | control::QUERY_TASK
            | control::QUERY_TASK_SET => response::FUNCTION_COMPLETE,
            control::LOGICAL_UNIT_RESET => match self.target.reset_lun(lun) {
                Ok(()) => response::FUNCTION_COMPLETE,
                Err(_) => response::INCORRECT_LUN,
            },
            control::I_T_NEXUS_RESET => {
                self.target.reset_nexus(&self.nexus());
                response::FUNCTION_SUCCEEDED
            }
            _ => response::FUNCTION_REJECTED,
        }
    }

    /// Takes the driver's event buffers off the ring (kept until an event
    /// needs one: the ring must not be left with unconsumed entries), then
    /// fills them with pending events.
    fn deliver_events(&mut self, queue: &mut Queue, mem: &Mem, out: &mut QueueOutcome) {
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    out.broken = true;
                    return;
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let parts: Vec<(u64, u32)> = chain
                .clone()
                .filter(|d| d.is_write_only())
                .map(|d| (d.addr().0, d.len()))
                .collect();
            let mut s = self.events.lock();
            if s.buffers.len() >= QUEUE_SIZE as usize {
                // More buffers than the queue holds: a broken ring.
                out.broken = true;
                return;
            }
            s.buffers.push_back(EventBuffer { head, parts });
        }
        loop {
            let mut s = self.events.lock();
            let Some(e) = s.pending.front().copied() else {
                return;
            };
            let Some(buf) = s.buffers.pop_front() else {
                return;
            };
            let mut code = e.code;
            if s.missed {
                code |= event::EVENTS_MISSED;
            }
            let mut b = [0u8; EVENT_LEN];
            b[0..4].copy_from_slice(&code.to_le_bytes());
            b[4..12].copy_from_slice(&virtio_lun(e.lun));
            b[12..16].copy_from_slice(&e.reason.to_le_bytes());
            let len = if buf.write(mem, &b) {
                s.missed = false;
                s.pending.pop_front();
                EVENT_LEN as u32
            } else {
                // Too small or not in guest memory: used empty; the event
                // waits for the next buffer.
                s.missed = true;
                0
            };
            drop(s);
            if queue.add_used(mem, buf.head, len).is_err() {
                out.broken = true;
                return;
            }
            out.used = true;
        }
    }
}

/// An event buffer the driver posted: its head and writable parts.
#[derive(Debug)]
struct EventBuffer {
    head: u16,
    parts: Vec<(u64, u32)>,
}

impl EventBuffer {
    /// Writes `data` across the parts; false when it does not fit.
    fn write(&self, mem: &Mem, data: &[u8]) -> bool {
        let room: u64 = self.parts.iter().map(|p| p.1 as u64).sum();
        if room < data.len() as u64 {
            return false;
        }
        let mut rest = data;
        for &(addr, len) in &self.parts {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(len as usize);
            if mem
                .write_slice(&rest[..n], vm_memory::GuestAddress(addr))
                .is_err()
            {
                return false;
            }
            rest = &rest[n..];
        }
        true
    }
}

/// A completed request, for the response header.
struct Done {
    status: u8,
    response: u8,
    resid: u32,
    sense: Vec<u8>,
    data_in: Vec<u8>,
}

impl VirtioDevice for Scsi {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << feature::HOTPLUG
            | 1 << feature::CHANGE
    }

    fn ack_features(&mut self, features: u64) {
        let mut s = self.events.lock();
        s.hotplug = features & (1 << feature::HOTPLUG) != 0;
        s.change = features & (1 << feature::CHANGE) != 0;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| c.get(o as usize).copied())
                .unwrap_or(0);
        }
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &Mem) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        if index == queue::EVENT {
            self.deliver_events(queue, mem, &mut out);
            return out;
        }
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    out.broken = true;
                    return out;
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let len = if index == queue::CONTROL {
                self.control(chain, mem)
            } else {
                self.request(chain, mem)
            };
            if queue.add_used(mem, head, len).is_err() {
                out.broken = true;
                return out;
            }
            out.used = true;
        }
        out
    }

    fn reset(&mut self) {
        let mut s = self.events.lock();
        s.buffers.clear();
        s.pending.clear();
        s.missed = false;
    }
}

#[cfg(test)]
mod tests {
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
        fn scsi(
            &mut self,
            lun: [u8; 8],
            cdb: &[u8],
            out: &[u8],
            in_len: usize,
        ) -> (Vec<u8>, Vec<u8>) {
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
}
