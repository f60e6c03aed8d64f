//! The worker's own half of "one copy, always": a cluster daemon sends
//! [`OwnershipRenew`] after each lease renewal etcd confirmed; the worker
//! holds the deadline it was given and, when it passes without a renewal
//! (daemon killed, stopped, or cut off from etcd), pauses the VM at once and
//! then stops it, by itself. The daemon's deadline ends before its lease
//! can expire, so the VM is off before another node may claim it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tern_vmm::{RunState, Vm};
use tern_worker_proto::requests::{OwnershipRenew, OwnershipRenewReply};
use tern_worker_proto::WorkerError;

/// Longest deadline a renewal may set: a daemon asking for more is wrong
/// (leases are seconds long), and a huge value would disarm the fence.
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// How long after the pause the stop follows: the pause halts the guest
/// at once; the stop (which flushes the disks) is then unhurried.
const STOP_AFTER_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Fence {
    token: i64,
    deadline: Instant,
}

/// The ownership deadline, armed by the first renewal.
#[derive(Default)]
pub struct Ownership {
    fence: Mutex<Option<Fence>>,
    renewed: Condvar,
}

impl Ownership {
    /// Handles a renewal: refuses an older token, else moves the deadline.
    /// The first renewal starts the watchdog thread over `vm`.
    pub fn renew(
        self: &Arc<Self>,
        vm: &Arc<Vm>,
        r: &OwnershipRenew,
    ) -> Result<OwnershipRenewReply, WorkerError> {
        let wanted = Duration::from_millis(r.deadline_ms);
        if wanted > MAX_DEADLINE {
            return Err(WorkerError::bad_request(format!(
                "ownership deadline {} ms is longer than the most allowed ({} ms)",
                r.deadline_ms,
                MAX_DEADLINE.as_millis()
            )));
        }
        let mut fence = self.fence.lock().unwrap_or_else(|p| p.into_inner());
        let first = fence.is_none();
        if let Some(f) = *fence {
            if r.token < f.token {
                return Err(WorkerError::conflict(format!(
                    "fencing token {} is older than the one in force ({})",
                    r.token, f.token
                )));
            }
            if Instant::now() >= f.deadline {
                return Err(WorkerError::conflict(
                    "the ownership deadline has passed: the VM is stopping".to_string(),
                ));
            }
        }
        let deadline = Instant::now() + wanted;
        *fence = Some(Fence {
            token: r.token,
            deadline,
        });
        drop(fence);
        self.renewed.notify_all();
        if first {
            let me = self.clone();
            let vm = vm.clone();
            std::thread::Builder::new()
                .name("ownership".into())
                .spawn(move || me.watch(&vm))
                .map_err(|e| {
                    WorkerError::failed(format!("cannot start the ownership watchdog: {e}"))
                })?;
        }
        Ok(OwnershipRenewReply {
            token: r.token,
            deadline_ms: r.deadline_ms,
        })
    }

    /// Waits for the deadline; each renewal pushes it on. Once it passes,
    /// pauses and then stops the VM.
    fn watch(&self, vm: &Vm) {
        let mut fence = self.fence.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let Some(f) = *fence else { return };
            let now = Instant::now();
            if now >= f.deadline {
                break;
            }
            fence = self
                .renewed
                .wait_timeout(fence, f.deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let token = fence.map_or(0, |f| f.token);
        drop(fence);
        eprintln!(
            "tern: ownership deadline passed without a renewal (fencing token {token}): \
             pausing and stopping the VM"
        );
        if vm.state() == RunState::Running {
            if let Err(e) = vm.pause() {
                eprintln!(
                    "tern: pause at the ownership deadline: {}",
                    crate::error_chain(&e)
                );
            }
        }
        std::thread::sleep(STOP_AFTER_PAUSE);
        vm.request_stop();
    }
}
