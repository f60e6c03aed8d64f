//! `hello`: what a worker binary speaks and can do. A daemon asks it
//! before it trusts a worker (`tern worker hello` prints the same without
//! starting a VM).

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks. Bumped on a change an older
/// peer would misread; additions with defaults do not bump it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Protocol versions a client of this crate understands.
pub const SUPPORTED_PROTOCOLS: RangeInclusive<u32> = 1..=PROTOCOL_VERSION;

/// `hello`: protocol version, product version and capabilities.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {}

/// Reply to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The worker's protocol version.
    pub protocol: u32,
    /// The worker binary's product version (`tern --version`).
    pub product: String,
    /// Newest [`LaunchSpec`](crate::LaunchSpec) version the worker reads
    /// (it reads every older one too).
    pub launch_spec: u32,
    /// What it can do.
    pub capabilities: Vec<Capability>,
}

/// Something a worker can do; a capability this client does not know
/// reads as [`Capability::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `save` and restoring a saved directory.
    SaveRestore,
    /// `migrate*` and waiting for an incoming migration.
    Migration,
    /// `checkpoint-*` with a checkpoint directory.
    Checkpoints,
    /// `export`.
    Export,
    /// Disks (raw), with QoS limits and live resize.
    Disks,
    /// VHDX disks.
    Vhdx,
    /// Guest memory in a memfd (same-host migration hands it over).
    Memfd,
    /// Preallocated guest memory.
    Prealloc,
    /// `console-input`.
    ConsoleInput,
    /// Started from a [`LaunchSpec`](crate::LaunchSpec) (`tern run
    /// --launch`).
    LaunchSpec,
    /// The launch spec's `listening_file`: an incoming worker says where
    /// it listens in a typed document.
    ListeningFile,
    /// `power-button` (Linux guests with ACPI).
    PowerButton,
    /// `storage-move*`: moving a running VM's disk image.
    StorageMove,
    /// A capability newer than this client.
    #[serde(other)]
    Unknown,
}

/// A worker speaking a protocol version this client does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the worker ({product}) speaks protocol version {found}; this client understands versions {}..={}: use a worker and a client of the same Tern release",
    supported.start(), supported.end()
)]
pub struct VersionError {
    /// The worker's version.
    pub found: u32,
    /// What this client understands.
    pub supported: RangeInclusive<u32>,
    /// The worker's product version.
    pub product: String,
}

impl HelloReply {
    /// This crate's reply for a worker of product version `product` that
    /// has `capabilities`.
    pub fn new(product: impl Into<String>, capabilities: Vec<Capability>) -> Self {
        HelloReply {
            protocol: PROTOCOL_VERSION,
            product: product.into(),
            launch_spec: crate::launch::LAUNCH_SPEC_VERSION,
            capabilities,
        }
    }

    /// Refuses a protocol version this client does not understand.
    pub fn check(&self) -> Result<(), VersionError> {
        if SUPPORTED_PROTOCOLS.contains(&self.protocol) {
            Ok(())
        } else {
            Err(VersionError {
                found: self.protocol,
                supported: SUPPORTED_PROTOCOLS,
                product: self.product.clone(),
            })
        }
    }

    /// Whether the worker has `cap`.
    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }
}
