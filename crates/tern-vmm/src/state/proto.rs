#![allow(missing_docs)] // Field names mirror the KVM structures they encode.
//! Saved-state types: the encoding of a VM's CPU and device state, kept apart
//! from the runtime types and encoded with protobuf (prost) numbered fields.
//!
//! Rules (see also `docs/saved-state.md`):
//! - fields are only added, never renumbered or reused;
//! - a new field is optional: a reader that finds it absent uses the old
//!   behaviour;
//! - fields a reader does not know are found by [`super::compat`] and
//!   reported; a writer that adds a field old readers must not ignore
//!   lists it as required in the container (saved-state file, migration
//!   stream), and old readers refuse it;
//! - structures defined by the kernel's KVM ABI (`kvm_sregs`, `kvm_xsave`,
//!   `kvm_lapic_state`, ...) are stored as their exact byte images: the
//!   kernel keeps those layouts stable, and re-describing them field by
//!   field would only add ways to get them wrong.

/// General-purpose registers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Regs {
    #[prost(uint64, tag = "1")]
    pub rax: u64,
    #[prost(uint64, tag = "2")]
    pub rbx: u64,
    #[prost(uint64, tag = "3")]
    pub rcx: u64,
    #[prost(uint64, tag = "4")]
    pub rdx: u64,
    #[prost(uint64, tag = "5")]
    pub rsi: u64,
    #[prost(uint64, tag = "6")]
    pub rdi: u64,
    #[prost(uint64, tag = "7")]
    pub rsp: u64,
    #[prost(uint64, tag = "8")]
    pub rbp: u64,
    #[prost(uint64, tag = "9")]
    pub r8: u64,
    #[prost(uint64, tag = "10")]
    pub r9: u64,
    #[prost(uint64, tag = "11")]
    pub r10: u64,
    #[prost(uint64, tag = "12")]
    pub r11: u64,
    #[prost(uint64, tag = "13")]
    pub r12: u64,
    #[prost(uint64, tag = "14")]
    pub r13: u64,
    #[prost(uint64, tag = "15")]
    pub r14: u64,
    #[prost(uint64, tag = "16")]
    pub r15: u64,
    #[prost(uint64, tag = "17")]
    pub rip: u64,
    #[prost(uint64, tag = "18")]
    pub rflags: u64,
}

/// One model-specific register.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msr {
    #[prost(uint32, tag = "1")]
    pub index: u32,
    #[prost(uint64, tag = "2")]
    pub value: u64,
}

/// One vCPU.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VcpuState {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(message, optional, tag = "2")]
    pub regs: Option<Regs>,
    /// `kvm_sregs`.
    #[prost(bytes = "vec", tag = "3")]
    pub sregs: Vec<u8>,
    /// `kvm_xsave` (x87, SSE, AVX, ... state).
    #[prost(bytes = "vec", tag = "4")]
    pub xsave: Vec<u8>,
    /// `kvm_xcrs`.
    #[prost(bytes = "vec", tag = "5")]
    pub xcrs: Vec<u8>,
    /// `kvm_lapic_state`.
    #[prost(bytes = "vec", tag = "6")]
    pub lapic: Vec<u8>,
    #[prost(message, repeated, tag = "7")]
    pub msrs: Vec<Msr>,
    /// `kvm_vcpu_events`.
    #[prost(bytes = "vec", tag = "8")]
    pub events: Vec<u8>,
    /// `kvm_mp_state.mp_state`.
    #[prost(uint32, tag = "9")]
    pub mp_state: u32,
    /// The vCPU had parked itself (probe guest): it stays parked.
    #[prost(bool, tag = "10")]
    pub parked: bool,
}

/// The 16550 UART.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SerialState {
    #[prost(uint32, tag = "1")]
    pub baud_divisor_low: u32,
    #[prost(uint32, tag = "2")]
    pub baud_divisor_high: u32,
    #[prost(uint32, tag = "3")]
    pub interrupt_enable: u32,
    #[prost(uint32, tag = "4")]
    pub interrupt_identification: u32,
    #[prost(uint32, tag = "5")]
    pub line_control: u32,
    #[prost(uint32, tag = "6")]
    pub line_status: u32,
    #[prost(uint32, tag = "7")]
    pub modem_control: u32,
    #[prost(uint32, tag = "8")]
    pub modem_status: u32,
    #[prost(uint32, tag = "9")]
    pub scratch: u32,
    #[prost(bytes = "vec", tag = "10")]
    pub in_buffer: Vec<u8>,
}

/// One RAM range, to check a restore target has the same layout.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemRange {
    #[prost(uint64, tag = "1")]
    pub start: u64,
    #[prost(uint64, tag = "2")]
    pub len: u64,
}

