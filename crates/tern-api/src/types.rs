//! Request and response bodies of the REST API (JSON).
//!
//! Sizes are accepted as a number of bytes or as text with a binary suffix
//! (`"512M"`, `"4G"`) and always returned as bytes. What each field accepts
//! is in [`crate::limits`], which the schemas are built from.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::limits;

/// Version of the REST API; the path prefix is `/v1`.
pub const API_VERSION: &str = "v1";

/// An error reply: every 4xx and 5xx carries one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ApiError {
    /// Stable machine-readable code: `bad_request`, `not_found`, `conflict`,
    /// `unauthorized`, `not_implemented`, `internal`, `unavailable`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// Lifecycle state of a VM in the registry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Defined, no worker.
    Stopped,
    /// A worker is being started.
    Starting,
    /// The worker runs the guest.
    Running,
    /// vCPUs are paused; memory is kept.
    Paused,
    /// A stop was requested; the worker is ending.
    Stopping,
    /// Memory and device state are being written to disk.
    Saving,
    /// The VM's state is on disk; no worker.
    Saved,
    /// A worker is being started from a saved state.
    Restoring,
    /// The VM is moving to another host.
    Migrating,
    /// The worker ended unexpectedly; `reason` says why.
    Failed,
}

impl VmState {
    /// The name used in JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Saving => "saving",
            VmState::Saved => "saved",
            VmState::Restoring => "restoring",
            VmState::Migrating => "migrating",
            VmState::Failed => "failed",
        }
    }

    /// Parses [`VmState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stopped" => VmState::Stopped,
            "starting" => VmState::Starting,
            "running" => VmState::Running,
            "paused" => VmState::Paused,
            "stopping" => VmState::Stopping,
            "saving" => VmState::Saving,
            "saved" => VmState::Saved,
            "restoring" => VmState::Restoring,
            "migrating" => VmState::Migrating,
            "failed" => VmState::Failed,
            _ => return None,
        })
    }

    /// True while a worker process exists for the VM.
    pub fn has_worker(self) -> bool {
        matches!(
            self,
            VmState::Starting
                | VmState::Running
                | VmState::Paused
                | VmState::Stopping
                | VmState::Saving
                | VmState::Migrating
                | VmState::Restoring
        )
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A size in bytes, written as a number or as text such as `"512M"`. Each
/// field of this type states its own bounds in the schema (see
/// [`limits::memory_schema`], [`limits::disk_size_schema`]).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(Whole),
            Text(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Num(n)) => Ok(Size(n.0)),
            Ok(Raw::Text(t)) => parse_size(&t).map(Size).map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "expected a size: a number of bytes or text such as \"512M\"",
            )),
        }
    }
}

/// A non-negative whole number, also when written with a zero fraction
/// (`7.0`): JSON Schema's `integer` admits those, so the API does too.
#[derive(Debug, Clone, Copy)]
struct Whole(u64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Whole;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a non-negative whole number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Whole, E> {
                Ok(Whole(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Whole, E> {
                u64::try_from(v)
                    .map(Whole)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Whole, E> {
                // 2^64 is exact in f64; every whole f64 below it fits a u64.
                if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                    Ok(Whole(v as u64))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `deserialize_with` helpers for whole-number fields (see [`Whole`]).
pub(crate) mod whole {
    use serde::{de::Error, Deserialize, Deserializer};

    use super::Whole;

    fn narrow<E: Error>(w: Whole) -> Result<u32, E> {
        u32::try_from(w.0)
            .map_err(|_| E::custom(format!("{} is too large (at most {})", w.0, u32::MAX)))
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Whole::deserialize(d).map(|w| w.0)
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        narrow(Whole::deserialize(d)?)
    }

    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<Whole>::deserialize(d).map(|o| o.map(|w| w.0))
    }

    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Option::<Whole>::deserialize(d)?.map(narrow).transpose()
    }
}

/// Parses a size with an optional binary suffix (K, M, G, T; `iB` or `B`
/// allowed after it). A bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| {
        format!("bad size '{text}': expected a number with an optional K/M/G/T suffix")
    })?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("bad size '{text}': unknown suffix '{suffix}'")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("bad size '{text}': too large"))
}

