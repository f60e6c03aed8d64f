//! Tern live migration.
//!
//! A VM worker sends its running VM to another worker ([`migrate`]); the
//! other worker, started with `tern run --incoming`, receives it
//! ([`receive`]), builds the VM around the received memory and state,
//! waits for the source's commit, starts it, and confirms. Whatever fails
//! before the commit (the destination dies, the network breaks, the user
//! cancels, the timeout expires), the source VM runs on with its memory
//! intact, and a new attempt can follow.
//!
//! Disks are handed over through their image locks (shared storage): the
//! source flushes and closes them at switchover, the destination opens
//! them, and only after the destination has everything does the source
//! commit; then it never resumes on its own.
//!
//! The wire protocol and the destination's state machine follow (the same
//! text as `docs/migration-protocol.md`, included from there).
#![doc = include_str!("../../../docs/migration-protocol.md")]

#[cfg(test)]
mod codec_tests;
pub mod compress;
pub mod delta;
pub mod disk_mirror;
pub mod disk_receive;
pub mod disk_wire;
pub mod fuzzing;
pub mod hostmem;
pub mod pages;
pub mod progress;
pub mod receiver;
pub mod sender;
pub mod stream_codec;
pub mod transport;
pub mod version;
pub mod wire;

pub use compress::Compression;
pub use progress::{Phase, Progress, Snapshot};
pub use receiver::{receive, receive_with, IncomingMemory, ReceiveError, ReceiveOptions, Received};
pub use sender::{config_check, migrate, MigrateError, MigrateOptions, TimeoutAction};
pub use transport::{Endpoint, Listener};
pub use version::{Version, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
pub use wire::Codec;
