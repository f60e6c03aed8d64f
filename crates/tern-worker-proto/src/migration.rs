//! Live migration requests, progress and outcome.

use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;

/// `migrate`: start moving the VM to a worker waiting with `--incoming`
/// (returns at once; poll [`MigrateStatus`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migrate {
    /// Destination.
    pub to: Endpoint,
    /// Data channels (0: one per CPU).
    #[serde(default)]
    pub channels: u32,
    /// Codec choice (default auto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Downtime target, ms (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Bandwidth cap, bytes/s (0 or absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    /// Give up (or switch over, see `timeout_action`) after this many
    /// seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// What the timeout does (default cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_action: Option<TimeoutAction>,
    /// Throttle the vCPUs when precopy does not converge (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_converge: Option<bool>,
    /// Mirror the disks to the destination (shared-nothing: no shared
    /// storage; the destination creates them in its `dest_dir`). The
    /// source keeps its images.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_storage: bool,
}

impl Migrate {
    /// A migration to `to` with every option at its default.
    pub fn to(to: Endpoint) -> Self {
        Migrate {
            to,
            channels: 0,
            compression: None,
            downtime_ms: None,
            bandwidth: None,
            timeout_s: None,
            timeout_action: None,
            auto_converge: None,
            with_storage: false,
        }
    }
}

/// How pages are compressed on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// Chosen and re-chosen from the measured link and CPU speeds.
    #[default]
    Auto,
    /// Uncompressed.
    #[serde(alias = "none")]
    Off,
    /// LZ4.
    Lz4,
    /// zstd.
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Compression::Auto),
            "off" | "none" => Ok(Compression::Off),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            o => Err(format!(
                "unknown compression '{o}' (expected auto, off, lz4 or zstd)"
            )),
        }
    }
}

/// What a migration's timeout does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeoutAction {
    /// Give up; the VM runs on here.
    #[default]
    Cancel,
    /// Pause and move the rest, however long the downtime.
    #[serde(alias = "force")]
    Switchover,
}

impl std::str::FromStr for TimeoutAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cancel" => Ok(TimeoutAction::Cancel),
            "switchover" | "force" => Ok(TimeoutAction::Switchover),
            o => Err(format!(
                "unknown timeout action '{o}' (expected cancel or switchover)"
            )),
        }
    }
}

/// Reply to [`Migrate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateReply {
    /// [`MigrationPhase::Setup`].
    pub phase: MigrationPhase,
}

/// `migrate-status`: progress of the current or last migration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateStatus {}

/// `migrate-cancel`: stop the running migration; the VM keeps running
/// here. Refused with [`ErrorCode::Conflict`](crate::ErrorCode::Conflict)
/// when none runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateCancel {}

/// Where a migration is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationPhase {
    /// This worker has not migrated.
    #[default]
    None,
    /// Connecting and handshaking.
    Setup,
    /// Copying memory while the VM runs.
    Precopy,
    /// VM paused: last pages, vCPU and device state.
    Switchover,
    /// The destination runs the VM.
    Completed,
    /// It failed (see [`MigrationStatus::outcome`]).
    Failed,
    /// Cancelled by the user or the timeout; the VM runs here.
    Cancelled,
}

impl MigrationPhase {
    /// The phase as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::None => "none",
            MigrationPhase::Setup => "setup",
            MigrationPhase::Precopy => "precopy",
            MigrationPhase::Switchover => "switchover",
            MigrationPhase::Completed => "completed",
            MigrationPhase::Failed => "failed",
            MigrationPhase::Cancelled => "cancelled",
        }
    }

    /// Whether the migration has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationPhase::Completed | MigrationPhase::Failed | MigrationPhase::Cancelled
        )
    }
}

/// How a migration ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationOutcome {
    /// The destination runs the VM; this worker stops.
    Completed,
    /// It failed before the switchover was committed; the VM is here
    /// (running unless [`MigrationStatus::paused_here`]).
    Failed,
    /// Cancelled (user or timeout); the VM is here as before.
    Cancelled,
    /// The source committed the switchover and never heard that the
    /// destination runs the VM: it may. The VM stays paused here, its
    /// disks released; resume it only if the destination does not run it.
    Unconfirmed,
}

/// Reply to [`MigrateStatus`]: a snapshot of the progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrationStatus {
    /// Where it is.
    pub phase: MigrationPhase,
    /// How it ended; set together with a final phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<MigrationOutcome>,
    /// After the end: the VM is paused at this worker and does not run on
    /// by itself (an unconfirmed commit, or its disks could not be taken
    /// back, or it was paused before).
    pub paused_here: bool,
    /// Guest memory, bytes.
    pub memory_bytes: u64,
    /// Bytes put on the wire so far (all channels, after compression).
    pub bytes_sent: u64,
    /// Guest pages sent (zero pages included).
    pub pages_sent: u64,
    /// Of those, zero pages (sent as a bit).
    pub zero_pages: u64,
    /// Precopy rounds completed.
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
    /// Codec in use (`off`, `lz4`, `zstd`; empty before the first page).
    pub compression: String,
    /// Data channels.
    pub channels: u32,
    /// Auto-converge throttle, percent of time the vCPUs are held.
    pub throttle_percent: u32,
    /// Since the start, ms.
    pub elapsed_ms: f64,
    /// Measured pause (stopped here to running there), once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<f64>,
    /// Same-host memfd hand-over.
    pub zero_copy: bool,
    /// The migration protocol version both workers agreed on (0 before
    /// the handshake, and from workers that do not report it).
    pub protocol: u32,
    /// Mirrored disks: bytes the first pass copies (allocated at the
    /// source); 0 without `with_storage`.
    pub disk_total: u64,
    /// Mirrored disks: bytes sent so far (all rounds).
    pub disk_sent: u64,
    /// Mirrored disks: bytes written by the guest since the last round.
    pub disk_remaining: u64,
    /// What went wrong, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
