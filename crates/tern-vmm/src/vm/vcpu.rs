//! A vCPU thread as an explicit state machine.
//!
//! ```text
//!            start
//!              |  parked in the saved state ------------------+
//!              v                                              |
//!   +----> Checkpoint --(VM finished)--> Exited               |
//!   |          | (run control lets it go)                     |
//!   |          v                                              v
//!   +--- Running --(PORT_PARK from the probe)-----------> Parked --> Exited
//!   (exit handled)   |
//!                    +--(KVM failure, triple fault, ...)--> Crashed --> Exited
//! ```
//!
//! `Checkpoint` is where run control holds a vCPU while the VM is paused
//! (and where a kick from [`Control`](crate::control::Control) lands);
//! `Running` is one `KVM_RUN` and its exit handled; `Parked` and `Crashed`
//! tell run control before the thread ends in `Exited`, which every path
//! reaches exactly once.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{VcpuExit, VcpuFd};
use tern_probe_abi::PORT_PARK;

use super::{Shared, VmExit};

/// Where a vCPU thread is.
#[derive(Debug, PartialEq, Eq)]
enum VcpuState {
    /// Waiting at run control's checkpoint (paused, or about to run).
    Checkpoint,
    /// Entering the guest (`KVM_RUN`) and handling the exit.
    Running,
    /// The guest gave this vCPU up: run control is told, the thread ends.
    Parked,
    /// The vCPU cannot go on (the reason): the VM ends with it.
    Crashed(String),
    /// The thread ends.
    Exited,
}

/// What one `KVM_RUN` exit asks for.
enum Action {
    /// Handled: go back to the checkpoint.
    Continue,
    /// The probe parked this vCPU.
    Park,
    /// Fatal, with the reason.
    Crash(String),
}

/// One vCPU's thread: its fd, its id and what all vCPUs share.
struct VcpuThread {
    id: u32,
    vcpu: Arc<Mutex<VcpuFd>>,
    shared: Arc<Shared>,
}

impl VcpuThread {
    /// The state a thread starts in: a vCPU restored parked (the guest gave
    /// it up before the save) never runs.
    fn initial(&self) -> VcpuState {
        if self.shared.control.is_parked(self.id) {
            VcpuState::Parked
        } else {
            VcpuState::Checkpoint
        }
    }

    /// One transition.
    fn step(&self, state: VcpuState) -> VcpuState {
        let control = &self.shared.control;
        match state {
            VcpuState::Checkpoint => {
                if control.checkpoint() {
                    VcpuState::Running
                } else {
                    VcpuState::Exited
                }
            }
            VcpuState::Running => {
                let action = {
                    let mut v = self.vcpu.lock().unwrap_or_else(|p| p.into_inner());
                    run_once(&mut v, &self.shared)
                };
                match action {
                    Action::Continue => VcpuState::Checkpoint,
                    Action::Park => VcpuState::Parked,
                    Action::Crash(reason) => VcpuState::Crashed(reason),
                }
            }
            VcpuState::Parked => {
                control.park(self.id);
                VcpuState::Exited
            }
            VcpuState::Crashed(reason) => {
                let v = self.vcpu.lock().unwrap_or_else(|p| p.into_inner());
                let regs = v.get_regs().unwrap_or_default();
                let cpl = v.get_sregs().map(|s| s.cs.dpl).unwrap_or(0);
                control.finish(VmExit::Crashed {
                    vcpu: self.id,
                    reason: format!("{reason} (RFLAGS {:#x}, CPL {cpl})", regs.rflags),
                    rip: regs.rip,
                });
                VcpuState::Exited
            }
            // Terminal; `run` stops before it.
            VcpuState::Exited => VcpuState::Exited,
        }
    }
}

/// The body of vCPU `id`'s thread: runs the state machine to `Exited`.
pub(super) fn run(id: u32, vcpu: Arc<Mutex<VcpuFd>>, shared: Arc<Shared>) {
    let t = VcpuThread { id, vcpu, shared };
    let mut state = t.initial();
    while state != VcpuState::Exited {
        state = t.step(state);
    }
    t.shared.control.thread_done();
}

/// One `KVM_RUN` and the handling of its exit.
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
        VcpuExit::X86Rdmsr(exit) => {
            super::msr::read(exit);
            Action::Continue
        }
        VcpuExit::X86Wrmsr(exit) => {
            super::msr::write(exit);
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