/// Body of `POST /v1/vms`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// Unique name: 1-63 characters of `[A-Za-z0-9._-]`, not starting with
    /// `.` or `-`.
    #[schema(schema_with = limits::name_schema)]
    pub name: String,
    /// Number of vCPUs (1-64; default 1).
    #[serde(default, deserialize_with = "whole::opt_u32")]
    #[schema(schema_with = limits::vcpus_schema)]
    pub vcpus: Option<u32>,
    /// Guest memory (default 512M; 16M to 1T, a multiple of 2M).
    #[serde(default)]
    #[schema(schema_with = limits::memory_schema)]
    pub memory: Option<Size>,
    /// The guest: `probe:WORKLOAD`, e.g. `probe:hello` or
    /// `probe:dirty,mib=32,rate=50+verify`; or `boot:disk[:N],...` to boot
    /// from the VM's own disks (docs/boot-sources.md).
    #[schema(schema_with = limits::guest_schema)]
    pub guest: String,
    /// Disks to attach, by name or id (see `/v1/disks`).
    #[serde(default)]
    pub disks: Vec<String>,
}

/// A VM as the registry knows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Vm {
    /// Stable id (16 hex digits).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory: u64,
    /// The guest (`probe:WORKLOAD`).
    pub guest: String,
    /// Lifecycle state.
    pub state: VmState,
    /// Why the VM is `failed` (or how it last stopped), if known.
    pub reason: Option<String>,
    /// The worker's process id while one runs.
    pub pid: Option<u32>,
    /// Names of the attached disks.
    pub disks: Vec<String>,
    /// When the VM was created (RFC 3339, UTC).
    pub created_at: String,
    /// When the registry entry last changed (RFC 3339, UTC).
    pub updated_at: String,
}

/// Reply of `GET /v1/vms`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmList {
    /// Every VM, by name.
    pub vms: Vec<Vm>,
}

/// Something that happened on this host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Event {
    /// Increasing sequence number (use as `since`).
    pub seq: i64,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The VM's id, if about a VM.
    pub vm_id: Option<String>,
    /// The VM's name at the time, if about a VM.
    pub vm: Option<String>,
    /// What kind: `created`, `started`, `paused`, `resumed`, `stopped`,
    /// `failed`, `deleted`, `reattached`, `migrated-in`, `migrated-out`, ...
    pub kind: String,
    /// Details for people.
    pub message: String,
}

/// Reply of `GET /v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// Events after `since`, oldest first.
    pub events: Vec<Event>,
}

/// Disk image format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    /// Microsoft VHDX (dynamic).
    Vhdx,
    /// Raw image.
    Raw,
}

impl DiskFormat {
    /// The name used in JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Vhdx => "vhdx",
            DiskFormat::Raw => "raw",
        }
    }
}

/// Body of `POST /v1/disks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDisk {
    /// Unique name (same rules as VM names).
    #[schema(schema_with = limits::name_schema)]
    pub name: String,
    /// Virtual size (at least 1M, a multiple of 1M, at most 64T).
    #[schema(schema_with = limits::disk_size_schema)]
    pub size: Size,
    /// Format (default vhdx).
    #[serde(default)]
    pub format: Option<DiskFormat>,
    /// Where to create the file: absolute, inside one of the host's allowed
    /// disk directories (default: `NAME.vhdx` in the first one).
    #[serde(default)]
    #[schema(pattern = "^/")]
    pub path: Option<String>,
}

/// Storage QoS of a disk, in normalized 8 KiB IOPS.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskQos {
    /// Upper limit (none: unlimited; 0 is refused, it would stop all I/O).
    #[serde(default, deserialize_with = "whole::opt_u32")]
    #[schema(schema_with = max_iops_schema)]
    pub max_iops: Option<u32>,
    /// Minimum; an event is raised when the disk cannot get it. Not above
    /// `max_iops`.
    #[serde(default, deserialize_with = "whole::opt_u32")]
    #[schema(schema_with = min_iops_schema)]
    pub min_iops: Option<u32>,
    /// Upper limit on throughput in bytes per second, reads and writes
    /// together (none: unlimited).
    #[serde(default, deserialize_with = "whole::opt_u64")]
    #[schema(schema_with = max_bw_schema)]
    pub max_bw: Option<u64>,
}

