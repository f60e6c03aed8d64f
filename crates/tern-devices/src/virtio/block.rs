//! The virtio-blk device (virtio 1.2, §5.2) over a [`BlockBackend`].
//!
//! Requests: IN, OUT, FLUSH, GET_ID and DISCARD. Every descriptor the
//! driver hands over is untrusted: addresses are resolved through guest
//! memory (an unmapped one fails the request), lengths are checked against
//! the disk's current end, data moves in bounded chunks (a huge descriptor
//! cannot make the VMM allocate without bound), and a bad request completes
//! with VIRTIO_BLK_S_IOERR while the VM runs on.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tern_block::qos::{Admit, Qos, QosEvent};
use tern_block::{BlockBackend, SECTOR_SIZE};
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};

use super::{Mem, QueueOutcome, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

/// Virtio device id of a block device.
pub const DEVICE_ID: u32 = 2;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest piece of a request moved at once (the bounce buffer's size).
pub const CHUNK: usize = 1 << 20;
/// Most discard segments in one request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Most sectors in one discard segment.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Length of `GET_ID`'s answer.
pub const ID_BYTES: usize = 20;

/// Feature bits (§5.2.3).
pub mod feature {
    #![allow(missing_docs)]
    pub const SEG_MAX: u32 = 2;
    pub const RO: u32 = 5;
    pub const BLK_SIZE: u32 = 6;
    pub const FLUSH: u32 = 9;
    pub const DISCARD: u32 = 13;
}

/// Request types.
pub mod req {
    #![allow(missing_docs)]
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
}

/// Status values.
pub mod status {
    #![allow(missing_docs)]
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// Counters a VMM can show.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Requests completed (any status).
    pub requests: AtomicU64,
    /// Requests completed with IOERR.
    pub errors: AtomicU64,
    /// Bytes read by the guest.
    pub read_bytes: AtomicU64,
    /// Bytes written by the guest.
    pub write_bytes: AtomicU64,
    /// Times a request waited for a QoS maximum.
    pub throttled: AtomicU64,
}

/// A virtio-blk device.
pub struct Block {
    backend: Arc<dyn BlockBackend>,
    qos: Arc<Mutex<Qos>>,
    on_event: Box<dyn Fn(QosEvent) + Send>,
    stats: Arc<BlockStats>,
    buf: Vec<u8>,
    /// Kind of the last failure reported (see `log_error`).
    last_error: Option<String>,
    last_logged: Option<std::time::Instant>,
    suppressed: u64,
    on_error: Box<dyn Fn(&str) + Send>,
}

type R<'a> =
    Reader<'a, <vm_memory::bitmap::AtomicBitmap as vm_memory::bitmap::WithBitmapSlice<'a>>::S>;
type W<'a> =
    Writer<'a, <vm_memory::bitmap::AtomicBitmap as vm_memory::bitmap::WithBitmapSlice<'a>>::S>;

/// Why a request failed (rate-limited in the log; the guest sees IOERR).
fn io_error(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Block {
    /// A device over `backend`, throttled by `qos`; `on_event` receives QoS
    /// events, `on_error` a line for each failed request.
    pub fn new(
        backend: Arc<dyn BlockBackend>,
        qos: Arc<Mutex<Qos>>,
        on_event: Box<dyn Fn(QosEvent) + Send>,
        on_error: Box<dyn Fn(&str) + Send>,
    ) -> Self {
        Block {
            backend,
            qos,
            on_event,
            stats: Arc::default(),
            buf: Vec::new(),
            last_error: None,
            last_logged: None,
            suppressed: 0,
            on_error,
        }
    }

    /// Reports a failed request without flooding the log: a new kind of
    /// failure (the message with its numbers left out, so each sector does
    /// not count as new) is reported at once; repeats at most once a
    /// second, with how many were left out.
    fn log_error(&mut self, e: String) {
        let kind: String = e.chars().filter(|c| !c.is_ascii_digit()).collect();
        let now = std::time::Instant::now();
        let new_kind = self.last_error.as_deref() != Some(kind.as_str());
        let due = self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1));
        if new_kind || due {
            if self.suppressed > 0 {
                (self.on_error)(&format!("{e} (and {} more like it)", self.suppressed));
            } else {
                (self.on_error)(&e);
            }
            self.suppressed = 0;
            self.last_error = Some(kind);
            self.last_logged = Some(now);
        } else {
            self.suppressed += 1;
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    fn config(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        let sectors = self.backend.capacity() / SECTOR_SIZE;
        c[0..8].copy_from_slice(&sectors.to_le_bytes());
        // size_max (8) unused: requests are split internally.
        c[12..16].copy_from_slice(&(QUEUE_SIZE as u32 - 2).to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[44..48].copy_from_slice(&8u32.to_le_bytes());
        c
    }

    fn lock_qos(&self) -> std::sync::MutexGuard<'_, Qos> {
        self.qos.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `sector` and `len` against the disk; the byte offset.
    fn range(&self, sector: u64, len: u64) -> Result<u64, String> {
        let cap = self.backend.capacity();
        let off = sector
            .checked_mul(SECTOR_SIZE)
            .filter(|o| o.checked_add(len).is_some_and(|e| e <= cap))
            .ok_or_else(|| {
                format!("sector {sector} + {len} bytes is beyond the disk's end ({cap} bytes)")
            })?;
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(format!("length {len} is not a multiple of {SECTOR_SIZE}"));
        }
        Ok(off)
    }

    fn read_into(&mut self, w: &mut W<'_>, off: u64, len: u64) -> Result<(), String> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            self.buf.resize(n, 0);
            self.backend
                .read_at(&mut self.buf[..n], off + done)
                .map_err(|e| error_chain(&e))?;
            w.write_all(&self.buf[..n]).map_err(io_error)?;
            done += n as u64;
        }
        self.stats.read_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn write_from(&mut self, r: &mut R<'_>, off: u64, len: u64) -> Result<(), String> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            self.buf.resize(n, 0);
            r.read_exact(&mut self.buf[..n]).map_err(io_error)?;
            self.backend
                .write_at(&self.buf[..n], off + done)
                .map_err(|e| error_chain(&e))?;
            done += n as u64;
        }
        self.stats.write_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn discard(&mut self, r: &mut R<'_>) -> Result<(), String> {
        let n = r.available_bytes();
        if n == 0 || !n.is_multiple_of(16) || n / 16 > MAX_DISCARD_SEG as usize {
            return Err(format!(
                "discard payload of {n} bytes is not 1..={MAX_DISCARD_SEG} segments"
            ));
        }
        for _ in 0..n / 16 {
            let mut seg = [0u8; 16];
            r.read_exact(&mut seg).map_err(io_error)?;
            let sector = u64::from_le_bytes(seg[0..8].try_into().expect("8 bytes"));
            let count = u32::from_le_bytes(seg[8..12].try_into().expect("4 bytes"));
            if count > MAX_DISCARD_SECTORS {
                return Err(format!(
                    "discard of {count} sectors exceeds {MAX_DISCARD_SECTORS}"
                ));
            }
            let len = count as u64 * SECTOR_SIZE;
            let off = self.range(sector, len)?;
            self.backend
                .discard(off, len)
                .map_err(|e| error_chain(&e))?;
        }
        Ok(())
    }

    /// Executes one request; returns (status, bytes written to the guest
    /// before the status byte).
    fn execute(&mut self, kind: u32, sector: u64, r: &mut R<'_>, w: &mut W<'_>) -> (u8, u32) {
        let res = match kind {
            req::IN => {
                let len = w.available_bytes() as u64;
                self.range(sector, len)
                    .and_then(|off| self.read_into(w, off, len))
                    .map(|()| len as u32)
            }
            req::OUT if self.backend.read_only() => Err("write to a read-only disk".into()),
            req::OUT => {
                let len = r.available_bytes() as u64;
                self.range(sector, len)
                    .and_then(|off| self.write_from(r, off, len))
                    .map(|()| 0)
            }
            req::FLUSH => self
                .backend
                .flush()
                .map(|()| 0)
                .map_err(|e| error_chain(&e)),
            req::GET_ID => {
                let mut id = [0u8; ID_BYTES];
                let s = self.backend.id().as_bytes();
                let n = s.len().min(ID_BYTES);
                id[..n].copy_from_slice(&s[..n]);
                let n = w.available_bytes().min(ID_BYTES);
                w.write_all(&id[..n]).map(|()| n as u32).map_err(io_error)
            }
            req::DISCARD if self.backend.read_only() => Err("discard on a read-only disk".into()),
            req::DISCARD => self.discard(r).map(|()| 0),
            _ => return (status::UNSUPP, 0),
        };
        match res {
            Ok(n) => (status::OK, n),
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.log_error(e);
                (status::IOERR, w.bytes_written() as u32)
            }
        }
    }

    /// Handles one chain; returns the used length, or `None` when QoS says
    /// wait (nothing consumed).
    fn handle(
        &mut self,
        chain: virtio_queue::DescriptorChain<&Mem>,
        mem: &Mem,
    ) -> Result<u32, std::time::Duration> {
        let Ok(mut w) = Writer::new(mem, chain.clone()) else {
            // No usable writable part: there is nowhere to put a status.
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Ok(0);
        };
        let avail = w.available_bytes();
        if avail == 0 {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Ok(0);
        }
        let Ok(mut st) = w.split_at(avail - 1) else {
            return Ok(0);
        };
        let mut r = match Reader::new(mem, chain) {
            Ok(r) => r,
            Err(_) => return Ok(self.finish(&mut st, status::IOERR, 0)),
        };
        let mut hdr = [0u8; 16];
        if r.read_exact(&mut hdr).is_err() {
            return Ok(self.finish(&mut st, status::IOERR, 0));
        }
        let kind = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
        let bytes = match kind {
            req::IN => w.available_bytes() as u64,
            req::OUT => r.available_bytes() as u64,
            _ => 0,
        };
        if let Admit::Wait(d) = self.lock_qos().admit(bytes) {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(d);
        }
        let (s, n) = self.execute(kind, sector, &mut r, &mut w);
        Ok(self.finish(&mut st, s, n))
    }

    fn finish(&mut self, st: &mut W<'_>, s: u8, data: u32) -> u32 {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        match st.write_all(&[s]) {
            Ok(()) => data + 1,
            Err(_) => data,
        }
    }
}

use tern_error::chain as error_chain;

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << feature::SEG_MAX
            | 1 << feature::BLK_SIZE
            | 1 << feature::FLUSH;
        if self.backend.read_only() {
            f |= 1 << feature::RO;
        } else {
            f |= 1 << feature::DISCARD;
        }
        f
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

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &Mem) -> QueueOutcome {
        let mut out = QueueOutcome::default();
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    out.broken = true;
                    return out;
                }
            };
            let Some(chain) = chain else {
                // The transport re-arms notifications (inline or polling).
                break;
            };
            let head = chain.head_index();
            match self.handle(chain, mem) {
                Ok(len) => {
                    if queue.add_used(mem, head, len).is_err() {
                        out.broken = true;
                        return out;
                    }
                    out.used = true;
                }
                Err(wait) => {
                    // Leave the request on the ring for the retry.
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    out.retry_after = Some(wait);
                    break;
                }
            }
        }
        out
    }

    fn tick(&mut self) {
        let ev = self.lock_qos().tick();
        if let Some(ev) = ev {
            (self.on_event)(ev);
        }
    }

    fn reset(&mut self) {
        self.last_error = None;
        self.suppressed = 0;
    }
}
