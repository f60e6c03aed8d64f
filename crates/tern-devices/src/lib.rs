//! Tern's device models: the I/O buses, the 16550 serial port and the probe
//! guest's test port. Nothing here issues KVM ioctls; the VMM wires devices
//! to KVM (irqfds, exits) through the small traits defined here.

pub mod bus;
pub mod fuzzing;
pub mod serial;
pub mod testport;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