fn max_bw_schema() -> utoipa::openapi::schema::Schema {
    limits::optional_u64(
        1,
        limits::MAX_BW,
        "Upper limit on throughput in bytes per second, reads and writes together (none: unlimited).",
    )
}

fn max_iops_schema() -> utoipa::openapi::schema::Schema {
    limits::optional_u32(
        1,
        "Upper limit (none: unlimited; 0 is refused, it would stop all I/O).",
    )
}

fn min_iops_schema() -> utoipa::openapi::schema::Schema {
    limits::optional_u32(
        0,
        "Minimum; an event is raised when the disk cannot get it. Not above `max_iops`.",
    )
}

/// A virtual disk in the registry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Disk {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The image file.
    pub path: String,
    /// Format.
    pub format: DiskFormat,
    /// Virtual size in bytes.
    pub size: u64,
    /// The VM it is attached to, if any.
    pub vm: Option<String>,
    /// Storage QoS.
    pub qos: DiskQos,
}

/// Reply of `GET /v1/disks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiskList {
    /// Every disk, by name.
    pub disks: Vec<Disk>,
}

/// Body of `POST /v1/disks/{disk}/resize`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeDisk {
    /// New virtual size.
    #[schema(schema_with = limits::disk_size_schema)]
    pub size: Size,
}

/// Body of `POST /v1/vms/{vm}/disks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDisk {
    /// The disk, by name or id.
    pub disk: String,
}

/// Body of `POST /v1/vms/{vm}/checkpoints`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCheckpoint {
    /// Name, unique per VM.
    #[schema(schema_with = limits::name_schema)]
    pub name: String,
}

/// A checkpoint of a VM.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Checkpoint {
    /// Stable id.
    pub id: String,
    /// The VM's name.
    pub vm: String,
    /// Name.
    pub name: String,
    /// When it was taken (RFC 3339, UTC).
    pub created_at: String,
    /// The checkpoint it was taken from (its id), making the checkpoints a
    /// tree; none for a root. Known while the VM's worker runs (it keeps
    /// the tree), otherwise none.
    #[serde(default)]
    pub parent: Option<String>,
    /// The VM runs from this checkpoint now (the last one taken or
    /// applied). Known while the VM's worker runs.
    #[serde(default)]
    pub current: bool,
}

/// Reply of `GET /v1/vms/{vm}/checkpoints`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckpointList {
    /// Checkpoints, oldest first.
    pub checkpoints: Vec<Checkpoint>,
}

/// Body of `POST /v1/vms/{vm}/migrate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartMigration {
    /// The destination daemon: `unix:/path/to/ternd.sock` or
    /// `http://HOST:PORT`.
    #[schema(schema_with = limits::endpoint_schema)]
    pub to: String,
    /// Bearer token of the destination daemon (TCP only).
    #[serde(default)]
    pub token: Option<String>,
    /// Copy the disks too (shared-nothing: the hosts share no storage).
    /// The destination creates them in `dest_dir`; this host keeps its
    /// images (no longer registered) once the VM runs there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_storage: bool,
    /// With `with_storage`: the directory on the destination host, one of
    /// its allowed disk directories (absent: its first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_dir: Option<String>,
}

/// State of a migration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// Negotiating with the destination.
    Pending,
    /// Memory is being copied.
    Running,
    /// The VM runs on the destination.
    Completed,
    /// Stopped by an error; the source VM runs on.
    Failed,
    /// Cancelled; the source VM runs on.
    Cancelled,
}

