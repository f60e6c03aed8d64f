//! The request enum, the request/reply pairing ([`Call`]) and the line
//! encoding of both.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::WorkerError;
use crate::hello::{Hello, HelloReply};
use crate::migration::{Migrate, MigrateCancel, MigrateReply, MigrateStatus, MigrationStatus};
use crate::requests::*;
use crate::storage_move::{
    StorageMove, StorageMoveCancel, StorageMoveProgress, StorageMoveReply, StorageMoveStatus,
};

/// A request with its own reply type: `Client::call(req)` returns
/// `R::Reply`.
pub trait Call: Into<Request> {
    /// What the worker answers on success.
    type Reply: Serialize + DeserializeOwned;
}

/// Declares [`Request`] with one variant per request struct, its wire
/// names, and each struct's [`Call`] impl.
macro_rules! requests {
    ($( $(#[$doc:meta])* $name:literal => $variant:ident($req:ident) -> $reply:ty; )*) => {
        /// A control request as it travels: `{"cmd":"NAME",...fields}`.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "cmd")]
        pub enum Request {
            $(
                $(#[$doc])*
                #[serde(rename = $name)]
                $variant($req),
            )*
        }

        impl Request {
            /// Every request's wire name (`cmd`), in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            /// This request's wire name (`cmd`).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Request::$variant(_) => $name,)*
                }
            }
        }

        $(
            impl From<$req> for Request {
                fn from(r: $req) -> Request {
                    Request::$variant(r)
                }
            }

            impl Call for $req {
                type Reply = $reply;
            }
        )*
    };
}

requests! {
    /// Protocol version, product version and capabilities.
    "hello" => Hello(Hello) -> HelloReply;
    /// VM state, disks and probe progress.
    "status" => Status(Status) -> StatusReply;
    /// Pause every vCPU.
    "pause" => Pause(Pause) -> StateReply;
    /// Resume after a pause.
    "resume" => Resume(Resume) -> StateReply;
    /// Stop the VM; the worker exits.
    "shutdown" => Shutdown(Shutdown) -> StateReply;
    /// Press the guest's ACPI power button.
    "power-button" => PowerButton(PowerButton) -> StateReply;
    /// The probe guest's reports so far.
    "reports" => Reports(Reports) -> ReportsReply;
    /// Tell the probe to end its open-ended step.
    "probe-stop" => ProbeStop(ProbeStop) -> StateReply;
    /// Ask the probe's `touch` step for a round.
    "probe-touch" => ProbeTouch(ProbeTouch) -> StateReply;
    /// Change a disk's QoS limits now.
    "disk-qos" => DiskQos(DiskQos) -> DiskQosReply;
    /// Grow or shrink a disk of the running VM.
    "disk-resize" => DiskResize(DiskResize) -> DiskResizeReply;
    /// QoS events so far.
    "events" => Events(Events) -> EventsReply;
    /// Type bytes on the guest's serial port.
    "console-input" => ConsoleInput(ConsoleInput) -> ConsoleInputReply;
    /// Save the VM into a new directory and stop the worker.
    "save" => Save(Save) -> SaveReply;
    /// Take a checkpoint.
    "checkpoint-create" => CheckpointCreate(CheckpointCreate) -> CheckpointCreateReply;
    /// The checkpoint tree.
    "checkpoint-list" => CheckpointList(CheckpointList) -> CheckpointListReply;
    /// Go back to a checkpoint.
    "checkpoint-revert" => CheckpointRevert(CheckpointRevert) -> CheckpointRevertReply;
    /// Delete a checkpoint, merging its disk changes.
    "checkpoint-delete" => CheckpointDelete(CheckpointDelete) -> CheckpointDeleteReply;
    /// Export the VM into a new directory; the VM runs on.
    "export" => Export(Export) -> ExportReply;
    /// Start a live migration (returns at once; poll `migrate-status`).
    "migrate" => Migrate(Migrate) -> MigrateReply;
    /// Progress of the current or last migration.
    "migrate-status" => MigrateStatus(MigrateStatus) -> MigrationStatus;
    /// Cancel the running migration; the VM keeps running here.
    "migrate-cancel" => MigrateCancel(MigrateCancel) -> Ack;
    /// Move a disk's image to another directory while the VM runs
    /// (returns at once; poll `storage-move-status`).
    "storage-move" => StorageMove(StorageMove) -> StorageMoveReply;
    /// Progress of the current or last storage move.
    "storage-move-status" => StorageMoveStatus(StorageMoveStatus) -> StorageMoveProgress;
    /// Cancel the running storage move; the VM stays on the old image.
    "storage-move-cancel" => StorageMoveCancel(StorageMoveCancel) -> Ack;
    /// Hot-add a SCSI disk or DVD drive.
    "scsi-add" => ScsiAdd(ScsiAdd) -> ScsiReply;
    /// Hot-remove a SCSI LUN.
    "scsi-remove" => ScsiRemove(ScsiRemove) -> ScsiReply;
    /// Put an ISO into a SCSI DVD drive.
    "dvd-insert" => DvdInsert(DvdInsert) -> ScsiReply;
    /// Take the medium out of a SCSI DVD drive.
    "dvd-eject" => DvdEject(DvdEject) -> ScsiReply;
    /// Grow or shrink a SCSI disk.
    "scsi-resize" => ScsiResize(ScsiResize) -> ScsiReply;
    /// Renew the cluster ownership deadline; without renewals the worker
    /// stops the VM by itself.
    "ownership-renew" => OwnershipRenew(OwnershipRenew) -> OwnershipRenewReply;
}

impl Request {
    /// The request as one JSON line (no newline).
    pub fn encode(&self) -> String {
        // A derived Serialize of plain fields into a String cannot fail.
        serde_json::to_string(self).expect("a request serializes")
    }

    /// Parses one request line; a malformed one is a
    /// [`ErrorCode::BadRequest`](crate::ErrorCode::BadRequest).
    pub fn decode(line: &str) -> Result<Request, WorkerError> {
        serde_json::from_str(line)
            .map_err(|e| WorkerError::bad_request(format!("bad request: {e}")))
    }
}

/// The success envelope: `{"ok":true,...reply}`.
#[derive(Serialize)]
struct Success<'a, T> {
    ok: bool,
    #[serde(flatten)]
    reply: &'a T,
}

