//! Progress of an outgoing migration, shared with the control socket, and
//! its cancel switch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Where a migration is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Connecting and handshaking.
    #[default]
    Setup,
    /// Copying memory while the VM runs.
    Precopy,
    /// VM paused: last pages, vCPU and device state.
    Switchover,
    /// The destination runs the VM.
    Completed,
    /// Failed; the VM runs here as before.
    Failed,
    /// Cancelled (by the user or the timeout); the VM runs here as before.
    Cancelled,
}

impl Phase {
    /// Whether the migration has ended.
    pub fn done(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Cancelled)
    }
}

/// A snapshot of a migration's progress.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Snapshot {
    /// Where it is.
    pub phase: Phase,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// Bytes put on the wire so far (all channels, after compression).
    pub bytes_sent: u64,
    /// Guest pages sent (zero pages included).
    pub pages_sent: u64,
    /// Of those, zero pages (sent as a bit, no data).
    pub zero_pages: u64,
    /// Precopy rounds completed (round 1 copies all memory).
    pub rounds: u32,
    /// Guest dirty rate, bytes/s (last round).
    pub dirty_rate: f64,
    /// Link throughput measured, wire bytes/s.
    pub bandwidth: f64,
    /// Dirty memory still to send, bytes.
    pub remaining_bytes: u64,
    /// Estimated time to send it, ms.
    pub estimated_remaining_ms: f64,
    /// Expected pause if switching over now, ms.
    pub expected_downtime_ms: f64,
    /// Codec in use.
    pub compression: String,
    /// Data channels.
    pub channels: u32,
    /// Auto-converge throttle, percent of time the vCPUs are held.
    pub throttle_percent: u32,
    /// Since the start, ms.
    pub elapsed_ms: f64,
    /// Measured pause (VM stopped at the source to running at the
    /// destination), once completed.
    pub downtime_ms: Option<f64>,
    /// Same-host memfd hand-over.
    pub zero_copy: bool,
    /// The protocol version both ends agreed on (0 before the handshake).
    pub protocol: u32,
    /// Mirrored disks (shared-nothing): bytes the first pass copies (the
    /// allocated part of every disk).
    pub disk_total: u64,
    /// Bytes of disk sent so far (all rounds; zero ranges count).
    pub disk_sent: u64,
    /// Bytes of disk written since the last round, still to send.
    pub disk_remaining: u64,
    /// What went wrong.
    pub error: Option<String>,
}

/// Shared progress and cancel switch.
#[derive(Debug, Default)]
pub struct Progress {
    snap: Mutex<Snapshot>,
    cancel: AtomicBool,
}

impl Progress {
    /// A copy of the current progress.
    pub fn snapshot(&self) -> Snapshot {
        self.snap.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the progress.
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.snap.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Asks the migration to stop; the VM keeps running here.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether cancel was asked.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}