/// A migration, seen from this host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Migration {
    /// Stable id.
    pub id: String,
    /// The VM's name.
    pub vm: String,
    /// `outgoing` or `incoming`.
    pub direction: String,
    /// The other daemon.
    pub peer: String,
    /// State.
    pub state: MigrationState,
    /// Bytes of memory sent so far.
    pub transferred_bytes: u64,
    /// Bytes of memory in the VM.
    pub total_bytes: u64,
    /// Precopy rounds done.
    pub rounds: u32,
    /// Guest memory sent so far before compression, bytes (zero pages
    /// included; a page sent again in a later round counts again).
    #[serde(default)]
    pub memory_sent_bytes: u64,
    /// Dirty memory left to send after the last precopy round, bytes.
    #[serde(default)]
    pub remaining_bytes: u64,
    /// The pause expected if the VM switched over now, once a precopy
    /// round has measured it.
    #[serde(default)]
    pub expected_downtime_ms: Option<f64>,
    /// Time the VM was paused for the switch-over, once known.
    pub downtime_ms: Option<f64>,
    /// Shared-nothing: bytes of disk the first pass copies (what the
    /// images hold); 0 when the disks stay on shared storage.
    #[serde(default)]
    pub disk_total_bytes: u64,
    /// Shared-nothing: bytes of disk sent so far (all rounds).
    #[serde(default)]
    pub disk_sent_bytes: u64,
    /// Total time, once finished.
    pub total_ms: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Body of `POST /v1/migrations/incoming`: the source daemon asks this one
/// to receive a VM.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncomingMigration {
    /// The VM's id (kept across hosts).
    #[schema(schema_with = limits::vm_id_schema)]
    pub vm_id: String,
    /// The VM's name.
    #[schema(schema_with = limits::name_schema)]
    pub name: String,
    /// vCPUs.
    #[serde(deserialize_with = "whole::u32")]
    #[schema(schema_with = limits::incoming_vcpus_schema)]
    pub vcpus: u32,
    /// Guest memory in bytes.
    #[serde(deserialize_with = "whole::u64")]
    #[schema(schema_with = limits::incoming_memory_schema)]
    pub memory: u64,
    /// The guest (`probe:WORKLOAD`).
    #[schema(schema_with = limits::guest_schema)]
    pub guest: String,
    /// The source daemon, for the record.
    pub source: String,
    /// The VM's disks, in order. They stay where they are: the
    /// destination must reach the same paths (shared storage) inside its
    /// allowed directories; the workers hand the image locks over.
    #[serde(default)]
    pub disks: Vec<IncomingDisk>,
    /// Stream the VM over TCP (the source reached this daemon over TCP:
    /// it may be another host). Otherwise the workers meet on a UNIX
    /// socket and the guest memory is handed over as a memfd.
    #[serde(default)]
    pub stream: bool,
    /// The disks come with the VM (shared-nothing): this host creates
    /// them, under the same file names, in `dest_dir` instead of reaching
    /// `disks[].path`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_storage: bool,
    /// With `with_storage`: one of this host's allowed disk directories
    /// (absent: its first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_dir: Option<String>,
}

/// A disk that moves with an incoming VM.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IncomingDisk {
    /// Its name (kept on the destination).
    #[schema(schema_with = limits::name_schema)]
    pub name: String,
    /// The image file, the same path on both hosts.
    #[schema(pattern = "^/")]
    pub path: String,
    /// Format.
    pub format: DiskFormat,
    /// Virtual size in bytes.
    #[serde(deserialize_with = "whole::u64")]
    #[schema(schema_with = limits::disk_bytes_schema)]
    pub size: u64,
    /// Storage QoS.
    #[serde(default)]
    pub qos: DiskQos,
}

/// Reply of `POST /v1/migrations/incoming`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncomingReady {
    /// The migration as this host sees it.
    pub migration: Migration,
    /// Where the source worker sends the VM: `unix:PATH`, or
    /// `tcp:IP:PORT` (an unspecified IP means: the address the source
    /// reached this daemon at).
    pub endpoint: String,
}

/// Reply of `GET /v1/migrations`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigrationList {
    /// Migrations, newest first.
    pub migrations: Vec<Migration>,
}

/// Which optional features this daemon implements.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Features {
    /// Save and restore.
    pub save_restore: bool,
    /// Live migration.
    pub migration: bool,
    /// Disks attached to VMs.
    pub disks: bool,
    /// Checkpoints.
    pub checkpoints: bool,
}

