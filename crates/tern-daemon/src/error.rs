//! The daemon's errors: why an operation failed ([`OpError`], which the API
//! maps to HTTP statuses) and why the daemon could not start.

use std::path::PathBuf;

use crate::registry::{OpenError, RegistryError};
use crate::worker::WorkerError;

/// Why an operation failed; the API maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// From the registry: not found (404), conflicts (409), database (500).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Something other than a VM or disk is not there (404).
    #[error("{0}")]
    NotFound(String),
    /// The feature does not exist yet (501).
    #[error("{0}")]
    NotImplemented(String),
    /// A worker could not be driven (500).
    #[error("{what}")]
    Worker {
        /// What was attempted.
        what: String,
        /// Why it failed.
        #[source]
        source: WorkerError,
    },
    /// The VM failed while the operation ran (500).
    #[error("{0}")]
    Failed(String),
    /// The other daemon of a migration refused or failed (502).
    #[error("{0}")]
    Peer(String),
    /// Refused by the cluster: another node owns the VM, or a newer owner
    /// holds its disks (409).
    #[error("{0}")]
    Conflict(String),
    /// The cluster (etcd) cannot be asked now (503).
    #[error("{0}")]
    Unavailable(String),
    /// A filesystem operation failed (500).
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

impl OpError {
    /// A feature the worker binary lacks (`needs` says what it would have).
    pub fn not_implemented(what: &str, needs: &str) -> OpError {
        OpError::NotImplemented(format!(
            "{what} is not implemented yet: the VM worker ({needs}) lacks it"
        ))
    }
}

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A directory could not be created.
    #[error("cannot create {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The registry could not be opened.
    #[error("cannot open the registry {path}")]
    Registry {
        /// The database.
        path: PathBuf,
        /// Why.
        #[source]
        source: OpenError,
    },
}

/// One line: an error and its sources (see [`tern_error::chain`]).
pub use tern_error::chain;
