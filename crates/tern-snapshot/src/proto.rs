//! The encoded types of saved states and checkpoint trees (prost, numbered
//! fields), kept apart from the runtime types they describe. The rules for
//! changing them are in the crate documentation.

use tern_vmm::state::proto::VmState;

/// A saved VM: how to rebuild it and where it was.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    /// How to build the VM.
    #[prost(message, optional, tag = "1")]
    pub config: Option<Config>,
    /// CPU and device state (memory excluded).
    #[prost(message, optional, tag = "2")]
    pub state: Option<VmState>,
    /// Dotted field paths (`2.1.12`) that a reader must understand: a
    /// reader that finds one of them unknown refuses the file.
    #[prost(string, repeated, tag = "3")]
    pub required: Vec<String>,
    /// The memory image beside this file.
    #[prost(message, optional, tag = "4")]
    pub memory: Option<MemoryImage>,
    /// When it was written, milliseconds since the Unix epoch.
    #[prost(uint64, tag = "5")]
    pub created_unix_ms: u64,
    /// The writer, e.g. `tern 0.1.0`.
    #[prost(string, tag = "6")]
    pub writer: String,
}

/// The VM's configuration (what `tern run` was given).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Config {
    /// vCPUs.
    #[prost(uint32, tag = "1")]
    pub vcpus: u32,
    /// Guest RAM in bytes.
    #[prost(uint64, tag = "2")]
    pub memory: u64,
    /// RAM backed by a memfd.
    #[prost(bool, tag = "3")]
    pub memfd: bool,
    /// The probe guest, when it is one.
    #[prost(message, optional, tag = "4")]
    pub probe: Option<ProbeGuest>,
    /// A Linux guest, when it is one.
    #[prost(message, optional, tag = "5")]
    pub linux: Option<LinuxGuest>,
    /// Disks in guest order.
    #[prost(message, repeated, tag = "6")]
    pub disks: Vec<Disk>,
    /// NICs in guest order.
    #[prost(message, repeated, tag = "7")]
    pub nics: Vec<Nic>,
    /// The vsock device, if any.
    #[prost(message, optional, tag = "8")]
    pub vsock: Option<Vsock>,
}

/// The vsock device.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Vsock {
    /// The guest's CID.
    #[prost(uint64, tag = "1")]
    pub cid: u64,
    /// The host-side socket (absolute).
    #[prost(string, tag = "2")]
    pub socket: String,
}

/// One NIC.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Nic {
    /// The host tap.
    #[prost(string, tag = "1")]
    pub tap: String,
    /// The configured MAC (6 bytes), empty when derived.
    #[prost(bytes = "vec", tag = "2")]
    pub mac: Vec<u8>,
}

/// The probe guest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProbeGuest {
    /// Image path (only needed to boot, not to restore).
    #[prost(string, tag = "1")]
    pub image: String,
    /// Workload string.
    #[prost(string, tag = "2")]
    pub workload: String,
}

/// A Linux guest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxGuest {
    /// Kernel path.
    #[prost(string, tag = "1")]
    pub kernel: String,
    /// Initrd path (empty: none).
    #[prost(string, tag = "2")]
    pub initrd: String,
    /// Command line.
    #[prost(string, tag = "3")]
    pub cmdline: String,
}

/// One disk.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Disk {
    /// Image path: absolute in saved states and checkpoints, relative to
    /// the export directory in exports.
    #[prost(string, tag = "1")]
    pub path: String,
    /// Read-only.
    #[prost(bool, tag = "2")]
    pub read_only: bool,
    /// QoS maximum, normalized IOPS (0: none).
    #[prost(uint64, tag = "3")]
    pub max_iops: u64,
    /// QoS minimum, normalized IOPS (0: none).
    #[prost(uint64, tag = "4")]
    pub min_iops: u64,
    /// QoS maximum bytes per second (0: none).
    #[prost(uint64, tag = "5")]
    pub max_bw: u64,
    /// Served by its own polling thread.
    #[prost(bool, tag = "6")]
    pub poll: bool,
    /// Image format: `raw`, `vhdx`, or empty (by file name; states
    /// written before the field existed).
    #[prost(string, tag = "7")]
    pub format: String,
}

/// The memory image of a saved state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemoryImage {
    /// File name beside the state file.
    #[prost(string, tag = "1")]
    pub file: String,
    /// Its exact size in bytes (all RAM regions back to back).
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// False for a checkpoint taken without memory (reverting to it
    /// boots the guest again from its disks).
    #[prost(bool, tag = "3")]
    pub included: bool,
}

/// One checkpoint in a VM's tree.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Checkpoint {
    /// Unique id (a counter, never reused).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The user's name for it.
    #[prost(string, tag = "2")]
    pub name: String,
    /// The checkpoint the VM derived from when this one was taken (0: none).
    #[prost(uint64, tag = "3")]
    pub parent: u64,
    /// When taken, milliseconds since the Unix epoch.
    #[prost(uint64, tag = "4")]
    pub created_unix_ms: u64,
    /// Whether memory and device state were saved.
    #[prost(bool, tag = "5")]
    pub memory: bool,
    /// Per disk, the image frozen at this checkpoint (file name in the
    /// store's disk folder, or the original absolute path).
    #[prost(string, repeated, tag = "6")]
    pub disks: Vec<String>,
}

/// A VM's checkpoints.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckpointTree {
    /// Every checkpoint, oldest first.
    #[prost(message, repeated, tag = "1")]
    pub checkpoints: Vec<Checkpoint>,
    /// The checkpoint the running VM derives from (0: none).
    #[prost(uint64, tag = "2")]
    pub current: u64,
    /// The next id to hand out.
    #[prost(uint64, tag = "3")]
    pub next_id: u64,
    /// Dotted field paths a reader must understand (as in [`Snapshot`]).
    #[prost(string, repeated, tag = "4")]
    pub required: Vec<String>,
}
