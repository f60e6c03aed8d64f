//! The requests about the VM, its disks, its console and its saved states,
//! each with its reply. Hello is in [`crate::hello`], migration in
//! [`crate::migration`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::types::{DiskFormat, QosLimits, VmState};

/// Most bytes one [`ConsoleInput`] request may carry.
pub const MAX_CONSOLE_INPUT: usize = 4096;

/// An empty success reply (`{"ok":true}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {}

/// `status`: VM state, disks and probe progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {}

/// Reply to [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// Run state.
    pub state: VmState,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory, bytes.
    pub memory: u64,
    /// The worker's process id.
    pub pid: u32,
    /// The disks, in the guest's order.
    #[serde(default)]
    pub disks: Vec<DiskStatus>,
    /// The SCSI controller's LUNs (absent from workers without SCSI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scsi: Vec<ScsiLunStatus>,
    /// The probe guest's progress (probe guests only, once readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeStatus>,
}

/// One disk in a [`StatusReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    /// The image the disk runs on now (checkpoints move it).
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Attached read-only.
    #[serde(rename = "readonly")]
    pub read_only: bool,
    /// Current size, bytes.
    pub capacity: u64,
    /// Limits in force.
    pub qos: QosLimits,
    /// Requests completed.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Times a request waited for a QoS maximum.
    pub throttled: u64,
    /// Bytes the guest read (0 from workers that predate the field).
    #[serde(default)]
    pub read_bytes: u64,
    /// Bytes the guest wrote (0 from workers that predate the field).
    #[serde(default)]
    pub write_bytes: u64,
}

/// The probe guest's status page, as [`StatusReply::probe`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeStatus {
    /// The probe has written its status page.
    pub started: bool,
    /// Its phase.
    pub phase: u32,
    /// Index of the workload step it runs.
    pub step: u32,
    /// Generation counter of the dirty workload.
    pub generation: u64,
    /// Position in its working set.
    pub cursor: u64,
    /// Pages in its working set.
    pub pages: u64,
    /// Touch rounds completed.
    pub touch_rounds: u64,
    /// Last command acknowledged.
    pub command_ack: u32,
    /// vCPUs checked in.
    pub checked_in: u32,
    /// virtio-blk capacity the probe sees, bytes.
    pub blk_capacity: u64,
    /// Capacity changes the probe saw.
    pub blk_capacity_changes: u32,
    /// End of the disk range the probe uses, bytes.
    pub blk_in_use_end: u64,
}

/// A reply that only says the VM's state after the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReply {
    /// Run state after the request.
    pub state: VmState,
}

/// `pause`: pause every vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {}

/// `resume`: resume after a pause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {}

/// `shutdown`: stop the VM; the worker exits after the reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {}

/// `power-button`: press the guest's ACPI power button; an ACPI-aware
/// guest shuts down and the worker ends with the power-off status. Linux
/// guests only (a probe guest answers `conflict`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerButton {}

/// `reports`: every probe report so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reports {}

/// Reply to [`Reports`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportsReply {
    /// Report lines, oldest first.
    pub reports: Vec<String>,
}

/// `probe-stop`: end the probe's open-ended step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStop {}

/// `probe-touch`: ask the probe's `touch` step for a round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTouch {
    /// Round number (must increase).
    pub round: u64,
}

/// `disk-qos`: change a disk's limits now; an omitted limit stays, 0
/// removes one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskQos {
    /// Disk index (attach order).
    pub disk: usize,
    /// Most normalized IOPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iops: Option<u64>,
    /// Reserved normalized IOPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_iops: Option<u64>,
    /// Most bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bw: Option<u64>,
}

/// Reply to [`DiskQos`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskQosReply {
    /// Disk index.
    pub disk: usize,
    /// Limits now in force.
    pub qos: QosLimits,
}

/// `disk-resize`: grow or shrink a disk of the running VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskResize {
    /// Disk index.
    pub disk: usize,
    /// New size, bytes (a multiple of 512).
    pub size: u64,
}

/// Reply to [`DiskResize`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskResizeReply {
    /// Disk index.
    pub disk: usize,
    /// New size, bytes.
    pub capacity: u64,
}

/// `events`: QoS events so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Events {}

/// Reply to [`Events`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsReply {
    /// Events, oldest first.
    pub events: Vec<DiskEvent>,
}

/// A QoS event of one disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEvent {
    /// Sequence number (increasing).
    pub seq: u64,
    /// Milliseconds since the worker started.
    pub time_ms: u64,
    /// Disk index.
    pub disk: usize,
    /// What happened.
    pub event: QosEventKind,
    /// The reservation.
    pub min_iops: u64,
    /// What was measured.
    pub measured_iops: u64,
}

/// What a [`DiskEvent`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QosEventKind {
    /// The disk got less than its reserved IOPS while busy.
    MinIopsNotMet,
    /// It gets its reservation again.
    MinIopsRestored,
}

/// `console-input`: bytes typed on the guest's serial port (at most
/// [`MAX_CONSOLE_INPUT`]); a guest that does not take them within a second
/// fails the request with [`ErrorCode::Timeout`](crate::ErrorCode::Timeout).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleInput {
    /// The bytes, in order.
    pub bytes: Vec<u8>,
}

/// Reply to [`ConsoleInput`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleInputReply {
    /// Bytes the guest took.
    pub accepted: usize,
}

/// `save`: pause, write state and memory into `dir`, stop the worker
/// after the reply. On failure the VM runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Save {
    /// Absolute path of a new (or empty) directory.
    pub dir: PathBuf,
}

