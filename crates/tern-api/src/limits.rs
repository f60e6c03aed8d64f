//! What the daemon accepts in a request, and the JSON schemas that say so.
//!
//! The daemon's checks use these constants and the OpenAPI document is
//! built from them, so the two cannot drift apart: a request the schema
//! allows is one the daemon takes (apart from what no schema can know: the
//! host's allowed directories, names already taken, other fields' values),
//! and one it forbids is refused with 400.

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};

/// VM, disk and checkpoint names: 1-63 characters of `[A-Za-z0-9._-]`, not
/// starting with `.` or `-`.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,62}$";
/// Longest name.
pub const NAME_MAX: usize = 63;

/// True when `name` is a valid VM, disk or checkpoint name
/// ([`NAME_PATTERN`]).
pub fn name_ok(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with(['.', '-'])
}

/// A VM id: 16 hex digits.
pub const VM_ID_PATTERN: &str = "^[0-9a-fA-F]{16}$";

/// Most vCPUs of a VM (the least is 1).
pub const MAX_VCPUS: u32 = 64;

/// Smallest guest memory (the probe guest's layout needs this much).
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory.
pub const MAX_MEMORY: u64 = 1 << 40;
/// Guest memory is a multiple of this (2 MiB).
pub const MEMORY_ALIGN: u64 = 2 << 20;

/// Smallest disk.
pub const MIN_DISK: u64 = 1 << 20;
/// Largest disk (the VHDX limit).
pub const MAX_DISK: u64 = 64 << 40;
/// Disk sizes are a multiple of this (1 MiB).
pub const DISK_ALIGN: u64 = 1 << 20;

/// Longest long poll of `GET /v1/events`, in seconds.
pub const MAX_EVENT_WAIT: i64 = 60;
/// Most events one `GET /v1/events` returns.
pub const MAX_EVENT_LIMIT: i64 = 10_000;
/// Events returned when no `limit` is given.
pub const DEFAULT_EVENT_LIMIT: i64 = 1000;

/// Memory sizes as text that always lie inside the memory limits: an even
/// number of MiB from 16M to 999998M, 1G to 999G, or 1T. (The daemon also
/// takes other spellings of a valid size, e.g. `"16384K"`, which no pattern
/// can list exactly; a client should send bytes.)
pub const MEMORY_TEXT_PATTERN: &str =
    "^(?:(?:1[68]|[2-9][02468]|[1-9][0-9]{1,4}[02468])M|[1-9][0-9]{0,2}G|1T)$";

/// Disk sizes as text that always lie inside the disk limits: 1M to
/// 9999999M, 1G to 9999G, or 1T to 64T (other spellings: see
/// [`MEMORY_TEXT_PATTERN`]).
pub const DISK_TEXT_PATTERN: &str =
    "^(?:[1-9][0-9]{0,6}M|[1-9][0-9]{0,3}G|(?:[1-9]|[1-5][0-9]|6[0-4])T)$";

/// One workload step of [`GUEST_PATTERN`].
macro_rules! guest_step {
    () => {
        concat!(
            "(?:hello|vcpus|verify|echo",
            "|dirty(?:,(?:mib=",
            pos!(),
            "|rate=",
            num!(),
            "))*",
            "|touch(?:,(?:pages=",
            pos!(),
            "|span=",
            pos!(),
            "|seed=",
            num!(),
            "))*",
            "|blk-verify(?:,(?:disk=",
            num!(),
            "|mib=",
            num!(),
            "))*",
            "|blk-check(?:,(?:disk=",
            num!(),
            "|mib=",
            num!(),
            "))*",
            "|blk-iops(?:,(?:disk=",
            num!(),
            "|bs=",
            pos!(),
            "|qd=",
            pos!(),
            "|secs=",
            pos!(),
            "|mix=(?:randread|randwrite|read|write)))*",
            "|blk-capacity(?:,disk=",
            num!(),
            ")*",
            "|blk-trim(?:,(?:disk=",
            num!(),
            "|from=",
            num!(),
            "))*",
            "|net(?:,(?:nic=",
            num!(),
            "|ip=(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}",
            "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:/(?:3[0-2]|[12][0-9]|[1-9]))?",
            "|port=[1-9][0-9]{0,3}",
            "))*",
            "|scsi-verify(?:,(?:lun=",
            num!(),
            "|mib=",
            num!(),
            "))*",
            "|scsi-dvd-read(?:,lun=",
            num!(),
            ")*",
            "|scsi-watch(?:,(?:lun=",
            num!(),
            "|prevent=[0-2]",
            "))*",
            "|scsi-pr(?:,(?:lun=",
            num!(),
            "|key=",
            num!(),
            "|other=",
            num!(),
            "|ops=[0-9]{1,9}",
            "))*",
            "|vsock(?:,(?:port=[1-9][0-9]{0,3}",
            "|connect=[0-9]{1,9}",
            "))*",
            ")"
        )
    };
}

/// A workload parameter number (small enough that no suffix overflows).
macro_rules! num {
    () => {
        "[0-9]{1,9}[kKmMgG]?"
    };
}

/// A positive workload parameter number.
macro_rules! pos {
    () => {
        "[1-9][0-9]{0,8}[kKmMgG]?"
    };
}

/// A probe guest, `probe:STEP[+STEP...]` (at most 8 steps), each step a
/// workload of `tern_probe_abi::workload` with its parameters; numbers take
/// a `k`/`m`/`g` suffix, the sizes among them must be positive.
pub const GUEST_PATTERN: &str = concat!(
    "^(?:probe:",
    guest_step!(),
    "(?:\\+",
    guest_step!(),
    "){0,7}|boot:disk(?::[0-9]{1,2})?(?:,disk(?::[0-9]{1,2})?){0,7})$"
);

