//! Storage live migration on one host: move a running VM's disk image to
//! another directory (optionally converting raw <-> VHDX) while the guest
//! uses it. `storage-move` starts it (returns at once), `storage-move-status`
//! shows its progress, `storage-move-cancel` stops it (the VM stays on
//! the old image, the partial copy is removed).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::types::DiskFormat;

/// `storage-move`: copy disk `disk` into `to_dir` while the VM runs, then
/// put the device on the copy and remove the old image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageMove {
    /// Disk index (attach order).
    pub disk: usize,
    /// An existing directory for the new image (absolute path).
    pub to_dir: PathBuf,
    /// The new image's format (default: the disk's own). A new VHDX is
    /// dynamic; the same format keeps the block size and kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Most bytes per second the copy reads (absent or 0: no cap), to
    /// leave the guest its disk's bandwidth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
}

/// Reply to [`StorageMove`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageMoveReply {
    /// The image that is being made.
    pub target: PathBuf,
    /// [`StorageMovePhase::Setup`].
    pub phase: StorageMovePhase,
}

/// `storage-move-status`: progress of the current or last move.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageMoveStatus {}

/// `storage-move-cancel`: stop the running move; the VM stays on its old
/// image. Refused with [`ErrorCode::Conflict`](crate::ErrorCode::Conflict)
/// when none runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageMoveCancel {}

/// Where a storage move is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageMovePhase {
    /// This worker has not moved a disk.
    #[default]
    None,
    /// Creating the new image.
    Setup,
    /// Copying the allocated ranges.
    Copy,
    /// Copying what the guest wrote meanwhile, round by round.
    Dirty,
    /// Queue held: the last ranges, then the switch to the new image.
    Pivot,
    /// The VM runs on the new image.
    Completed,
    /// It failed; the VM runs on the old image.
    Failed,
    /// Cancelled; the VM runs on the old image.
    Cancelled,
}

impl StorageMovePhase {
    /// The phase as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageMovePhase::None => "none",
            StorageMovePhase::Setup => "setup",
            StorageMovePhase::Copy => "copy",
            StorageMovePhase::Dirty => "dirty",
            StorageMovePhase::Pivot => "pivot",
            StorageMovePhase::Completed => "completed",
            StorageMovePhase::Failed => "failed",
            StorageMovePhase::Cancelled => "cancelled",
        }
    }

    /// Whether the move has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            StorageMovePhase::Completed | StorageMovePhase::Failed | StorageMovePhase::Cancelled
        )
    }
}

/// Reply to [`StorageMoveStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageMoveProgress {
    /// Where it is.
    pub phase: StorageMovePhase,
    /// The disk.
    pub disk: usize,
    /// The image it ran on when the move started.
    pub source: PathBuf,
    /// The new image.
    pub target: PathBuf,
    /// Its format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Bytes the first pass copies (the allocated ranges).
    pub total_bytes: u64,
    /// Bytes copied so far, dirty rounds included.
    pub copied_bytes: u64,
    /// Dirty rounds completed.
    pub rounds: u32,
    /// What the guest wrote during the last round, bytes.
    pub dirty_bytes: u64,
    /// Since the start, ms.
    pub elapsed_ms: f64,
    /// How long the guest's requests were held at the pivot, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<f64>,
    /// The old image was removed (after the pivot). False with a
    /// completed move means it is still there: see `error`.
    pub old_removed: bool,
    /// What went wrong, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
