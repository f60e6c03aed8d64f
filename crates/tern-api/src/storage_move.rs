//! Storage live migration: moving a running VM's disk image to another
//! directory on the same host (`POST /v1/vms/{vm}/disks/{disk}/move`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::limits;
use crate::types::{whole, DiskFormat};

/// Body of `POST /v1/vms/{vm}/disks/{disk}/move`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MoveDisk {
    /// The directory for the new image: absolute, inside one of the
    /// host's allowed disk directories, existing.
    #[schema(pattern = "^/")]
    pub to_dir: String,
    /// The new image's format (default: the disk's own; a new VHDX is
    /// dynamic).
    #[serde(default)]
    pub format: Option<DiskFormat>,
    /// Most bytes per second the copy reads (none: no cap).
    #[serde(default, deserialize_with = "whole::opt_u64")]
    #[schema(schema_with = bandwidth_schema)]
    pub bandwidth: Option<u64>,
}

fn bandwidth_schema() -> utoipa::openapi::schema::Schema {
    limits::optional_u64(
        1,
        limits::MAX_BW,
        "Most bytes per second the copy reads (none: no cap).",
    )
}

/// Where a disk move is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiskMoveState {
    /// Copying; the VM runs on the old image.
    Running,
    /// The VM runs on the new image; the registry records it.
    Completed,
    /// It failed; the VM runs on the old image, no partial copy is left.
    Failed,
    /// Cancelled; as failed.
    Cancelled,
}

/// A disk move's progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct DiskMove {
    /// The VM's name.
    pub vm: String,
    /// The disk's name.
    pub disk: String,
    /// State.
    pub state: DiskMoveState,
    /// The worker's phase: `setup`, `copy`, `dirty` (copying what the
    /// guest wrote meanwhile), `pivot`, or a final one.
    pub phase: String,
    /// The image the disk ran on.
    pub source: String,
    /// The new image.
    pub target: String,
    /// Bytes the first pass copies (the allocated ranges).
    pub total_bytes: u64,
    /// Bytes copied so far, rewritten ranges included.
    pub copied_bytes: u64,
    /// Rounds of copying rewritten ranges.
    pub rounds: u32,
    /// Since the start, ms.
    pub elapsed_ms: f64,
    /// How long the guest's requests waited at the switch, ms.
    pub held_ms: Option<f64>,
    /// The old image was removed.
    pub old_removed: bool,
    /// Why it failed (or why the old image was kept).
    pub error: Option<String>,
}
