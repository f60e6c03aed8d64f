//! The contract between Tern's VMM and the probe guest.
//!
//! The probe guest is a freestanding program the VMM enters directly at CPL 3
//! in 64-bit mode (see `ARCHITECTURE.md`, "Guests on these machines"). Both
//! sides compile this crate, so the memory layout, the test ports, the
//! workload grammar and the page-stamp format cannot drift apart.
//!
//! `no_std` and allocation-free: the guest has neither.
#![no_std]
#![forbid(unsafe_code)]

pub mod blk;
pub mod scsi;
pub mod stamp;
pub mod workload;

pub use workload::{ParseError, Step, Steps, WorkloadKind};

/// Guest-physical address of the [`BootInfo`] page the VMM fills before boot.
pub const BOOT_INFO_ADDR: u64 = 0x7000;
/// Guest-physical address of the [`Status`] page (guest writes, VMM reads;
/// the VMM writes only [`Status::command`] and [`Status::touch_request`]).
pub const STATUS_ADDR: u64 = 0x8000;
/// Start of the page tables the VMM builds (PML4, PDPT, then page directories).
pub const PAGE_TABLES_ADDR: u64 = 0x9000;
/// Start of the GDT the VMM writes (null, code64 DPL0, data DPL0, code64 DPL3,
/// data DPL3, TSS).
pub const GDT_ADDR: u64 = 0x500;
/// Bottom of the region holding the per-vCPU stacks.
pub const STACKS_BASE: u64 = 0x10_0000;
/// Size of one vCPU's stack.
pub const STACK_SIZE: u64 = 0x4000;
/// Most vCPUs the probe guest supports (stacks must fit below the image).
pub const MAX_VCPUS: u32 = ((IMAGE_BASE - STACKS_BASE) / STACK_SIZE) as u32;
/// Where the probe guest's ELF image is linked (`.text` starts here).
pub const IMAGE_BASE: u64 = 0x20_0000;
/// First byte of the workload data area; everything below is reserved.
pub const DATA_BASE: u64 = 0x100_0000;
/// Start of the memory the probe's device drivers use for virtqueues and
/// I/O buffers (the probe image must end below it).
pub const DEVICE_MEM_BASE: u64 = 0x80_0000;
/// Size of the device memory area (up to [`DATA_BASE`]).
pub const DEVICE_MEM_SIZE: u64 = DATA_BASE - DEVICE_MEM_BASE;
/// Most devices described in [`BootInfo::devices`].
pub const MAX_DEVICES: usize = 8;
/// [`DeviceInfo::kind`] of a virtio-mmio block device.
pub const DEVICE_VIRTIO_BLK: u32 = 2;
/// [`DeviceInfo::kind`] of a virtio-mmio network device (its virtio id).
pub const DEVICE_VIRTIO_NET: u32 = 1;
/// [`DeviceInfo::kind`] of a virtio-mmio SCSI controller (its virtio id).
pub const DEVICE_VIRTIO_SCSI: u32 = 8;
/// [`DeviceInfo::kind`] of a virtio-mmio socket (vsock) device (its
/// virtio id).
pub const DEVICE_VIRTIO_VSOCK: u32 = 19;
/// Guest page size used by the probe's workloads.
pub const PAGE_SIZE: u64 = 4096;

/// Top of vCPU `index`'s stack (the VMM sets RSP to this minus 8 so the
/// entry's prologue sees the alignment a `call` would leave).
pub const fn stack_top(index: u32) -> u64 {
    STACKS_BASE + (index as u64 + 1) * STACK_SIZE
}

/// Serial port (COM1) the guest prints on.
pub const PORT_SERIAL: u16 = 0x3f8;
/// 32-bit `out`: the guest is done; the value is its exit status.
pub const PORT_EXIT: u16 = 0xf4;
/// 32-bit `out`: this vCPU has nothing more to do; the VMM stops running it.
pub const PORT_PARK: u16 = 0xf6;
/// 32-bit `out`: guest-physical address of a [`Report`] to read.
pub const PORT_REPORT: u16 = 0xf8;

/// Exit status: the workload passed.
pub const EXIT_PASS: u32 = 0;
/// Exit status: the workload ran and found a failure (for example a bad stamp).
pub const EXIT_FAIL: u32 = 1;
/// Exit status: the workload string could not be understood.
pub const EXIT_BAD_WORKLOAD: u32 = 2;
/// Exit status: the guest panicked.
pub const EXIT_PANIC: u32 = 3;

