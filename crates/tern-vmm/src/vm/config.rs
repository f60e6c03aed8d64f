//! What a VM is built from ([`VmConfig`], [`Guest`]), how it ends
//! ([`VmExit`]) and what can go wrong ([`VmError`]).

use std::path::PathBuf;

use tern_devices::serial::SerialMode;

use crate::boot::probe::ProbeError;
use crate::control::{ControlError, RunState};
use crate::memory::{Backing, MemoryError, MemorySource};
use crate::state::StateError;
use crate::x86::X86Error;

/// What to boot.
#[derive(Clone, Debug)]
pub enum Guest {
    /// The probe guest image running a workload (the text after `probe:`).
    Probe {
        /// The probe guest ELF.
        image: PathBuf,
        /// Workload string, see `tern_probe_abi::workload`.
        workload: String,
    },
    /// A Linux kernel (bzImage or ELF vmlinux).
    Linux {
        /// The kernel image.
        kernel: PathBuf,
        /// Optional initrd.
        initrd: Option<PathBuf>,
        /// Kernel command line.
        cmdline: String,
    },
}

/// Everything needed to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// How RAM is backed.
    pub backing: Backing,
    /// What to boot.
    pub guest: Guest,
    /// Where COM1 goes.
    pub serial: SerialMode,
    /// The KVM device node.
    pub kvm_path: PathBuf,
    /// Initial memory contents.
    pub memory_source: MemorySource,
    /// Disks (virtio-blk), in the order the guest sees them.
    pub disks: Vec<crate::devices::DiskConfig>,
    /// NICs (virtio-net on taps), in the order the guest sees them.
    pub nics: Vec<crate::devices::nics::NicConfig>,
    /// The SCSI controller's LUNs (a controller, in the slot after the
    /// NICs', when there is any).
    pub scsi: crate::devices::scsi::ScsiConfig,
    /// The vsock device (after the disks and NICs), if any.
    pub vsock: Option<crate::devices::vsock::VsockConfig>,
    /// Allocate and map all of RAM before the VM runs (QEMU's
    /// `prealloc=on`): no page faults later, all memory committed now.
    pub prealloc: bool,
    /// The CPU the guest is shown (a restore uses the saved one).
    pub cpu_model: crate::cpuid::CpuModel,
}

impl VmConfig {
    /// A config with defaults: `/dev/kvm`, anonymous memory, serial on stdout.
    pub fn new(vcpus: u32, memory: u64, guest: Guest) -> Self {
        VmConfig {
            vcpus,
            memory,
            backing: Backing::Anonymous,
            guest,
            serial: SerialMode::Stdout,
            kvm_path: "/dev/kvm".into(),
            memory_source: MemorySource::Fresh,
            disks: Vec::new(),
            nics: Vec::new(),
            scsi: Default::default(),
            vsock: None,
            prealloc: false,
            cpu_model: crate::cpuid::CpuModel::Host,
        }
    }
}

/// How a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reported an exit status through the test port.
    Guest(u32),
    /// Stopped by request (shutdown).
    Stopped,
    /// The guest powered itself off (ACPI S5 through the sleep control
    /// register).
    PoweredOff,
    /// The guest asked for a reset (reboot: the ACPI reset register, the
    /// i8042 reset line or a KVM reset event); Tern stops it.
    Reset,
    /// The guest crashed or KVM failed.
    Crashed {
        /// The vCPU that hit it.
        vcpu: u32,
        /// What happened (exit reason).
        reason: String,
        /// The vCPU's instruction pointer.
        rip: u64,
    },
}

/// Errors creating or controlling a VM. Each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open {path} (is KVM enabled and accessible to this user?)")]
    KvmOpen {
        /// The device node.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The device node is not KVM.
    #[error("{0} is not a KVM device (KVM_GET_API_VERSION failed or is not 12)")]
    NotKvm(PathBuf),
    /// Zero vCPUs.
    #[error("a VM needs at least 1 vCPU")]
    NoVcpus,
    /// More vCPUs than allowed.
    #[error("{requested} vCPUs requested, but {limit} allows at most {max}")]
    TooManyVcpus {
        /// Requested count.
        requested: u32,
        /// Who sets the limit.
        limit: &'static str,
        /// The limit.
        max: u32,
    },
    /// More memory than the host has.
    #[error("{requested} bytes of guest memory requested, but this host has only {host} bytes")]
    TooMuchMemory {
        /// Requested bytes.
        requested: u64,
        /// Host RAM.
        host: u64,
    },
    /// The probe workload does not parse.
    #[error("{0}")]
    Workload(String),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The probe guest image.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The Linux kernel.
    #[error(transparent)]
    Linux(#[from] crate::boot::linux::LinuxError),
    /// CPU setup.
    #[error(transparent)]
    X86(#[from] X86Error),
    /// The guest's CPUID.
    #[error(transparent)]
    Cpuid(#[from] crate::cpuid::CpuidError),
    /// The serial console.
    #[error(transparent)]
    Serial(#[from] tern_devices::serial::SerialError),
    /// A KVM ioctl failed.
    #[error("KVM: cannot {what}")]
    Kvm {
        /// What was attempted.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A thread could not be started.
    #[error("cannot start vCPU thread")]
    Thread(#[source] std::io::Error),
    /// A run-control request failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Saving or restoring state.
    #[error(transparent)]
    State(#[from] StateError),
    /// State can only be saved from a paused VM.
    #[error("the VM must be paused to save its state (it is {0:?})")]
    NotPaused(RunState),
    /// The probe guest's status page could not be accessed.
    #[error("cannot access the probe status page")]
    StatusPage(#[source] vm_memory::GuestMemoryError),
    /// A disk could not be attached or changed.
    #[error(transparent)]
    Disk(#[from] crate::devices::DiskError),
    /// The machine cannot be described in ACPI tables.
    #[error("cannot build the ACPI tables")]
    Acpi(#[source] tern_acpi::AcpiError),
    /// The VM has no ACPI power button (a probe guest).
    #[error("this VM has no ACPI power button (only Linux guests have one)")]
    NoPowerButton,
    /// Raising the power button's interrupt failed.
    #[error("cannot raise the power button interrupt")]
    PowerButton(#[source] std::io::Error),
    /// A NIC could not be attached or changed.
    #[error(transparent)]
    Nic(#[from] crate::devices::nics::NicError),
    /// The SCSI controller could not be attached or changed (boxed: it
    /// is the largest error and would make every `VmError` as large).
    #[error(transparent)]
    Scsi(Box<crate::devices::scsi::ScsiError>),
    /// The vsock device could not be attached.
    #[error(transparent)]
    Vsock(#[from] crate::devices::vsock::VsockError),
}

impl From<crate::devices::scsi::ScsiError> for VmError {
    fn from(e: crate::devices::scsi::ScsiError) -> Self {
        VmError::Scsi(Box::new(e))
    }
}

/// Host RAM in bytes, from /proc/meminfo.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