fn string(pattern: &str, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
}

/// `[A-Za-z0-9._-]` names.
pub fn name_schema() -> Schema {
    string(
        NAME_PATTERN,
        "Unique name: 1-63 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`.",
    )
    .min_length(Some(1))
    .max_length(Some(NAME_MAX))
    .into()
}

/// A VM id.
pub fn vm_id_schema() -> Schema {
    string(
        VM_ID_PATTERN,
        "The VM's id (16 hex digits, kept across hosts).",
    )
    .into()
}

/// A probe guest.
pub fn guest_schema() -> Schema {
    string(
        GUEST_PATTERN,
        "The guest: `probe:WORKLOAD`, e.g. `probe:hello` or `probe:dirty,mib=32,rate=50+verify`; or `boot:disk[:N],...` to boot what the VM's disks hold (GPT: ESP with UKIs or BLS entries, ext4 with grub.cfg), first disk of the list first.",
    )
    .examples(["probe:hello"])
    .into()
}

fn vcpus(nullable: bool) -> ObjectBuilder {
    let t = if nullable {
        SchemaType::from_iter([Type::Integer, Type::Null])
    } else {
        SchemaType::new(Type::Integer)
    };
    ObjectBuilder::new()
        .schema_type(t)
        .minimum(Some(1))
        .maximum(Some(MAX_VCPUS))
}

/// The vCPUs of a new VM (optional).
pub fn vcpus_schema() -> Schema {
    vcpus(true)
        .description(Some("Number of vCPUs (1-64; default 1)."))
        .into()
}

/// The vCPUs of an incoming VM.
pub fn incoming_vcpus_schema() -> Schema {
    vcpus(false).description(Some("vCPUs (1-64).")).into()
}

fn bytes(min: u64, max: u64, align: u64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min))
        .maximum(Some(max))
        .multiple_of(Some(align))
}

fn size(nullable: bool, description: &str, min: u64, max: u64, align: u64, text: &str) -> Schema {
    let mut one = OneOfBuilder::new().description(Some(description));
    if nullable {
        one = one.item(ObjectBuilder::new().schema_type(Type::Null));
    }
    one.item(bytes(min, max, align).description(Some("Bytes.")))
        .item(string(text, "Text with a binary suffix, e.g. `\"512M\"`."))
        .into()
}

/// The memory of a new VM (optional).
pub fn memory_schema() -> Schema {
    size(
        true,
        "Guest memory (default 512M): 16 MiB to 1 TiB, a multiple of 2 MiB.",
        MIN_MEMORY,
        MAX_MEMORY,
        MEMORY_ALIGN,
        MEMORY_TEXT_PATTERN,
    )
}

/// The memory of an incoming VM, in bytes.
pub fn incoming_memory_schema() -> Schema {
    bytes(MIN_MEMORY, MAX_MEMORY, MEMORY_ALIGN)
        .description(Some(
            "Guest memory in bytes: 16 MiB to 1 TiB, a multiple of 2 MiB.",
        ))
        .into()
}

/// A disk's virtual size as a request gives it.
pub fn disk_size_schema() -> Schema {
    size(
        false,
        "Virtual size: 1 MiB to 64 TiB, a multiple of 1 MiB.",
        MIN_DISK,
        MAX_DISK,
        DISK_ALIGN,
        DISK_TEXT_PATTERN,
    )
}

/// A disk's virtual size in bytes.
pub fn disk_bytes_schema() -> Schema {
    bytes(MIN_DISK, MAX_DISK, DISK_ALIGN)
        .description(Some(
            "Virtual size in bytes: 1 MiB to 64 TiB, a multiple of 1 MiB.",
        ))
        .into()
}

/// A migration destination, as [`crate::Endpoint::parse`] takes it.
pub const ENDPOINT_PATTERN: &str = "^(?:unix:.*|/.*|http://[^/]+/*)$";

/// A migration destination.
pub fn endpoint_schema() -> Schema {
    string(
        ENDPOINT_PATTERN,
        "The destination daemon: `unix:/path/to/ternd.sock` or `http://HOST:PORT`.",
    )
    .into()
}

/// An optional u32 (what serde takes into `Option<u32>`), at least `min`.
pub fn optional_u32(min: u32, description: &str) -> Schema {
    optional_u64(min.into(), u32::MAX.into(), description)
}

/// Most bytes per second a disk's `max_bw` may say (the registry stores it
/// as a signed 64-bit integer).
pub const MAX_BW: u64 = i64::MAX as u64;

/// An optional whole number from `min` to `max` (null: not given).
pub fn optional_u64(min: u64, max: u64, description: &str) -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
        .minimum(Some(min))
        .maximum(Some(max))
        .description(Some(description))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_pattern_names_every_workload() {
        for k in tern_probe_abi::workload::WorkloadKind::ALL {
            let name = k.name();
            assert!(
                GUEST_PATTERN.contains(&format!("|{name}"))
                    || GUEST_PATTERN.contains(&format!("(?:{name}")),
                "the guest pattern lacks workload {name}"
            );
        }
    }

    #[test]
    fn names_follow_the_pattern_rules() {
        assert!(name_ok("a") && name_ok("_x") && name_ok("web-1.2") && name_ok(&"a".repeat(63)));
        assert!(!name_ok("") && !name_ok(".a") && !name_ok("-a") && !name_ok(&"a".repeat(64)));
        assert!(!name_ok("a b") && !name_ok("é"));
    }
}