/// Reply to [`Save`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaveReply {
    /// [`VmState::Saved`].
    pub state: VmState,
    /// The directory written.
    pub dir: PathBuf,
    /// Guest memory, bytes.
    pub memory: u64,
    /// Memory bytes actually written (zero pages are holes).
    pub memory_written: u64,
    /// Time to pause the vCPUs, ms.
    pub pause_ms: f64,
    /// Time to write the state, ms.
    pub save_ms: f64,
}

/// `checkpoint-create`: take a checkpoint (the worker needs a checkpoint
/// directory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCreate {
    /// Its name.
    pub name: String,
    /// Save memory and device state too; without, reverting boots again.
    #[serde(default = "yes")]
    pub memory: bool,
}

fn yes() -> bool {
    true
}

/// One checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Its id (unique in the worker's store).
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Parent checkpoint id (0: none).
    pub parent: u64,
    /// When it was taken, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// It holds memory and device state.
    pub memory: bool,
    /// The disk images it froze.
    pub disks: Vec<String>,
    /// The VM runs from this checkpoint now.
    pub current: bool,
}

/// Reply to [`CheckpointCreate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCreateReply {
    /// The new checkpoint.
    pub checkpoint: CheckpointInfo,
}

/// `checkpoint-list`: the checkpoint tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointList {}

/// Reply to [`CheckpointList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointListReply {
    /// The checkpoint the VM runs from (0: none).
    pub current: u64,
    /// Every checkpoint.
    pub checkpoints: Vec<CheckpointInfo>,
}

/// `checkpoint-revert`: the VM continues from a checkpoint (paused if it
/// was paused). A checkpoint without memory switches the disks and stops
/// the worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRevert {
    /// Checkpoint id.
    pub id: u64,
}

/// Reply to [`CheckpointRevert`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRevertReply {
    /// The checkpoint the VM runs from now.
    pub current: u64,
    /// Running, paused, or stopped (no memory: the worker exits).
    pub state: VmState,
    /// What the caller should know (why the VM is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `checkpoint-delete`: remove a checkpoint; its differencing disk is
/// merged into its parent when nothing else depends on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDelete {
    /// Checkpoint id.
    pub id: u64,
}

/// Reply to [`CheckpointDelete`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDeleteReply {
    /// The id deleted.
    pub deleted: u64,
    /// Disks whose changes were merged.
    pub merged_disks: usize,
}

/// `export`: config, memory, disks and checkpoints into a new directory,
/// with a manifest of checksums; the VM runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    /// Absolute path of a new (or empty) directory.
    pub dir: PathBuf,
}

/// Reply to [`Export`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportReply {
    /// The directory written.
    pub dir: PathBuf,
    /// Files in the export.
    pub files: usize,
    /// Their total size, bytes.
    pub bytes: u64,
}

/// One SCSI LUN in a [`StatusReply`] and the SCSI requests' replies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiLunStatus {
    /// Its number.
    pub lun: u16,
    /// Disk or DVD drive.
    pub kind: crate::launch::ScsiLunKind,
    /// A disk's image; the ISO in a DVD drive now (absent: empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Attached read-only.
    #[serde(rename = "readonly")]
    pub read_only: bool,
    /// A shared disk.
    pub shared: bool,
    /// Size, bytes (a DVD's medium; 0 without one).
    pub capacity: u64,
    /// A DVD drive holds a medium with its tray closed.
    #[serde(default)]
    pub medium_present: bool,
}

/// Reply to the SCSI requests: every LUN after the change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiReply {
    /// The controller's initiator name.
    pub initiator: String,
    /// The LUNs, ascending.
    pub luns: Vec<ScsiLunStatus>,
}

/// `scsi-add`: hot-add a disk or DVD drive to the VM's SCSI controller
/// (the guest gets a rescan event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiAdd {
    /// The LUN (its `lun` is required here).
    pub lun: crate::launch::ScsiLunSpec,
}

/// `scsi-remove`: hot-remove a LUN.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiRemove {
    /// The LUN.
    pub lun: u16,
}

/// `dvd-insert`: put an ISO into a DVD drive (refused while the guest
/// prevents removal of the medium in it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DvdInsert {
    /// The drive's LUN.
    pub lun: u16,
    /// The ISO image.
    pub path: PathBuf,
}

/// `dvd-eject`: take the medium out of a DVD drive; refused (`conflict`)
/// while the guest prevents medium removal unless `force`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DvdEject {
    /// The drive's LUN.
    pub lun: u16,
    /// Eject even while the guest prevents it.
    #[serde(default)]
    pub force: bool,
}

/// `scsi-resize`: grow or shrink a SCSI disk of the running VM (the guest
/// gets CAPACITY DATA HAS CHANGED and a parameter-change event).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiResize {
    /// The disk's LUN.
    pub lun: u16,
    /// New size, bytes (a multiple of 512).
    pub size: u64,
}

/// `ownership-renew`: the daemon's proof that this node still owns the VM in
/// its cluster, sent after each lease renewal etcd confirmed. The worker
/// keeps its own deadline: if no renewal comes before it, the worker pauses
/// the VM and then stops it by itself, before the lease (and so the
/// ownership) can expire and another node start the VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipRenew {
    /// The ownership's fencing token (the etcd revision of its claim).
    pub token: i64,
    /// Milliseconds from receipt within which the next renewal must come:
    /// the last confirmed keepalive + TTL - a margin, minus the time since.
    pub deadline_ms: u64,
}

/// Reply to [`OwnershipRenew`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipRenewReply {
    /// The token in force.
    pub token: i64,
    /// Milliseconds left before the worker stops the VM by itself.
    pub deadline_ms: u64,
}
