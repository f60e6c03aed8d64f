//! A KVM virtual machine: creation from a [`VmConfig`] (`builder`), vCPU
//! threads (`vcpu`, an explicit state machine), run control, dirty
//! logging, save and restore (`snapshot`) and the probe guest's harness
//! (`probe`, and `pacer` for restored images without a continuous clock).

mod builder;
mod config;
mod msr;
mod pacer;
mod probe;
mod snapshot;
mod vcpu;

use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use tern_devices::serial::SharedSerial;
use tern_devices::Bus;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

pub use config::{host_memory, Guest, VmConfig, VmError, VmExit};
pub use probe::{read_status, ReportFn, Reports};

use crate::control::{self, Control, RunState};
use crate::memory::GuestRam;
use crate::state::time::TimeRestore;

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Hooks a caller can attach when building a VM.
#[derive(Default)]
pub struct VmHooks {
    /// Called with every probe report as it arrives (e.g. to print it).
    pub on_report: Option<ReportFn>,
}

/// What every vCPU thread shares: run control and the buses.
struct Shared {
    control: Arc<Control>,
    pio: Bus,
    mmio: Bus,
    probe: bool,
}

/// Guest pages dirtied since the last read, per RAM region.
#[derive(Debug, Default)]
pub struct DirtyLog {
    /// (region start, bitmap words: bit i = page i of the region).
    pub regions: Vec<(u64, Vec<u64>)>,
}

impl DirtyLog {
    /// Guest-physical addresses of the dirty pages, ascending.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.regions.iter().flat_map(|(start, words)| {
            words.iter().enumerate().flat_map(move |(w, &bits)| {
                (0..64)
                    .filter(move |b| bits & (1 << b) != 0)
                    .map(move |b| start + ((w as u64) * 64 + b) * 4096)
            })
        })
    }

    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.regions
            .iter()
            .flat_map(|(_, w)| w.iter())
            .map(|w| w.count_ones() as u64)
            .sum()
    }
}

/// A VM: built by [`Vm::create`], started by [`Vm::start`].
pub struct Vm {
    _kvm: Kvm,
    fd: Arc<VmFd>,
    ram: GuestRam,
    vcpus: Vec<Arc<Mutex<VcpuFd>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    shared: Arc<Shared>,
    reports: Arc<Reports>,
    serial: SharedSerial,
    config: VmConfig,
    dirty_logging: std::sync::atomic::AtomicBool,
    disks: crate::devices::Disks,
    nics: crate::devices::nics::Nics,
    scsi: Option<crate::devices::scsi::ScsiController>,
    vsock: Option<crate::devices::vsock::VsockDevice>,
    time_restore: Mutex<Option<TimeRestore>>,
    pacer: Arc<pacer::Pacer>,
    /// The ACPI power button (Linux guests).
    power_button: Option<crate::acpi::PowerButton>,
    /// The CPUID template the vCPUs were given (saved with the state).
    cpuid: crate::cpuid::GuestCpuid,
}

impl Vm {
    /// Starts the vCPU threads held paused: no guest code runs until
    /// [`Vm::resume`] (a VM that was paused when it was migrated).
    pub fn start_paused(&self) -> Result<(), VmError> {
        self.shared.control.hold();
        self.nics.set_frozen(true);
        self.vsock_frozen(true);
        self.start()
    }

