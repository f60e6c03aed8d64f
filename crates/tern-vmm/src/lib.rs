//! Tern's VMM core: the KVM VM, guest memory with dirty tracking, vCPUs and
//! boot loaders.
//!
//! A [`Vm`] is built from a [`VmConfig`] by [`Vm::create`] (which checks the
//! configuration and loads the guest) and run by [`Vm::start`]; the caller
//! then controls it (pause, resume, stop, dirty log) and waits for its
//! [`VmExit`].

pub mod acpi;
pub mod boot;
pub mod control;
pub mod cpuid;
pub mod devices;
pub mod memory;
pub mod state;
pub mod vm;
pub mod x86;

pub use control::RunState;
pub use cpuid::CpuModel;
pub use memory::{Backing, MemorySource, PreparedRam};
pub use state::VmState;
pub use vm::{Guest, Vm, VmConfig, VmError, VmExit, VmHooks};