/// Reply of `GET /v1/host`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// Daemon version.
    pub version: String,
    /// API version (`v1`).
    pub api_version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Number of VMs in the registry.
    pub vms: u32,
    /// Number of VMs with a running worker.
    pub running: u32,
    /// Directories where disk images may live.
    pub disk_dirs: Vec<String>,
    /// Optional features.
    pub features: Features,
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC.
pub fn rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_from_numbers_and_text() {
        let s: Size = serde_json::from_str("\"512M\"").unwrap();
        assert_eq!(s, Size(512 << 20));
        let s: Size = serde_json::from_str("4096").unwrap();
        assert_eq!(s, Size(4096));
        let e = serde_json::from_str::<Size>("\"12X\"").unwrap_err();
        assert!(e.to_string().contains("unknown suffix"), "{e}");
        assert!(serde_json::from_str::<Size>("-1").is_err());
        assert!(serde_json::from_str::<Size>("\"99999999999T\"").is_err());
    }

    #[test]
    fn whole_numbers_may_have_a_zero_fraction() {
        let v: CreateVm = serde_json::from_str(
            r#"{"name":"a","guest":"probe:hello","vcpus":7.0,"memory":33554432.0}"#,
        )
        .unwrap();
        assert_eq!((v.vcpus, v.memory), (Some(7), Some(Size(32 << 20))));
        for bad in [r#"7.5"#, "-1", "4294967296", r#""7""#] {
            let body = format!(r#"{{"name":"a","guest":"probe:hello","vcpus":{bad}}}"#);
            assert!(serde_json::from_str::<CreateVm>(&body).is_err(), "{bad}");
        }
        let q: DiskQos = serde_json::from_str(r#"{"max_iops":null,"min_iops":3.0}"#).unwrap();
        assert_eq!((q.max_iops, q.min_iops), (None, Some(3)));
    }

    #[test]
    fn create_vm_refuses_unknown_fields() {
        let e = serde_json::from_str::<CreateVm>(r#"{"name":"a","guest":"probe:hello","cpus":2}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn states_round_trip() {
        for s in [
            VmState::Stopped,
            VmState::Starting,
            VmState::Running,
            VmState::Paused,
            VmState::Stopping,
            VmState::Saving,
            VmState::Saved,
            VmState::Restoring,
            VmState::Migrating,
            VmState::Failed,
        ] {
            assert_eq!(VmState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}

/// A cluster node's state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClusterNodeState {
    /// Alive and taking VMs.
    Up,
    /// Alive, draining: takes no VMs.
    Paused,
    /// Its lease expired (or it left).
    Down,
    /// Kept out of the cluster.
    Quarantined,
}

/// A node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's name (`ternd --node`).
    pub name: String,
    /// Its state.
    pub state: ClusterNodeState,
    /// Where its REST API answers on TCP, if it does.
    pub api_url: Option<String>,
    /// Memory it offers to VMs, in bytes.
    pub memory: u64,
    /// vCPUs it offers to VMs.
    pub vcpus: u32,
}

/// Reply of `GET /v1/cluster/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterNodeList {
    /// Every member, by name.
    pub nodes: Vec<ClusterNode>,
}

/// Reply of `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    /// This node's name.
    pub node: String,
    /// The etcd endpoints this node uses.
    pub endpoints: Vec<String>,
    /// The lease TTL, in seconds.
    pub ttl_s: u64,
    /// Members up or paused.
    pub nodes_up: u32,
    /// All members.
    pub nodes_total: u32,
    /// Clustered VMs (configuration in etcd).
    pub vms: u32,
    /// Clustered VMs that have an owner now.
    pub vms_owned: u32,
}

/// Start priority of a clustered VM: the order in which a lost node's VMs
/// are restarted elsewhere.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterPriority {
    /// Restarted first.
    High,
    /// The default.
    Medium,
    /// Restarted last.
    Low,
    /// Never started by the cluster (an operator starts it).
    NoAutoStart,
}

/// Body of `POST /v1/cluster/vms`: makes a VM of this node clustered (its
/// configuration goes to etcd; its disks must be on shared storage).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddClusterVm {
    /// The VM, by name or id, on this node.
    pub vm: String,
    /// Start priority (default medium).
    #[serde(default)]
    pub priority: Option<ClusterPriority>,
    /// Nodes to prefer when it is placed, best first (members of the cluster).
    #[serde(default)]
    pub preferred_owners: Vec<String>,
    /// VMs of one class are kept on different nodes while room allows.
    #[serde(default)]
    pub anti_affinity: Option<String>,
}

