//! A KVM virtual machine: creation from a [`VmConfig`], vCPU threads, run
//! control, dirty logging and access to the probe guest's status page.

use std::fs::OpenOptions;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_mp_state, kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_MP_STATE_RUNNABLE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use tern_devices::serial::{SerialDevice, SerialMode, SharedSerial};
use tern_devices::testport::{ProbeEvents, TestPort, TEST_PORT_BASE, TEST_PORT_LEN};
use tern_devices::{Bus, BusDevice};
use tern_probe_abi::{command, Status, MAX_VCPUS, PORT_PARK, PORT_SERIAL, STATUS_ADDR};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::probe::{self, ProbeError};
use crate::control::{self, Control, ControlError, RunState};
use crate::memory::{Backing, GuestRam, MemoryError, MemorySource};
use crate::state::time::TimeRestore;
use crate::state::{self, StateError, VmState};
use crate::x86::{self, EntryMode, X86Error};

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
    /// Allocate and map all of RAM before the VM runs (QEMU's
    /// `prealloc=on`): no page faults later, all memory committed now.
    pub prealloc: bool,
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
            prealloc: false,
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
    /// The guest asked for a reset (reboot); Tern stops it.
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
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Host RAM in bytes, from /proc/meminfo.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A callback receiving each probe report line.
pub type ReportFn = Box<dyn Fn(&str) + Send + Sync>;

/// Probe guest reports, kept in order and waitable.
#[derive(Default)]
pub struct Reports {
    lines: Mutex<Vec<String>>,
    cv: Condvar,
    printer: Option<ReportFn>,
}

