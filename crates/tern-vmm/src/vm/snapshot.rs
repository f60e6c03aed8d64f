//! Saving and restoring a VM: CPU, device and serial state, guest time,
//! and checkpoints loaded into a paused VM.

use kvm_ioctls::{VcpuFd, VmFd};

use super::probe::read_status;
use super::{Vm, VmConfig, VmError};
use crate::control::RunState;
use crate::memory::{GuestRam, MemoryError};
use crate::state::time::TimeRestore;
use crate::state::{self, StateError, VmState};

impl Vm {
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
            cpu: Some(self.cpuid.to_proto()),
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
        st.devices
            .extend(self.nics.save().iter().enumerate().map(|(index, n)| {
                state::proto::DeviceState {
                    kind: VIRTIO_NET_KIND.into(),
                    index: index as u32,
                    data: prost::Message::encode_to_vec(n),
                }
            }));
        if let Some(s) = &self.scsi {
            st.devices.push(state::proto::DeviceState {
                kind: VIRTIO_SCSI_KIND.into(),
                index: 0,
                data: prost::Message::encode_to_vec(&s.save()?),
            });
        }
        st.devices
            .extend(crate::devices::vsock::save(self.vsock.as_ref()).map(|v| {
                state::proto::DeviceState {
                    kind: VIRTIO_VSOCK_KIND.into(),
                    index: 0,
                    data: prost::Message::encode_to_vec(&v),
                }
            }));
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
        restore_nic_devices(st, &self.nics)?;
        if let Some(s) = &self.scsi {
            restore_scsi_device(st, s)?;
        }
        restore_vsock_device(st, self.vsock.as_ref())?;
        let guards: Vec<_> = self
            .vcpus
            .iter()
            .map(|v| v.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let refs: Vec<&VcpuFd> = guards.iter().map(|g| &**g).collect();
        let time = restore_cpu_state(&self.fd, &refs, st)?;
        if st.probe && needs_pacing(&self.ram.mem, &time)? {
            self.pacer.require();
            self.start_pacer()?;
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
}

/// Puts VM-wide and vCPU state back from `st` and continues guest time:
/// kvmclock first, then each vCPU (its TSC rate before its MSRs), then one
/// TSC offset for all vCPUs where the IA32_TSC writes were not honoured.
pub(super) fn restore_cpu_state(
    fd: &VmFd,
    vcpus: &[&VcpuFd],
    st: &VmState,
) -> Result<TimeRestore, VmError> {
    state::restore_vm(fd, st)?;
    state::time::continue_tsc_rate(vcpus, st);
    for (v, vs) in vcpus.iter().zip(&st.vcpus) {
        state::restore_vcpu(v, vs)?;
    }
    Ok(state::time::continue_time(fd, vcpus, st)?)
}

/// Whether a restored probe image needs [`super::pacer`]: it predates the
/// probe's continuous clock (its status page has no TSC reading), it is in
/// a step, and this host left its TSC behind the saved one, so its waits
/// would last as long as the old host had been up.
pub(super) fn needs_pacing(
    mem: &crate::memory::GuestMem,
    time: &TimeRestore,
) -> Result<bool, VmError> {
    let state::time::TscRestore::NotHonoured { wanted, found, .. } = time.tsc else {
        return Ok(false);
    };
    let status = read_status(mem).map_err(VmError::StatusPage)?;
    Ok(found < wanted && status.tsc == 0 && status.phase == tern_probe_abi::phase::RUNNING)
}

/// `DeviceState::kind` of a virtio-blk transport.
const VIRTIO_BLK_KIND: &str = "virtio-blk";

/// The saved states of every device of `kind`, decoded as `M`, in index
/// order; `None` when the state has none of them (written before such
/// devices were saved, or of a VM without them).
fn saved_devices<M: prost::Message + Default>(
    st: &VmState,
    kind: &str,
) -> Result<Option<Vec<M>>, VmError> {
    let mut saved: Vec<&state::proto::DeviceState> =
        st.devices.iter().filter(|d| d.kind == kind).collect();
    if saved.is_empty() {
        return Ok(None);
    }
    saved.sort_by_key(|d| d.index);
    let decoded = saved
        .iter()
        .map(|d| {
            M::decode(d.data.as_slice()).map_err(|e| {
                StateError::Mismatch(format!("{kind} {} state is corrupt: {e}", d.index))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(decoded))
}

/// Continues the disks' virtio transports from the saved state. A state
/// written before device state was recorded has none: the disks then start
/// fresh, as they did when that state was written.
pub(super) fn restore_disk_devices(
    st: &VmState,
    disks: &crate::devices::Disks,
) -> Result<(), VmError> {
    match saved_devices::<state::proto::VirtioMmioState>(st, VIRTIO_BLK_KIND)? {
        Some(decoded) => Ok(disks.restore(&decoded)?),
        None => Ok(()),
    }
}

/// `DeviceState::kind` of a virtio-net device.
const VIRTIO_NET_KIND: &str = "virtio-net";

/// Continues the NICs from the saved state; a state without any (saved
/// before NICs existed, or of a VM without them) leaves them fresh, and
/// the guest's driver finds its device reset.
pub(super) fn restore_nic_devices(
    st: &VmState,
    nics: &crate::devices::nics::Nics,
) -> Result<(), VmError> {
    match saved_devices::<state::proto::VirtioNetState>(st, VIRTIO_NET_KIND)? {
        Some(decoded) => Ok(nics.restore(&decoded)?),
        None => Ok(()),
    }
}

/// `DeviceState::kind` of the virtio-scsi controller.
const VIRTIO_SCSI_KIND: &str = "virtio-scsi";

/// Whether `st` has a SCSI controller (a VM builds one to restore it).
pub(super) fn has_scsi_device(st: &VmState) -> bool {
    st.devices.iter().any(|d| d.kind == VIRTIO_SCSI_KIND)
}

/// Continues the SCSI controller from the saved state; a state without one
/// (saved before SCSI existed) leaves it fresh.
pub(super) fn restore_scsi_device(
    st: &VmState,
    scsi: &crate::devices::scsi::ScsiController,
) -> Result<(), VmError> {
    match saved_devices::<state::proto::VirtioScsiState>(st, VIRTIO_SCSI_KIND)? {
        Some(decoded) => match decoded.as_slice() {
            [one] => Ok(scsi.restore(one)?),
            more => Err(VmError::State(StateError::Mismatch(format!(
                "state has {} SCSI controllers, a VM has at most 1",
                more.len()
            )))),
        },
        None => Ok(()),
    }
}

/// `DeviceState::kind` of the virtio-vsock device.
const VIRTIO_VSOCK_KIND: &str = "virtio-vsock";

/// Continues the vsock device from the saved state (with a transport
/// reset for the guest); a state without one leaves it fresh.
pub(super) fn restore_vsock_device(
    st: &VmState,
    dev: Option<&crate::devices::vsock::VsockDevice>,
) -> Result<(), VmError> {
    let saved = saved_devices::<state::proto::VirtioVsockState>(st, VIRTIO_VSOCK_KIND)?;
    let first = saved.as_ref().and_then(|v| v.first());
    Ok(crate::devices::vsock::restore(dev, first)?)
}

/// Refuses a state that does not fit the VM being built.
pub(super) fn check_restore_target(
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

pub(super) fn serial_to_proto(s: &tern_devices::serial::SerialState) -> state::proto::SerialState {
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

pub(super) fn serial_from_proto(
    s: &state::proto::SerialState,
) -> tern_devices::serial::SerialState {
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
