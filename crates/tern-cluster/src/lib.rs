//! Failover clustering on etcd.
//!
//! - [`membership`]: one etcd lease per node, kept alive; node states and a
//!   watch giving typed up/down events.
//! - [`vm`]: clustered VMs' configuration, stored in etcd.
//! - [`ownership`]: per-VM owner keys claimed in a transaction; the claim's
//!   revision is its fencing token.
//! - [`placement`]: where an unowned VM goes.
//! - [`fence`]: the fencing token recorded beside each disk image.
//! - [`keys`] and [`wire`]: the etcd key layout and the versioned documents.

pub mod error;
pub mod fence;
pub mod keys;
pub mod membership;
pub mod ownership;
pub mod placement;
#[cfg(feature = "testing")]
pub mod testing;
pub mod vm;
pub mod wire;

pub use error::{ClusterError, Result};
pub use etcd_client::Client;
pub use membership::{
    connect, Membership, NodeEvent, NodeEvents, NodeSpec, NodeState, NodeStatus, Renewal,
    DEFAULT_TTL,
};
pub use ownership::Claim;
pub use placement::{Placement, Plan, Unplaced};
pub use vm::{ClusterDisk, ClusterVm, DiskFormat, Priority};
