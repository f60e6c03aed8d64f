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

mod host;
use self::host::Events;
pub use self::host::{EventBufferSaved, EventSaved, ScsiEventsSaved, ScsiHost};

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
mod tests;
