//! Tern's VMM core: the KVM VM, guest memory with dirty tracking, vCPUs and
//! boot loaders.

pub mod boot;
pub mod memory;