/// `BootInfo::magic`: "TERNPRB1".
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"TERNPRB1");
/// `Status::magic`: "TERNSTA1", written by the guest once it started.
pub const STATUS_MAGIC: u64 = u64::from_le_bytes(*b"TERNSTA1");
/// Version of this contract; the guest refuses a boot info of another one.
pub const ABI_VERSION: u32 = 2;
/// Most bytes of workload text the VMM can pass.
pub const WORKLOAD_MAX: usize = 2048;
/// Most RAM regions described to the guest.
pub const MAX_MEM_REGIONS: usize = 4;
/// Largest report payload in bytes.
pub const REPORT_MAX: u32 = 4000;

/// One range of guest RAM.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRegion {
    /// Guest-physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What the VMM tells the guest before boot, at [`BOOT_INFO_ADDR`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub version: u32,
    /// Number of vCPUs started.
    pub vcpus: u32,
    /// TSC frequency in kHz (for rate control; 0 if unknown).
    pub tsc_khz: u64,
    /// Number of valid entries in `mem`.
    pub mem_count: u32,
    /// Length of the workload text.
    pub workload_len: u32,
    /// RAM ranges, ascending.
    pub mem: [MemRegion; MAX_MEM_REGIONS],
    /// Workload text (the part after `probe:`), UTF-8.
    pub workload: [u8; WORKLOAD_MAX],
    /// Number of valid entries in `devices`.
    pub device_count: u32,
    /// Padding.
    pub _pad: u32,
    /// Devices: the disks first, in the order of the `disk=N` workload
    /// parameter, then the NICs, in the order of `nic=N`.
    pub devices: [DeviceInfo; MAX_DEVICES],
}

/// A device the VMM attached (virtio-mmio, version 2 transport).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// [`DEVICE_VIRTIO_BLK`], [`DEVICE_VIRTIO_NET`] or [`DEVICE_VIRTIO_VSOCK`].
    pub kind: u32,
    /// The interrupt line (the probe polls, but reports it).
    pub irq: u32,
    /// Guest-physical base of the MMIO register window.
    pub mmio_base: u64,
    /// Size of the window.
    pub mmio_len: u64,
}

/// Commands the VMM writes into [`Status::command`].
///
/// The VMM writes a command and waits for [`Status::command_ack`] to grow.
/// The open-ended step running then (or the next one to start) takes it by
/// writing [`NONE`](command::NONE) back and then incrementing `command_ack`,
/// so one STOP ends exactly one step, and the VMM may write the next STOP,
/// for a later step, as soon as it saw the acknowledgement, without clearing
/// the mailbox itself.
pub mod command {
    /// Nothing asked.
    pub const NONE: u32 = 0;
    /// Finish the current open-ended step (`dirty`, `touch`) and go on.
    pub const STOP: u32 = 1;
    /// Written by the VMM only into a restored probe image that predates
    /// the continuous clock ([`Status::tsc`](super::Status::tsc) still 0)
    /// when the host could not carry the guest's TSC over and it went
    /// backwards: every wait of those images ends on any command, so the
    /// VMM paces their `dirty` step from outside by holding WAKE while the
    /// step is behind its rate and NONE while it is ahead (other waiting
    /// steps are woken for good). Nothing in the guest takes it; a STOP
    /// replaces it. Images with the continuous clock take TSC jumps out
    /// themselves and never get it.
    pub const WAKE: u32 = 2;
}

/// Phases the guest publishes in [`Status::phase`].
pub mod phase {
    /// Not started yet (page still zero).
    pub const BOOTING: u32 = 0;
    /// Running a step.
    pub const RUNNING: u32 = 1;
    /// All steps done, exiting.
    pub const DONE: u32 = 2;
}

