//! Host side of Tern's VM networking: a tap device carrying frames with
//! the virtio-net header ([`tap::Tap`]) and MAC addresses ([`mac::Mac`]);
//! with the `switch` feature, virtual switches: bridges over netlink
//! ([`bridge`]), port policies in nftables ([`policy`]), bandwidth caps and
//! mirroring with tc ([`shaping`]) and carrier monitoring ([`monitor`]).
//!
//! The tap is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a
//! 12-byte header (virtio 1.x's `virtio_net_hdr` with `num_buffers`), so a
//! frame moves between the guest's ring and the kernel with its offload
//! metadata intact and no translation, as Firecracker and Cloud
//! Hypervisor do.

pub mod mac;
pub mod tap;

#[cfg(feature = "switch")]
pub mod bridge;
#[cfg(feature = "switch")]
pub mod monitor;
#[cfg(feature = "switch")]
pub mod policy;
#[cfg(feature = "switch")]
pub mod shaping;

pub use mac::{Mac, MacError};
pub use tap::{Offloads, Tap, TapError, VNET_HDR_LEN};