/// The failure envelope: `{"ok":false,"error":...,"code":...}`.
#[derive(Serialize)]
struct Failure<'a> {
    ok: bool,
    #[serde(flatten)]
    error: &'a WorkerError,
}

/// A reply as one JSON line (no newline).
pub fn encode_reply<T: Serialize>(result: &Result<T, WorkerError>) -> String {
    let encoded = match result {
        Ok(reply) => serde_json::to_string(&Success { ok: true, reply }),
        Err(error) => serde_json::to_string(&Failure { ok: false, error }),
    };
    // Only a reply type that is not a struct fails to flatten: a bug in
    // this crate, which the round-trip tests catch; still answer.
    encoded.unwrap_or_else(|e| {
        let error = WorkerError::failed(format!("the worker cannot encode its reply: {e}"));
        serde_json::to_string(&Failure {
            ok: false,
            error: &error,
        })
        .unwrap_or_default()
    })
}

/// A reply line that is not a reply of the expected type.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// Not a JSON object with a boolean `ok`.
    #[error("bad reply {line:?}: no boolean \"ok\"")]
    NoOk {
        /// The line (cut to 200 characters).
        line: String,
    },
    /// JSON, but not of the reply's shape.
    #[error("bad reply {line:?}")]
    Shape {
        /// The line (cut to 200 characters).
        line: String,
        /// What did not match.
        #[source]
        source: serde_json::Error,
    },
}

/// Parses a reply line: `Ok(Ok(reply))`, `Ok(Err(refusal))`, or a
/// [`ReplyError`] when the line is not a reply of type `T`.
pub fn decode_reply<T: DeserializeOwned>(line: &str) -> Result<Result<T, WorkerError>, ReplyError> {
    let cut = || line.trim_end().chars().take(200).collect::<String>();
    let shape = |source| ReplyError::Shape {
        line: cut(),
        source,
    };
    let value: serde_json::Value = serde_json::from_str(line).map_err(shape)?;
    match value.get("ok").and_then(serde_json::Value::as_bool) {
        Some(true) => serde_json::from_value(value).map(Ok).map_err(shape),
        Some(false) => serde_json::from_value(value).map(Err).map_err(shape),
        None => Err(ReplyError::NoOk { line: cut() }),
    }
}