/// A clustered VM as the cluster sees it (any node answers the same).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ClusterVm {
    /// The VM's name.
    pub name: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory: u64,
    /// The guest.
    pub guest: String,
    /// Its disk images, on shared storage.
    pub disks: Vec<String>,
    /// Start priority.
    pub priority: ClusterPriority,
    /// Preferred owners, best first.
    pub preferred_owners: Vec<String>,
    /// Anti-affinity class.
    pub anti_affinity: Option<String>,
    /// The node that owns (runs) it now.
    pub owner: Option<String>,
    /// The owner's fencing token.
    pub token: Option<i64>,
    /// Stopped on purpose: no node restarts it.
    pub stopped: bool,
    /// Why the last placement round could not place it (no node has room),
    /// as this node saw it.
    pub unplaced: Option<String>,
}

/// Reply of `GET /v1/cluster/vms`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterVmList {
    /// Every clustered VM, by name.
    pub vms: Vec<ClusterVm>,
}

/// A virtual switch's type (Hyper-V's three).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SwitchType {
    /// Bridged to a host interface (the uplink): VMs reach its network.
    External,
    /// VMs and the host (the bridge's own address) reach each other.
    Internal,
    /// Only the VMs on it reach each other.
    Private,
}

impl SwitchType {
    /// The name the API and the registry use.
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchType::External => "external",
            SwitchType::Internal => "internal",
            SwitchType::Private => "private",
        }
    }
}

/// Body of `POST /v1/switches`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSwitch {
    /// Unique name (as a VM name).
    #[schema(schema_with = limits::name_schema)]
    pub name: String,
    /// The switch's type.
    #[serde(rename = "type")]
    pub kind: SwitchType,
    /// The host interface an external switch bridges (external only).
    #[serde(default)]
    pub uplink: Option<String>,
    /// The host's address on an internal switch, `A.B.C.D/LEN` (internal
    /// only; absent: the bridge has none and the host configures it).
    #[serde(default)]
    pub address: Option<String>,
}

/// A virtual switch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Switch {
    /// Stable id (16 hex digits).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: SwitchType,
    /// The bridged host interface (external).
    pub uplink: Option<String>,
    /// The host's address on it (internal).
    pub address: Option<String>,
    /// The Linux bridge that is the switch.
    pub bridge: String,
    /// Whether the uplink has carrier (external; absent when unknown).
    pub link_up: Option<bool>,
    /// The NICs on it, as `VM/INDEX`.
    pub nics: Vec<String>,
}

/// Reply of `GET /v1/switches`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SwitchList {
    /// Every switch, by name.
    pub switches: Vec<Switch>,
}

/// Body of `POST /v1/vms/{vm}/nics`: a NIC on a switch, with its port's
/// policies.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateNic {
    /// The switch, by name or id.
    pub switch: String,
    /// The guest's MAC address (absent: generated once from the VM's id
    /// and the NIC's index, and kept).
    #[serde(default)]
    pub mac: Option<String>,
    /// Maximum bandwidth each way, bytes per second.
    #[serde(default)]
    pub max_bw: Option<u64>,
    /// Drop frames from the guest whose source MAC is not the NIC's.
    #[serde(default)]
    pub mac_guard: bool,
    /// Drop DHCP server messages from the guest.
    #[serde(default)]
    pub dhcp_guard: bool,
    /// Drop router advertisements and redirects from the guest.
    #[serde(default)]
    pub router_guard: bool,
    /// A port on the same host that gets a copy of the NIC's traffic (an
    /// interface name, e.g. another VM's tap).
    #[serde(default)]
    pub mirror: Option<String>,
}

/// A VM's NIC.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Nic {
    /// Position on the VM (0 first).
    pub index: u32,
    /// The switch's name.
    pub switch: String,
    /// The guest's MAC address.
    pub mac: String,
    /// The host tap that is its switch port.
    pub tap: String,
    /// Maximum bandwidth each way, bytes per second.
    pub max_bw: Option<u64>,
    /// MAC-spoofing guard.
    pub mac_guard: bool,
    /// DHCP guard.
    pub dhcp_guard: bool,
    /// Router guard.
    pub router_guard: bool,
    /// The monitor port, if mirrored.
    pub mirror: Option<String>,
}

/// Reply of `GET /v1/vms/{vm}/nics`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NicList {
    /// The VM's NICs, by index.
    pub nics: Vec<Nic>,
}
