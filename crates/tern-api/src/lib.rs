//! Tern's REST API: the request and response types, the OpenAPI document
//! and a client.
//!
//! The daemon (`ternd`, crate `tern-daemon`) serves the API; the CLI (`tern
//! vm ...`) uses [`client::Client`].

pub mod client;
pub mod fuzzing;
pub mod limits;
pub mod openapi;
pub mod storage_move;
pub mod types;

pub use client::{Client, ClientError, Endpoint};
/// The HTTP method type [`Client::raw`] takes.
pub use hyper::Method;
pub use storage_move::{DiskMove, DiskMoveState, MoveDisk};
pub use types::*;
