//! The cluster crate's errors.

use thiserror::Error;

/// What went wrong talking to etcd or reading what it holds.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// No etcd endpoint answered (at join, or later).
    #[error("etcd unreachable at {endpoints}")]
    Unreachable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// An etcd request failed.
    #[error("etcd {what} failed")]
    Etcd {
        /// The request, e.g. `lease grant`.
        what: &'static str,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// A document in etcd could not be read.
    #[error("bad document at {key}")]
    BadDocument {
        /// The etcd key.
        key: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A document in etcd has a version this build does not read.
    #[error("document at {key} has version {found}; this build reads version {expected}")]
    DocumentVersion {
        /// The etcd key.
        key: String,
        /// The version found.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// A name (node or VM) that cannot be an etcd key segment.
    #[error(
        "bad {what} name '{name}': 1-63 characters of [A-Za-z0-9._-], not starting with '.' or '-'"
    )]
    BadName {
        /// `node` or `vm`.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// Another live process already holds this node name.
    #[error("node '{0}' is already up in the cluster (another daemon holds its lease)")]
    NodeAlreadyUp(String),
    /// The node is not a member of the cluster.
    #[error("unknown node '{0}'")]
    UnknownNode(String),
    /// The VM is not clustered.
    #[error("unknown clustered VM '{0}'")]
    UnknownVm(String),
    /// The VM is owned by a live node.
    #[error("VM '{vm}' is owned by node '{owner}' (fencing token {token})")]
    Owned {
        /// The VM.
        vm: String,
        /// Its current owner.
        owner: String,
        /// The owner's fencing token.
        token: i64,
    },
    /// The ownership given is no longer the one in etcd.
    #[error("VM '{vm}': ownership with fencing token {token} is no longer held")]
    NotOwner {
        /// The VM.
        vm: String,
        /// The stale token.
        token: i64,
    },
    /// The node's lease is gone (expired or revoked): nothing it claimed holds.
    #[error("node '{0}' lost its lease")]
    LeaseLost(String),
    /// A settings value out of range.
    #[error("bad cluster setting: {0}")]
    BadSetting(&'static str),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ClusterError>;

/// Wraps an etcd error with the request that failed.
pub(crate) fn etcd(what: &'static str) -> impl FnOnce(etcd_client::Error) -> ClusterError {
    move |source| ClusterError::Etcd { what, source }
}

/// Whether the request never reached a member: the client's balancer sent it
/// to a member that is down (connection refused). Such a request is safe to
/// send again; it then goes to another member.
fn unreached(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::Unavailable,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Runs an etcd request, sending it again (a few times, briefly apart) while
/// it did not reach a member.
pub(crate) async fn retry<T, F, Fut>(what: &'static str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let mut tries = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if tries < 6 && unreached(&e) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(25 << tries)).await;
            }
            Err(source) => return Err(ClusterError::Etcd { what, source }),
        }
    }
}
