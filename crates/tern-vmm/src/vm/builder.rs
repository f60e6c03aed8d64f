//! Building a VM from its configuration: KVM, memory, devices, vCPUs, and
//! either the guest loaded fresh or the state it continues from.

use std::fs::OpenOptions;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_mp_state, kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd};
use tern_devices::serial::SerialDevice;
use tern_devices::testport::{TestPort, TEST_PORT_BASE, TEST_PORT_LEN};
use tern_devices::{Bus, BusDevice};
use tern_probe_abi::{MAX_VCPUS, PORT_SERIAL};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;

use super::pacer::Pacer;
use super::probe::{ProbeSink, Reports};
use super::snapshot::{
    check_restore_target, has_scsi_device, needs_pacing, restore_cpu_state, restore_disk_devices,
    restore_nic_devices, restore_scsi_device, restore_vsock_device, serial_from_proto,
};
use super::{
    host_memory, kvm_err, set_slot, Guest, Shared, Vm, VmConfig, VmError, VmExit, VmHooks,
};
use crate::boot::probe;
use crate::control::Control;
use crate::cpuid::{self, GuestCpuid};
use crate::memory::GuestRam;
use crate::state::VmState;
use crate::x86::{self, EntryMode};

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

    pub(super) fn build(
        config: VmConfig,
        hooks: VmHooks,
        restore: Option<&VmState>,
    ) -> Result<Vm, VmError> {
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
        super::msr::enable(&kvm, &fd);
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
        let nics = crate::devices::nics::Nics::attach(
            &config.nics,
            disks.len(),
            &ram.mem,
            &fd,
            &mut mmio,
        )?;
        if let Some(st) = restore {
            restore_nic_devices(st, &nics)?;
        }
        // A saved controller comes back even when the config has no LUN:
        // its LUNs are in the state.
        let scsi = crate::devices::scsi::ScsiController::attach(
            &config.scsi,
            disks.len() + nics.len(),
            restore.is_some_and(has_scsi_device),
            &ram.mem,
            &fd,
            &mut mmio,
        )?;
        if let (Some(st), Some(c)) = (restore, &scsi) {
            restore_scsi_device(st, c)?;
        }
        let vsock = config
            .vsock
            .as_ref()
            .map(|c| {
                crate::devices::vsock::VsockDevice::attach(
                    c,
                    disks.len() + nics.len() + scsi.iter().count(),
                    &ram.mem,
                    &fd,
                    &mut mmio,
                )
            })
            .transpose()?;
        if let Some(st) = restore {
            restore_vsock_device(st, vsock.as_ref())?;
        }
        // Slots in this order: disks, NICs, the SCSI controller, vsock.
        let device_infos: Vec<tern_probe_abi::DeviceInfo> = [
            disks.device_infos(),
            nics.device_infos(),
            scsi.iter().map(|c| c.device_info()).collect(),
            vsock.iter().map(|v| v.device_info()).collect(),
        ]
        .concat();

        let parked: Vec<bool> = (0..config.vcpus)
            .map(|id| restore.is_some_and(|st| st.vcpus.get(id as usize).is_some_and(|v| v.parked)))
            .collect();
        let control = Arc::new(Control::new(config.vcpus, parked));
        let reports = Arc::new(Reports::with_printer(hooks.on_report));

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
        // A Linux guest's ACPI sleep/reset registers and its power button
        // (the tables describing them are written with the kernel).
        let power_button = if probe_steps {
            None
        } else {
            let ged_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Thread)?;
            fd.register_irqfd(&ged_irq, crate::acpi::GED_GSI)
                .map_err(kvm_err("register the ACPI GED interrupt"))?;
            let (ports, button) = crate::acpi::pm_device(control.clone(), ged_irq);
            pio.insert(
                Arc::new(Mutex::new(ports)),
                crate::acpi::PM_BASE.into(),
                tern_acpi::pm::LEN.into(),
            )
            .expect("fresh bus");
            Some(button)
        };

        let mem_end = ram
            .regions
            .last()
            .map(|r| r.start + r.len)
            .unwrap_or_default();
        if restore.is_none() {
            x86::write_tables(&ram.mem, mem_end)?;
        }
        let cpuid = guest_cpuid(&kvm, &config, restore)?;

        let mut vcpus = Vec::new();
        for id in 0..config.vcpus {
            let v = fd
                .create_vcpu(id as u64)
                .map_err(kvm_err("create a vCPU"))?;
            v.set_cpuid2(&cpuid.for_vcpu(id)?)
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
        let pacer = Arc::new(Pacer::default());
        match (&config.guest, restore) {
            (_, Some(st)) => {
                let refs: Vec<&VcpuFd> = vcpus.iter().collect();
                let time = restore_cpu_state(&fd, &refs, st)?;
                if st.probe && needs_pacing(&ram.mem, &time)? {
                    pacer.require();
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
                    &device_infos,
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
                use crate::boot::linux::{ACPI_TABLES_ADDR, ACPI_TABLES_SPACE};
                let machine = crate::acpi::machine(config.vcpus, &device_infos);
                let acpi = tern_acpi::build(&machine, ACPI_TABLES_ADDR, ACPI_TABLES_SPACE)
                    .map_err(VmError::Acpi)?;
                let entry = crate::boot::linux::load_linux(
                    &ram.mem,
                    &ram.regions,
                    &crate::boot::linux::LinuxConfig {
                        kernel: kernel.clone(),
                        initrd: initrd.clone(),
                        // The DSDT describes the virtio-mmio devices; a
                        // `virtio_mmio.device=` for each as well would make
                        // a kernel built with VIRTIO_MMIO_CMDLINE_DEVICES
                        // register every device twice.
                        cmdline: cmdline.clone(),
                        acpi: Some(acpi),
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
            nics,
            scsi,
            vsock,
            time_restore: Mutex::new(time_restore),
            pacer,
            power_button,
            cpuid,
        })
    }
}

/// The CPUID template of the VM: a restored guest keeps the one it saw (if
/// this host can offer it), a new one gets `config.cpu_model` built from
/// this host's KVM. `TERN_LOG=tern_vmm::cpuid=debug` prints both sets.
fn guest_cpuid(
    kvm: &Kvm,
    config: &VmConfig,
    restore: Option<&VmState>,
) -> Result<GuestCpuid, VmError> {
    let supported = cpuid::from_kvm(
        &kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("read supported CPUID"))?,
    );
    for e in &supported {
        tracing::debug!(target: "tern_vmm::cpuid", "supported {e}");
    }
    let built = match restore.and_then(|st| st.cpu.as_ref()) {
        Some(saved) => {
            let saved = GuestCpuid::from_proto(saved)?;
            saved.check_offered(&GuestCpuid::build(&supported, saved.model, config.vcpus)?)?;
            saved
        }
        None => GuestCpuid::build(&supported, config.cpu_model, config.vcpus)?,
    };
    for e in &built.entries {
        tracing::debug!(target: "tern_vmm::cpuid", "guest {} {e}", built.model);
    }
    Ok(built)
}