/// A device's opaque saved state, tagged with its kind and index.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeviceState {
    /// Kind, e.g. "virtio-blk".
    #[prost(string, tag = "1")]
    pub kind: String,
    /// Index among devices of that kind.
    #[prost(uint32, tag = "2")]
    pub index: u32,
    /// The device's own encoded state.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// Everything about a paused VM except the contents of its memory.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmState {
    #[prost(message, repeated, tag = "1")]
    pub vcpus: Vec<VcpuState>,
    /// `kvm_irqchip` images: PIC master, PIC slave, IOAPIC.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub irqchips: Vec<Vec<u8>>,
    /// `kvm_pit_state2`.
    #[prost(bytes = "vec", tag = "3")]
    pub pit: Vec<u8>,
    /// kvmclock value (ns).
    #[prost(uint64, tag = "4")]
    pub clock: u64,
    /// kvmclock flags.
    #[prost(uint32, tag = "5")]
    pub clock_flags: u32,
    #[prost(message, optional, tag = "6")]
    pub serial: Option<SerialState>,
    #[prost(message, repeated, tag = "7")]
    pub memory: Vec<MemRange>,
    /// TSC frequency of the source, kHz (0 if unknown).
    #[prost(uint64, tag = "8")]
    pub tsc_khz: u64,
    #[prost(message, repeated, tag = "9")]
    pub devices: Vec<DeviceState>,
    /// Whether the guest is the probe guest (test port attached).
    #[prost(bool, tag = "10")]
    pub probe: bool,
    /// The CPU model and the CPUID the guest saw (absent in states from
    /// before CPU models: the restoring host's CPUID is used, as then).
    #[prost(message, optional, tag = "11")]
    pub cpu: Option<CpuState>,
}

/// The CPU a guest was shown: its model and CPUID template (before the
/// per-vCPU APIC ids).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CpuState {
    /// `host` or `compat`.
    #[prost(string, tag = "1")]
    pub model: String,
    #[prost(message, repeated, tag = "2")]
    pub cpuid: Vec<CpuidEntry>,
}

/// One CPUID leaf/subleaf (`kvm_cpuid_entry2` without its padding).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CpuidEntry {
    #[prost(uint32, tag = "1")]
    pub function: u32,
    #[prost(uint32, tag = "2")]
    pub index: u32,
    #[prost(uint32, tag = "3")]
    pub flags: u32,
    #[prost(uint32, tag = "4")]
    pub eax: u32,
    #[prost(uint32, tag = "5")]
    pub ebx: u32,
    #[prost(uint32, tag = "6")]
    pub ecx: u32,
    #[prost(uint32, tag = "7")]
    pub edx: u32,
}

/// One virtqueue's configuration and ring positions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VirtqueueState {
    #[prost(uint32, tag = "1")]
    pub max_size: u32,
    #[prost(uint32, tag = "2")]
    pub size: u32,
    #[prost(bool, tag = "3")]
    pub ready: bool,
    #[prost(uint64, tag = "4")]
    pub desc_table: u64,
    #[prost(uint64, tag = "5")]
    pub avail_ring: u64,
    #[prost(uint64, tag = "6")]
    pub used_ring: u64,
    #[prost(uint32, tag = "7")]
    pub next_avail: u32,
    #[prost(uint32, tag = "8")]
    pub next_used: u32,
    #[prost(bool, tag = "9")]
    pub event_idx_enabled: bool,
}

/// A virtio-mmio transport (the payload of a `DeviceState` of kind
/// `virtio-blk`). In-flight requests need no record: the device completes
/// each request before the vCPU that notified it runs on, and requests held
/// back by QoS are still on the available ring, where `next_avail` leaves
/// them to be taken again.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VirtioMmioState {
    #[prost(uint32, tag = "1")]
    pub queue_sel: u32,
    #[prost(uint32, tag = "2")]
    pub device_features_sel: u32,
    #[prost(uint32, tag = "3")]
    pub driver_features_sel: u32,
    #[prost(uint64, tag = "4")]
    pub driver_features: u64,
    #[prost(uint32, tag = "5")]
    pub status: u32,
    #[prost(uint32, tag = "6")]
    pub interrupt_status: u32,
    #[prost(uint32, tag = "7")]
    pub config_generation: u32,
    #[prost(message, repeated, tag = "8")]
    pub queues: Vec<VirtqueueState>,
}

/// A virtio-net device (the payload of a `DeviceState` of kind
/// `virtio-net`): its transport, address and link state. A frame read from
/// the tap and not yet delivered is not kept: the network may lose a
/// frame, and the guest's stack recovers as from any loss.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VirtioNetState {
    /// Version of this record (1).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(message, optional, tag = "2")]
    pub transport: Option<VirtioMmioState>,
    /// The NIC's MAC address (6 bytes).
    #[prost(bytes = "vec", tag = "3")]
    pub mac: Vec<u8>,
    #[prost(bool, tag = "4")]
    pub link_up: bool,
}

/// A virtio-scsi controller's saved state: its transport and, as one
/// versioned serde document (`devices::scsi::ScsiSaved`, JSON), its LUNs,
/// the target's state (unit attentions, tray and prevention, in-memory
/// reservations) and the device's held event buffers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VirtioScsiState {
    /// Version of this record (1).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(message, optional, tag = "2")]
    pub transport: Option<VirtioMmioState>,
    /// `devices::scsi::ScsiSaved` as JSON.
    #[prost(bytes = "vec", tag = "3")]
    pub controller: Vec<u8>,
}

/// A virtio-vsock device: its transport and the guest's CID. Connections
/// are not kept (their host streams stay with the saved process): the
/// restored device sends the guest a transport-reset event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VirtioVsockState {
    /// Version of this record (1).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(message, optional, tag = "2")]
    pub transport: Option<VirtioMmioState>,
    /// The guest's context id.
    #[prost(uint64, tag = "3")]
    pub cid: u64,
}