impl Reports {
    /// Every report so far.
    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until a report satisfies `pred` (returns it) or `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            lines = self
                .cv
                .wait_timeout(lines, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn push(&self, line: String) {
        if let Some(p) = &self.printer {
            p(&line);
        }
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
        self.cv.notify_all();
    }
}

/// Connects the test port to run control and the report log.
struct ProbeSink {
    control: Arc<Control>,
    reports: Arc<Reports>,
}

impl ProbeEvents for ProbeSink {
    fn exit(&self, status: u32) {
        self.control.finish(VmExit::Guest(status));
    }
    fn report(&self, text: String) {
        self.reports.push(text);
    }
}

/// The i8042 command port: Linux resets the machine by writing 0xfe to it.
struct ResetPort(Arc<Control>);

impl BusDevice for ResetPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&0xfe) {
            self.0.finish(VmExit::Reset);
        }
    }
}

/// Hooks a caller can attach when building a VM.
#[derive(Default)]
pub struct VmHooks {
    /// Called with every probe report as it arrives (e.g. to print it).
    pub on_report: Option<ReportFn>,
}

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
    time_restore: Mutex<Option<TimeRestore>>,
}

impl Vm {
    /// Validates `config` and builds the VM (memory loaded, vCPUs set up),
    /// without running it.
    pub fn create(config: VmConfig, hooks: VmHooks) -> Result<Vm, VmError> {
        Self::build(config, hooks, None)
    }

    /// Builds a VM that continues from `state` (memory from
    /// `config.memory_source`) instead of booting; start it with
    /// [`Vm::start`].
    pub fn restore(config: VmConfig, hooks: VmHooks, state: &VmState) -> Result<Vm, VmError> {
        Self::build(config, hooks, Some(state))
    }

    fn build(config: VmConfig, hooks: VmHooks, restore: Option<&VmState>) -> Result<Vm, VmError> {
        if config.vcpus == 0 {
            return Err(VmError::NoVcpus);
        }
        let probe_steps = match &config.guest {
            Guest::Probe { workload, .. } => {
                tern_probe_abi::workload::parse(workload)
                    .map_err(|e| VmError::Workload(e.to_string()))?;
                true
            }
            Guest::Linux { .. } => false,
        };
        if let Some(host) = host_memory() {
            if config.memory > host {
                return Err(VmError::TooMuchMemory {
                    requested: config.memory,
                    host,
                });
            }
        }
        let kvm_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&config.kvm_path)
            .map_err(|source| VmError::KvmOpen {
                path: config.kvm_path.clone(),
                source,
            })?;
        // SAFETY: `kvm_file` is an open KVM device fd whose ownership moves
        // into `Kvm`.
        let kvm = unsafe {
            <Kvm as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(
                kvm_file,
            ))
        };
        if kvm.get_api_version() != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::NotKvm(config.kvm_path.clone()));
        }
        let max = kvm.get_max_vcpus() as u32;
        if config.vcpus > max {
            return Err(VmError::TooManyVcpus {
                requested: config.vcpus,
                limit: "this host's KVM",
                max,
            });
        }
        if probe_steps && config.vcpus > MAX_VCPUS {
            return Err(VmError::TooManyVcpus {
                requested: config.vcpus,
                limit: "the probe guest",
                max: MAX_VCPUS,
            });
        }
        let ram = GuestRam::with_source(config.memory, config.backing, &config.memory_source)?;
        if config.prealloc {
            ram.populate()?;
        }
        if let Some(st) = restore {
            check_restore_target(st, &config, &ram, probe_steps)?;
        }
        let fd = Arc::new(kvm.create_vm().map_err(kvm_err("create the VM"))?);
        fd.set_tss_address(0xfffb_d000)
            .map_err(kvm_err("set the TSS address"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("create the interrupt controller"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("create the PIT"))?;
        for (slot, region) in ram.mem.iter().enumerate() {
            set_slot(&fd, slot as u32, region, false)?;
        }
        let mut mmio = Bus::new();
        let disks = crate::devices::Disks::attach(&config.disks, &ram.mem, &fd, &mut mmio)?;
        if let Some(st) = restore {
            restore_disk_devices(st, &disks)?;
        }

        let parked: Vec<bool> = (0..config.vcpus)
            .map(|id| restore.is_some_and(|st| st.vcpus.get(id as usize).is_some_and(|v| v.parked)))
            .collect();
        let control = Arc::new(Control::new(config.vcpus, parked));
        let reports = Arc::new(Reports {
            printer: hooks.on_report,
            ..Default::default()
        });

        // Serial on COM1, IRQ 4.
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Thread)?;
        fd.register_irqfd(&serial_irq, 4)
            .map_err(kvm_err("register the serial interrupt"))?;
        let serial_state = restore
            .and_then(|st| st.serial.as_ref())
            .map(serial_from_proto);
        let serial =
            SerialDevice::open_with_state(&config.serial, serial_irq, serial_state.as_ref())?;
        let mut pio = Bus::new();
        pio.insert(serial.clone(), PORT_SERIAL as u64, 8)
            .expect("fresh bus");
        pio.insert(Arc::new(Mutex::new(ResetPort(control.clone()))), 0x64, 1)
            .expect("fresh bus");

        let mem_end = ram
            .regions
            .last()
            .map(|r| r.start + r.len)
            .unwrap_or_default();
        if restore.is_none() {
            x86::write_tables(&ram.mem, mem_end)?;
        }
        let base_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("read supported CPUID"))?;

        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let v = fd
                .create_vcpu(id as u64)
                .map_err(kvm_err("create a vCPU"))?;
            v.set_cpuid2(&x86::vcpu_cpuid(&base_cpuid, id, config.vcpus))
                .map_err(kvm_err("set CPUID"))?;
            vcpus.push(v);
        }

        if probe_steps {
            let tp = TestPort::new(
                ram.mem.clone(),
                ProbeSink {
                    control: control.clone(),
                    reports: reports.clone(),
                },
            );
            pio.insert(
                Arc::new(Mutex::new(tp)),
                TEST_PORT_BASE as u64,
                TEST_PORT_LEN as u64,
            )
            .expect("fresh bus");
        }
        let mut time_restore = None;
        match (&config.guest, restore) {
            (_, Some(st)) => {
                let refs: Vec<&VcpuFd> = vcpus.iter().collect();
                let time = restore_cpu_state(&fd, &refs, st)?;
                if st.probe {
                    wake_probe_without_clock(&ram.mem, &time)?;
                }
                time_restore = Some(time);
            }
            (Guest::Probe { image, workload }, None) => {
                let entry = probe::load_image(&ram.mem, image)?;
                let tsc_khz = vcpus[0].get_tsc_khz().map(u64::from).unwrap_or(0);
                probe::write_boot_info(
                    &ram.mem,
                    config.vcpus,
                    tsc_khz,
                    &ram.regions,
                    &disks.device_infos(),
                    workload,
                )?;
                for (id, v) in vcpus.iter().enumerate() {
                    let top = tern_probe_abi::stack_top(id as u32);
                    x86::setup_vcpu(
                        v,
                        EntryMode::User,
                        entry,
                        top - 8,
                        id as u64,
                        tern_probe_abi::BOOT_INFO_ADDR,
                    )?;
                    // Every vCPU starts at once: the probe has no SIPI code.
                    v.set_mp_state(kvm_mp_state {
                        mp_state: KVM_MP_STATE_RUNNABLE,
                    })
                    .map_err(kvm_err("make a vCPU runnable"))?;
                }
            }
            (
                Guest::Linux {
                    kernel,
                    initrd,
                    cmdline,
                },
                None,
            ) => {
                let entry = crate::boot::linux::load_linux(
                    &ram.mem,
                    &ram.regions,
                    &crate::boot::linux::LinuxConfig {
                        kernel: kernel.clone(),
                        initrd: initrd.clone(),
                        cmdline: format!("{cmdline}{}", disks.cmdline()),
                    },
                )?;
                for v in &vcpus {
                    x86::setup_lapic(v)?;
                }
                // Only the boot vCPU starts; Linux wakes the others by SIPI.
                x86::setup_vcpu(
                    &vcpus[0],
                    EntryMode::Kernel,
                    entry.entry,
                    0,
                    0,
                    entry.boot_params,
                )?;
            }
        }

        let shared = Arc::new(Shared {
            control,
            pio,
            mmio,
            probe: probe_steps,
        });
        Ok(Vm {
            _kvm: kvm,
            fd,
            ram,
            vcpus: vcpus.into_iter().map(|v| Arc::new(Mutex::new(v))).collect(),
            threads: Mutex::new(Vec::new()),
            shared,
            reports,
            serial,
            config,
            dirty_logging: false.into(),
            disks,
            time_restore: Mutex::new(time_restore),
        })
    }

    /// Captures the CPU and device state of a paused VM (memory excluded).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        match self.state() {
            RunState::Paused => {}
            other => return Err(VmError::NotPaused(other)),
        }
        let mut st = VmState {
            memory: self
                .ram
                .regions
                .iter()
                .map(|r| state::proto::MemRange {
                    start: r.start,
                    len: r.len,
                })
                .collect(),
            probe: self.shared.probe,
            ..Default::default()
        };
        state::save_vm(&self.fd, &mut st)?;
        let first = self.vcpus[0].lock().unwrap_or_else(|p| p.into_inner());
        st.tsc_khz = first.get_tsc_khz().map(u64::from).unwrap_or(0);
        let msrs = state::readable_msrs(&self._kvm, &first)?;
        drop(first);
        for (id, v) in self.vcpus.iter().enumerate() {
            let v = v.lock().unwrap_or_else(|p| p.into_inner());
            let parked = self.shared.control.is_parked(id as u32);
            st.vcpus
                .push(state::save_vcpu(&v, id as u32, &msrs, parked)?);
        }
        st.devices = self
            .disks
            .save()
            .iter()
            .enumerate()
            .map(|(index, t)| state::proto::DeviceState {
                kind: VIRTIO_BLK_KIND.into(),
                index: index as u32,
                data: prost::Message::encode_to_vec(t),
            })
            .collect();
        st.serial = Some(serial_to_proto(
            &self
                .serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .state(),
        ));
        Ok(st)
    }

    /// Puts a paused VM back into a state saved from it earlier (a
    /// checkpoint): memory from `memory` (regions back to back), then
    /// VM-wide and vCPU state. Refused when the saved vCPUs were parked
    /// differently (their threads are gone or running) or the layout
    /// differs; the serial port keeps its current registers.
    pub fn load_state(&self, st: &VmState, memory: &std::path::Path) -> Result<(), VmError> {
        match self.state() {
            RunState::Paused => {}
            other => return Err(VmError::NotPaused(other)),
        }
        check_restore_target(st, &self.config, &self.ram, self.shared.probe)?;
        for (id, v) in st.vcpus.iter().enumerate() {
            if v.parked != self.shared.control.is_parked(id as u32) {
                return Err(VmError::State(StateError::Mismatch(format!(
                    "vCPU {id} was {} in the saved state and is {} now",
                    if v.parked { "parked" } else { "running" },
                    if v.parked { "running" } else { "parked" },
                ))));
            }
        }
        let file = std::fs::File::open(memory).map_err(|source| {
            VmError::Memory(MemoryError::Image {
                path: memory.into(),
                source,
            })
        })?;
        self.ram.load_from(&file, memory)?;
        restore_disk_devices(st, &self.disks)?;
        let guards: Vec<_> = self
            .vcpus
            .iter()
            .map(|v| v.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let refs: Vec<&VcpuFd> = guards.iter().map(|g| &**g).collect();
        let time = restore_cpu_state(&self.fd, &refs, st)?;
        if st.probe {
            wake_probe_without_clock(&self.ram.mem, &time)?;
        }
        *self.time_restore.lock().unwrap_or_else(|p| p.into_inner()) = Some(time);
        Ok(())
    }

    /// What the host did with the guest's saved TSC and kvmclock at the
    /// last restore or [`Vm::load_state`]; `None` for a VM that booted and
    /// was never put back into a saved state.
    pub fn time_restore(&self) -> Option<TimeRestore> {
        *self.time_restore.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the vCPU threads held paused: no guest code runs until
    /// [`Vm::resume`] (a VM that was paused when it was migrated).
    pub fn start_paused(&self) -> Result<(), VmError> {
        self.shared.control.hold();
        self.start()
    }

    /// Starts one thread per vCPU.
    pub fn start(&self) -> Result<(), VmError> {
        control::install_kick_handler();
        // A restored disk may hold requests its driver notified the saved
        // side about: serve them now that this side owns the VM.
        self.disks.kick();
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for (id, v) in self.vcpus.iter().enumerate() {
            let (v, shared) = (v.clone(), self.shared.clone());
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu_thread(id as u32, v, shared))
                .map_err(VmError::Thread)?;
            self.shared.control.register_thread(t.as_pthread_t());
            threads.push(t);
        }
        Ok(())
    }

    /// Pauses all vCPUs (returns once none runs guest code).
    pub fn pause(&self) -> Result<(), VmError> {
        Ok(self.shared.control.pause(Duration::from_secs(5))?)
    }

    /// Resumes after [`Vm::pause`]. Disks handed over by a migration whose
    /// outcome is unknown are taken back first: if the destination runs
    /// the VM it holds them, and this fails rather than run the VM twice.
    pub fn resume(&self) -> Result<(), VmError> {
        if self.disks.released() {
            self.disks
                .reacquire(std::time::Instant::now() + Duration::from_secs(1))?;
        }
        Ok(self.shared.control.resume()?)
    }

    /// Asks the VM to stop; [`Vm::wait`] returns once it has.
    pub fn request_stop(&self) {
        self.shared.control.finish(VmExit::Stopped);
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

    /// Reads the probe guest's status page.
    pub fn probe_status(&self) -> Result<Status, VmError> {
        read_status(&self.ram.mem).map_err(VmError::StatusPage)
    }

    /// Writes a command into the probe guest's mailbox (`command::STOP`).
    pub fn probe_command(&self, cmd: u32) -> Result<(), VmError> {
        self.ram
            .mem
            .write_obj(
                cmd,
                GuestAddress(STATUS_ADDR + tern_probe_abi::STATUS_COMMAND_OFFSET),
            )
            .map_err(VmError::StatusPage)
    }

    /// Asks the `touch` workload for round `round`.
    pub fn probe_touch(&self, round: u64) -> Result<(), VmError> {
        self.ram
            .mem
            .write_obj(
                round,
                GuestAddress(STATUS_ADDR + tern_probe_abi::STATUS_TOUCH_REQUEST_OFFSET),
            )
            .map_err(VmError::StatusPage)
    }

    /// Tells the probe's open-ended step to stop.
    pub fn probe_stop_step(&self) -> Result<(), VmError> {
        self.probe_command(command::STOP)
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

/// Reads the status page field by field (each naturally aligned, so no
/// field is torn by a concurrent guest write).
pub fn read_status(mem: &crate::memory::GuestMem) -> Result<Status, vm_memory::GuestMemoryError> {
    use std::mem::offset_of;
    let at = |off: usize| GuestAddress(STATUS_ADDR + off as u64);
    Ok(Status {
        magic: mem.read_obj(at(offset_of!(Status, magic)))?,
        phase: mem.read_obj(at(offset_of!(Status, phase)))?,
        step: mem.read_obj(at(offset_of!(Status, step)))?,
        command: mem.read_obj(at(offset_of!(Status, command)))?,
        command_ack: mem.read_obj(at(offset_of!(Status, command_ack)))?,
        generation: mem.read_obj(at(offset_of!(Status, generation)))?,
        cursor: mem.read_obj(at(offset_of!(Status, cursor)))?,
        pages: mem.read_obj(at(offset_of!(Status, pages)))?,
        touch_rounds: mem.read_obj(at(offset_of!(Status, touch_rounds)))?,
        touch_request: mem.read_obj(at(offset_of!(Status, touch_request)))?,
        checked_in: mem.read_obj(at(offset_of!(Status, checked_in)))?,
        blk_capacity_changes: mem.read_obj(at(offset_of!(Status, blk_capacity_changes)))?,
        blk_capacity: mem.read_obj(at(offset_of!(Status, blk_capacity)))?,
        blk_in_use_end: mem.read_obj(at(offset_of!(Status, blk_in_use_end)))?,
        tsc: mem.read_obj(at(offset_of!(Status, tsc)))?,
        clock_adjust: mem.read_obj(at(offset_of!(Status, clock_adjust)))?,
        clock_jumps: mem.read_obj(at(offset_of!(Status, clock_jumps)))?,
    })
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

enum Action {
    Continue,
    Park,
    Crash(String),
}

fn vcpu_thread(id: u32, vcpu: Arc<Mutex<VcpuFd>>, shared: Arc<Shared>) {
    let control = &shared.control;
    if control.is_parked(id) {
        // Restored parked: the guest gave this vCPU up before the save.
        control.park(id);
        control.thread_done();
        return;
    }
    while control.checkpoint() {
        let action = {
            let mut v = vcpu.lock().unwrap_or_else(|p| p.into_inner());
            run_once(&mut v, &shared)
        };
        match action {
            Action::Continue => {}
            Action::Park => {
                control.park(id);
                break;
            }
            Action::Crash(reason) => {
                let v = vcpu.lock().unwrap_or_else(|p| p.into_inner());
                let regs = v.get_regs().unwrap_or_default();
                let cpl = v.get_sregs().map(|s| s.cs.dpl).unwrap_or(0);
                let rip = regs.rip;
                let reason = format!("{reason} (RFLAGS {:#x}, CPL {cpl})", regs.rflags);
                control.finish(VmExit::Crashed {
                    vcpu: id,
                    reason,
                    rip,
                });
                break;
            }
        }
    }
    control.thread_done();
}

fn run_once(v: &mut VcpuFd, shared: &Shared) -> Action {
    let exit = match v.run() {
        Ok(e) => e,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return Action::Continue,
        Err(e) => return Action::Crash(format!("KVM_RUN failed: {e}")),
    };
    match exit {
        VcpuExit::IoOut(port, data) => {
            if shared.probe && port == PORT_PARK {
                return Action::Park;
            }
            shared.pio.write(port as u64, data);
            Action::Continue
        }
        VcpuExit::IoIn(port, data) => {
            if !shared.pio.read(port as u64, data) {
                data.fill(0xff);
            }
            Action::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !shared.mmio.read(addr, data) {
                data.fill(0xff);
            }
            Action::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            shared.mmio.write(addr, data);
            Action::Continue
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => Action::Continue,
        VcpuExit::Shutdown => Action::Crash(
            "triple fault (KVM_EXIT_SHUTDOWN): the guest faulted with no usable handler".into(),
        ),
        VcpuExit::InternalError => {
            let sub = v.get_kvm_run();
            // SAFETY: for KVM_EXIT_INTERNAL_ERROR the kernel filled the
            // `internal` member of the exit union.
            let suberror = unsafe { sub.__bindgen_anon_1.internal.suberror };
            Action::Crash(format!(
                "KVM internal error (suberror {suberror}: {})",
                match suberror {
                    1 => "instruction emulation failed",
                    2 => "simultaneous exceptions",
                    3 => "delivery event failed",
                    _ => "other",
                }
            ))
        }
        VcpuExit::FailEntry(reason, cpu) => Action::Crash(format!(
            "VM entry failed (hardware reason {reason:#x} on host CPU {cpu})"
        )),
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                shared
                    .control
                    .finish(if kind == kvm_bindings::KVM_SYSTEM_EVENT_RESET {
                        VmExit::Reset
                    } else {
                        VmExit::Stopped
                    });
                Action::Continue
            }
            other => Action::Crash(format!("unexpected system event {other}")),
        },
        other => Action::Crash(format!("unexpected VM exit {other:?}")),
    }
}

/// Puts VM-wide and vCPU state back from `st` and continues guest time:
/// kvmclock first, then each vCPU (its TSC rate before its MSRs), then one
/// TSC offset for all vCPUs where the IA32_TSC writes were not honoured.
fn restore_cpu_state(fd: &VmFd, vcpus: &[&VcpuFd], st: &VmState) -> Result<TimeRestore, VmError> {
    state::restore_vm(fd, st)?;
    state::time::continue_tsc_rate(vcpus, st);
    for (v, vs) in vcpus.iter().zip(&st.vcpus) {
        state::restore_vcpu(v, vs)?;
    }
    Ok(state::time::continue_time(fd, vcpus, st)?)
}

/// A probe image saved before the probe had a continuous clock (its
/// status page has no TSC reading) waits for TSC deadlines it set on the
/// old host; where this host left the guest's TSC far behind them, it is
/// woken with [`command::WAKE`] (see there), or it would wait for as long
/// as the old host had been up.
fn wake_probe_without_clock(
    mem: &crate::memory::GuestMem,
    time: &TimeRestore,
) -> Result<(), VmError> {
    let state::time::TscRestore::NotHonoured { wanted, found, .. } = time.tsc else {
        return Ok(());
    };
    let status = read_status(mem).map_err(VmError::StatusPage)?;
    let went_back = found < wanted;
    if !went_back || status.tsc != 0 || status.phase != tern_probe_abi::phase::RUNNING {
        return Ok(());
    }
    if status.command != command::NONE {
        // A STOP is pending: it ends the wait as well.
        return Ok(());
    }
    tracing::info!(
        "the restored probe image has no continuous clock and its TSC went back: waking it"
    );
    mem.write_obj(
        command::WAKE,
        GuestAddress(STATUS_ADDR + tern_probe_abi::STATUS_COMMAND_OFFSET),
    )
    .map_err(VmError::StatusPage)
}

/// `DeviceState::kind` of a virtio-blk transport.
const VIRTIO_BLK_KIND: &str = "virtio-blk";

/// Continues the disks' virtio transports from the saved state. A state
/// written before device state was recorded has none: the disks then start
/// fresh, as they did when that state was written.
fn restore_disk_devices(st: &VmState, disks: &crate::devices::Disks) -> Result<(), VmError> {
    let mut saved: Vec<&state::proto::DeviceState> = st
        .devices
        .iter()
        .filter(|d| d.kind == VIRTIO_BLK_KIND)
        .collect();
    if saved.is_empty() {
        return Ok(());
    }
    saved.sort_by_key(|d| d.index);
    let decoded = saved
        .iter()
        .map(|d| {
            <state::proto::VirtioMmioState as prost::Message>::decode(d.data.as_slice()).map_err(
                |e| StateError::Mismatch(format!("virtio-blk {} state is corrupt: {e}", d.index)),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(disks.restore(&decoded)?)
}

/// Refuses a state that does not fit the VM being built.
fn check_restore_target(
    st: &VmState,
    config: &VmConfig,
    ram: &GuestRam,
    probe: bool,
) -> Result<(), VmError> {
    let mismatch = |m: String| VmError::State(StateError::Mismatch(m));
    if st.vcpus.len() != config.vcpus as usize {
        return Err(mismatch(format!(
            "state has {} vCPUs, the VM {}",
            st.vcpus.len(),
            config.vcpus
        )));
    }
    let ranges: Vec<(u64, u64)> = st.memory.iter().map(|r| (r.start, r.len)).collect();
    let have: Vec<(u64, u64)> = ram.regions.iter().map(|r| (r.start, r.len)).collect();
    if ranges != have {
        return Err(mismatch(format!(
            "state has memory {ranges:x?}, the VM {have:x?}"
        )));
    }
    if st.probe != probe {
        return Err(mismatch("state and VM disagree on the guest kind".into()));
    }
    Ok(())
}

fn serial_to_proto(s: &tern_devices::serial::SerialState) -> state::proto::SerialState {
    state::proto::SerialState {
        baud_divisor_low: s.baud_divisor_low.into(),
        baud_divisor_high: s.baud_divisor_high.into(),
        interrupt_enable: s.interrupt_enable.into(),
        interrupt_identification: s.interrupt_identification.into(),
        line_control: s.line_control.into(),
        line_status: s.line_status.into(),
        modem_control: s.modem_control.into(),
        modem_status: s.modem_status.into(),
        scratch: s.scratch.into(),
        in_buffer: s.in_buffer.clone(),
    }
}

fn serial_from_proto(s: &state::proto::SerialState) -> tern_devices::serial::SerialState {
    // Registers are 8 bits wide; a larger saved value is truncated as the
    // hardware would.
    tern_devices::serial::SerialState {
        baud_divisor_low: s.baud_divisor_low as u8,
        baud_divisor_high: s.baud_divisor_high as u8,
        interrupt_enable: s.interrupt_enable as u8,
        interrupt_identification: s.interrupt_identification as u8,
        line_control: s.line_control as u8,
        line_status: s.line_status as u8,
        modem_control: s.modem_control as u8,
        modem_status: s.modem_status as u8,
        scratch: s.scratch as u8,
        in_buffer: s.in_buffer.clone(),
    }
}
