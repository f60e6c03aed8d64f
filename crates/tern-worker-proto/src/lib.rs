//! The VM worker's protocol, as types: what a daemon or the CLI says to a
//! `tern run` worker over its control socket, what the worker answers, and
//! the launch spec that tells a worker which VM to run.
//!
//! - [`Request`]: every control request, one struct per request (module
//!   [`requests`]), each with its own reply type through [`Call`]
//!   (the request/reply pairing of Cloud Hypervisor's `ApiAction`).
//! - [`WorkerError`]: a refused request, with an [`ErrorCode`] callers
//!   match on instead of the message text.
//! - [`migration`]: migration progress and outcome as enums.
//! - [`storage_move`]: moving a running VM's disk image on one host.
//! - [`Hello`]: protocol version, product version and capabilities; a
//!   client refuses a worker whose protocol version it does not know.
//! - [`LaunchSpec`]: the whole VM configuration as one versioned document.
//! - [`Listening`]: where a worker waiting for a migration listens.
//! - [`Client`] (blocking) and `AsyncClient` (tokio, feature `async`).
//!
//! # Wire
//!
//! One JSON request per line, one JSON reply per line, on a UNIX stream
//! socket. A request is `{"cmd":"NAME",...fields}`; a reply is
//! `{"ok":true,...fields of the typed reply}` or
//! `{"ok":false,"error":"message","code":"not-found"}`. The encoding is
//! the one the worker spoke before it was typed, so `socat` users and old
//! scripts keep working.
//!
//! This crate knows nothing of KVM, the VMM or the host daemon.

mod client;
mod endpoint;
mod error;
pub mod fuzzing;
pub mod hello;
pub mod launch;
pub mod listening;
pub mod migration;
pub mod requests;
pub mod storage_move;
mod types;
pub mod wire;

#[cfg(feature = "async")]
mod async_client;

#[cfg(feature = "async")]
pub use async_client::AsyncClient;
pub use client::{Client, ClientError, Connection};
pub use endpoint::{Endpoint, EndpointError};
pub use error::{ErrorCode, WorkerError};
pub use hello::{Capability, Hello, HelloReply, VersionError, PROTOCOL_VERSION};
pub use launch::{
    DiskSpec, LaunchSpec, LaunchSpecError, NicSpec, ScsiLunKind, ScsiLunSpec, VsockSpec,
    LAUNCH_SPEC_VERSION,
};
pub use listening::{Listening, ListeningError};
pub use types::{DiskFormat, QosLimits, VmState};
pub use wire::{Call, Request};

#[cfg(test)]
mod tests;
