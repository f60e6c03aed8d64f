//! `ternd`, the host daemon: the VM registry in SQLite, one `tern run`
//! worker per running VM under supervision, and the REST API.
//!
//! A worker's crash marks its VM failed with the reason and never takes the
//! daemon down; nothing is restarted silently. Workers run in their own
//! process groups and outlive the daemon: a restarted daemon finds them
//! again ([`daemon::Daemon::reattach`]).
//!
//! # Layers
//!
//! Dependencies point down only; no module imports one above it.
//!
//! 1. Foundations, which know nothing of the daemon: [`config`] (settings
//!    and file locations), [`registry`] (the database), [`worker`] (a
//!    worker process seen from outside: spawning it, its control socket, its
//!    console), then [`error`] (the operations' errors) and [`validation`]
//!    (checks of request values).
//! 2. The core, [`daemon`]: the [`Daemon`] value (settings, registry,
//!    tracked workers, per-VM locks, migration records) and the helpers every
//!    operation shares. It calls no operation.
//! 3. [`supervise`]: launching a worker for a VM, waiting until it answers,
//!    recording its end, finding workers again after a restart.
//! 4. The operations, each on the core and supervision: [`lifecycle`]
//!    (create, start, stop, pause, save, restore, delete, console),
//!    [`disks`], [`storage_move`], [`checkpoints`], [`migration`]; and [`metrics`], which
//!    only reads (the registry, the workers' status, `/proc`).
//! 5. The edge: [`api`] (HTTP routes onto the operations), [`web`] (the
//!    embedded web page) and [`server`] (listeners, the `ternd` command
//!    line).
//!
//! Supervision and the operations are `impl Daemon` blocks in their own
//! modules (or free functions taking `&Daemon`), so the core stays small and
//! the API calls them as methods.

pub mod api;
pub mod checkpoints;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod disks;
pub mod error;
pub mod failover;
pub mod lifecycle;
pub mod metrics;
pub mod migration;
pub mod registry;
pub mod server;
pub mod storage_move;
pub mod supervise;
pub mod switches;
pub mod validation;
pub mod web;
pub mod worker;

pub use config::Config;
pub use daemon::Daemon;
