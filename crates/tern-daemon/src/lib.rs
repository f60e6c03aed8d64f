//! `ternd`, the host daemon: the VM registry in SQLite, one `tern run`
//! worker per running VM under supervision, and the REST API.
//!
//! A worker's crash marks its VM failed with the reason and never takes the
//! daemon down; nothing is restarted silently. Workers run in their own
//! process groups and outlive the daemon: a restarted daemon finds them
//! again ([`daemon::Daemon::reattach`]).

pub mod api;
pub mod checkpoints;
pub mod daemon;
pub mod disks;
pub mod migration;
pub mod registry;
pub mod server;
pub mod validation;
pub mod worker;

pub use daemon::{Config, Daemon};