    /// Starts one thread per vCPU.
    pub fn start(&self) -> Result<(), VmError> {
        control::install_kick_handler();
        // A restored disk may hold requests its driver notified the saved
        // side about: serve them now that this side owns the VM.
        self.disks.kick();
        self.nics.kick();
        if let Some(s) = &self.scsi {
            s.kick();
        }
        if let Some(v) = &self.vsock {
            v.kick();
        }
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for (id, v) in self.vcpus.iter().enumerate() {
            let (v, shared) = (v.clone(), self.shared.clone());
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu::run(id as u32, v, shared))
                .map_err(VmError::Thread)?;
            self.shared.control.register_thread(t.as_pthread_t());
            threads.push(t);
        }
        drop(threads);
        self.start_pacer()
    }

    /// Starts pacing a restored probe image without a continuous clock
    /// where a restore found one (see [`pacer`]).
    fn start_pacer(&self) -> Result<(), VmError> {
        if let Guest::Probe { workload, .. } = &self.config.guest {
            self.pacer
                .start_if_needed(self.ram.mem.clone(), self.shared.control.clone(), workload)
                .map_err(VmError::Thread)?;
        }
        Ok(())
    }

    /// Pauses all vCPUs (returns once none runs guest code).
    pub fn pause(&self) -> Result<(), VmError> {
        self.shared.control.pause(Duration::from_secs(5))?;
        // Frames keep arriving: no NIC may write guest memory or its rings
        // while the VM is paused (a save or migration copies them now).
        self.nics.set_frozen(true);
        self.vsock_frozen(true);
        Ok(())
    }

    /// Holds or releases the vsock device's queues with the NICs'.
    fn vsock_frozen(&self, on: bool) {
        if let Some(v) = &self.vsock {
            v.set_frozen(on);
        }
    }

    /// Resumes after [`Vm::pause`]. Disks handed over by a migration whose
    /// outcome is unknown are taken back first: if the destination runs
    /// the VM it holds them, and this fails rather than run the VM twice.
    pub fn resume(&self) -> Result<(), VmError> {
        if self.disks.released() {
            self.disks
                .reacquire(std::time::Instant::now() + Duration::from_secs(1))?;
        }
        self.shared.control.resume()?;
        self.nics.set_frozen(false);
        self.vsock_frozen(false);
        Ok(())
    }

    /// Asks the VM to stop; [`Vm::wait`] returns once it has.
    pub fn request_stop(&self) {
        self.shared.control.finish(VmExit::Stopped);
    }

    /// Presses the guest's ACPI power button: an ACPI-aware guest shuts
    /// down (and the VM ends with [`VmExit::PoweredOff`]); a guest that
    /// ignores the button goes on. Linux guests only.
    pub fn power_button(&self) -> Result<(), VmError> {
        self.power_button
            .as_ref()
            .ok_or(VmError::NoPowerButton)?
            .press()
            .map_err(VmError::PowerButton)
    }

    /// Current run state.
    pub fn state(&self) -> RunState {
        self.shared.control.state()
    }

    /// Blocks until the VM ended and joins its threads.
    pub fn wait(&self) -> VmExit {
        let exit = self.shared.control.wait_exit();
        self.join();
        exit
    }

    /// Like [`Vm::wait`] with a limit; `None` if still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<VmExit> {
        let exit = self.shared.control.wait_exit_timeout(timeout)?;
        self.join();
        Some(exit)
    }

    fn join(&self) {
        self.pacer.stop();
        self.shared.control.clear_threads();
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The configuration the VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The VM's disks (QoS, resize, events).
    pub fn disks(&self) -> &crate::devices::Disks {
        &self.disks
    }

    /// The VM's NICs (link state, counters).
    pub fn nics(&self) -> &crate::devices::nics::Nics {
        &self.nics
    }

    /// The VM's SCSI controller (hot add/remove, DVD media, resize).
    pub fn scsi(&self) -> Result<&crate::devices::scsi::ScsiController, VmError> {
        self.scsi
            .as_ref()
            .ok_or_else(|| crate::devices::scsi::ScsiError::NoController.into())
    }

    /// True when the VM has a SCSI controller.
    pub fn has_scsi(&self) -> bool {
        self.scsi.is_some()
    }

    /// The VM's vsock device, if it has one.
    pub fn vsock(&self) -> Option<&crate::devices::vsock::VsockDevice> {
        self.vsock.as_ref()
    }

    /// Probe guest reports.
    pub fn reports(&self) -> &Arc<Reports> {
        &self.reports
    }

    /// The serial device (for attaching console input).
    pub fn serial(&self) -> &SharedSerial {
        &self.serial
    }

    /// Starts dirty logging: KVM tracks guest writes, the memory bitmap
    /// tracks the VMM's own. Clears both.
    pub fn start_dirty_log(&self) -> Result<(), VmError> {
        self.set_dirty_logging(true)?;
        self.read_dirty_log()?;
        Ok(())
    }

    /// Stops dirty logging.
    pub fn stop_dirty_log(&self) -> Result<(), VmError> {
        self.set_dirty_logging(false)
    }

    fn set_dirty_logging(&self, on: bool) -> Result<(), VmError> {
        for (slot, region) in self.ram.mem.iter().enumerate() {
            set_slot(&self.fd, slot as u32, region, on)?;
        }
        self.dirty_logging
            .store(on, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Pages written since the last call (guest and VMM), and clears them.
    pub fn read_dirty_log(&self) -> Result<DirtyLog, VmError> {
        let mut out = DirtyLog::default();
        for (slot, region) in self.ram.mem.iter().enumerate() {
            let mut bits = if self.dirty_logging.load(std::sync::atomic::Ordering::SeqCst) {
                self.fd
                    .get_dirty_log(slot as u32, region.len() as usize)
                    .map_err(kvm_err("read the dirty log"))?
            } else {
                vec![0; (region.len() as usize / 4096).div_ceil(64)]
            };
            // The region's own bitmap (not the per-slice view) can be read and reset.
            let vmm = vm_memory::mmap::MmapRegion::bitmap(region).get_and_reset();
            for (k, v) in bits.iter_mut().zip(vmm) {
                *k |= v;
            }
            out.regions.push((region.start_addr().0, bits));
        }
        Ok(out)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self
            .threads
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            self.request_stop();
            self.join();
        }
    }
}

fn set_slot(
    fd: &VmFd,
    slot: u32,
    region: &vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>,
    log_dirty: bool,
) -> Result<(), VmError> {
    let mr = kvm_userspace_memory_region {
        slot,
        flags: if log_dirty {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: region.start_addr().0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
    };
    // SAFETY: the host range is a live mapping owned by `GuestRam`, which the
    // VM struct keeps alive at least as long as the KVM VM fd; the slot
    // describes exactly that mapping.
    unsafe { fd.set_user_memory_region(mr) }.map_err(kvm_err("register guest memory"))
}
