//! Small wire types several requests and the launch spec share.

use serde::{Deserialize, Serialize};

/// A VM's run state as the worker reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// vCPUs run.
    Running,
    /// vCPUs are paused.
    Paused,
    /// The VM is being stopped; the worker exits soon.
    Stopping,
    /// The VM is off; the worker exits soon.
    Stopped,
    /// The VM was saved (a `save` reply); the worker exits soon.
    Saved,
}

/// A disk image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFormat {
    /// Byte `n` of the file is byte `n` of the disk.
    Raw,
    /// VHDX (fixed, dynamic or differencing).
    Vhdx,
}

impl DiskFormat {
    /// The format's name (`raw`, `vhdx`).
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Vhdx => "vhdx",
        }
    }
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "vhdx" => Ok(DiskFormat::Vhdx),
            other => Err(format!(
                "unknown disk format '{other}' (expected raw or vhdx)"
            )),
        }
    }
}

/// A disk's storage QoS limits; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct QosLimits {
    /// Most normalized IOPS (each 8 KiB of a request counts as one).
    pub max_iops: u64,
    /// Reserved normalized IOPS (events when not met).
    pub min_iops: u64,
    /// Most bytes per second.
    pub max_bw: u64,
}

impl QosLimits {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == QosLimits::default()
    }
}
