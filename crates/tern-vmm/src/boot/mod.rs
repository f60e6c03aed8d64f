//! Loading guests into memory: the probe guest and Linux.

pub mod linux;
pub mod probe;
pub mod secure_boot;