/// The guest's published progress, at [`STATUS_ADDR`]. All fields are
/// naturally aligned so each one can be read without tearing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    /// [`STATUS_MAGIC`] once the guest has started.
    pub magic: u64,
    /// See [`phase`].
    pub phase: u32,
    /// Index of the step running now.
    pub step: u32,
    /// Written by the VMM (a command) and by the guest (NONE, when it takes
    /// one): see [`command`].
    pub command: u32,
    /// Incremented by the guest each time it acts on a command.
    pub command_ack: u32,
    /// `dirty`: generation being written now (1 in the first pass).
    pub generation: u64,
    /// `dirty`: pages of the current generation already written.
    pub cursor: u64,
    /// `dirty`: pages in the working set.
    pub pages: u64,
    /// `touch`: rounds completed.
    pub touch_rounds: u64,
    /// `touch`: round the VMM asks for (written by the VMM).
    pub touch_request: u64,
    /// `vcpus`: number of vCPUs that checked in.
    pub checked_in: u32,
    /// `blk-capacity`: capacity changes seen.
    pub blk_capacity_changes: u32,
    /// `blk-*`: disk capacity in bytes as the guest last read it.
    pub blk_capacity: u64,
    /// `blk-*`: end of the disk range the guest uses (bytes); the VMM
    /// refuses to shrink the disk below it. Set by `blk-verify`
    /// (to the end of what it wrote) and lowered by `blk-trim`.
    pub blk_in_use_end: u64,
    /// The guest's latest reading of its own TSC (`rdtsc` at CPL 3): what
    /// the guest sees, which may differ from the IA32_TSC the VMM saves
    /// where the host cannot offset the guest's `rdtsc` (see
    /// `docs/saved-state.md`). Written for the VMM's eyes; the clock does
    /// not read it back (0: a probe older than the continuous clock).
    pub tsc: u64,
    /// Added (wrapping) to the raw TSC to give the guest's continuous clock:
    /// each jump of the raw TSC is taken out of it. The only word the clock
    /// both reads and writes at a jump, so a saved image moved to a host
    /// whose TSC reads differently needs this word changed, nothing else.
    pub clock_adjust: u64,
    /// Jumps of the raw TSC larger than a second (either way) the guest's
    /// clock has taken out: a restore or migration the host did not keep
    /// the guest's TSC across.
    pub clock_jumps: u64,
    /// The continuous clock's latest value (raw TSC + `clock_adjust`); a
    /// reading more than a second past it, or before it, is a jump.
    pub clock_last: u64,
}

/// Byte offset of [`Status::command`] inside the status page.
pub const STATUS_COMMAND_OFFSET: u64 = 16;
/// Byte offset of [`Status::generation`].
pub const STATUS_GENERATION_OFFSET: u64 = 24;
/// Byte offset of [`Status::touch_request`].
pub const STATUS_TOUCH_REQUEST_OFFSET: u64 = 56;
/// Byte offset of [`Status::blk_in_use_end`].
pub const STATUS_BLK_IN_USE_END_OFFSET: u64 = 80;
/// Byte offset of [`Status::tsc`].
pub const STATUS_TSC_OFFSET: u64 = 88;

/// Header of a report the guest sends through [`PORT_REPORT`]: `len` bytes of
/// UTF-8 text follow it directly.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// Payload length, at most [`REPORT_MAX`].
    pub len: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_constants_match_structs() {
        assert_eq!(offset_of!(Status, command) as u64, STATUS_COMMAND_OFFSET);
        assert_eq!(
            offset_of!(Status, generation) as u64,
            STATUS_GENERATION_OFFSET
        );
        assert_eq!(
            offset_of!(Status, touch_request) as u64,
            STATUS_TOUCH_REQUEST_OFFSET
        );
        assert_eq!(
            offset_of!(Status, blk_in_use_end) as u64,
            STATUS_BLK_IN_USE_END_OFFSET
        );
        assert_eq!(offset_of!(Status, tsc) as u64, STATUS_TSC_OFFSET);
        assert!(size_of::<Status>() as u64 <= PAGE_SIZE);
        assert!(size_of::<BootInfo>() as u64 <= PAGE_SIZE);
    }

    #[test]
    fn reserved_areas_do_not_overlap() {
        const { assert!(BOOT_INFO_ADDR + PAGE_SIZE <= STATUS_ADDR) };
        const { assert!(STATUS_ADDR + PAGE_SIZE <= PAGE_TABLES_ADDR) };
        assert!(stack_top(MAX_VCPUS - 1) <= IMAGE_BASE);
        const { assert!(IMAGE_BASE < DEVICE_MEM_BASE) };
        const { assert!(DEVICE_MEM_BASE + DEVICE_MEM_SIZE == DATA_BASE) };
        assert_eq!(MAX_VCPUS, 64);
    }
}
