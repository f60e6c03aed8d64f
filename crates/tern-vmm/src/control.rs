//! Coordination between the VMM's controlling thread and the vCPU threads:
//! pause, resume, park, stop, and how the VM ended.
//!
//! A vCPU inside `KVM_RUN` only notices a request once it leaves the guest,
//! so requests are followed by signals to the vCPU threads (which make
//! `KVM_RUN` return `EINTR`), repeated until every vCPU acknowledged: a
//! signal that lands just before a thread re-enters the guest is lost, the
//! next one is not.

use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use crate::VmExit;

/// Signal used to kick vCPU threads out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process. No `SA_RESTART`, so
/// the ioctl returns `EINTR`.
pub(crate) fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
            .expect("registering the vCPU kick signal handler");
    });
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Run,
    Pause,
    Stop,
}

struct State {
    request: Request,
    total: u32,
    paused: u32,
    parked: u32,
    exited: u32,
    exit: Option<VmExit>,
    /// Per vCPU: parked (the guest has nothing more to run on it).
    parked_ids: Vec<bool>,
}

/// Run state as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// vCPUs run (or are about to).
    Running,
    /// Pause requested or complete.
    Paused,
    /// Stop requested or the guest ended.
    Stopping,
    /// Every vCPU thread has ended.
    Stopped,
}

/// Errors of control requests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// The VM is stopping or stopped.
    #[error("the VM is not running")]
    NotRunning,
    /// Resume without pause.
    #[error("the VM is not paused")]
    NotPaused,
    /// vCPUs did not acknowledge in time.
    #[error("vCPUs did not stop within {0:?}")]
    Timeout(Duration),
}

/// Shared between the controller and the vCPU threads.
pub(crate) struct Control {
    st: Mutex<State>,
    cv: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl Control {
    pub(crate) fn new(total: u32, parked_ids: Vec<bool>) -> Self {
        Control {
            st: Mutex::new(State {
                request: Request::Run,
                total,
                paused: 0,
                parked: 0,
                exited: 0,
                exit: None,
                parked_ids,
            }),
            cv: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cv.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register_thread(&self, t: libc::pthread_t) {
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(t);
    }

    /// Forgets the threads before they are joined (a joined thread's id
    /// must not be signalled).
    pub(crate) fn clear_threads(&self) {
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn kick_all(&self) {
        for &t in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            // SAFETY: `t` belongs to a vCPU thread of this VM that has not been
            // joined (ids are removed before joining), so it is a valid
            // pthread id; the signal's handler is installed and does nothing.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }

    /// Called by a vCPU thread before each entry: blocks while paused;
    /// false once the VM must stop.
    pub(crate) fn checkpoint(&self) -> bool {
        let mut st = self.lock();
        loop {
            match st.request {
                Request::Run => return true,
                Request::Stop => return false,
                Request::Pause => {
                    st.paused += 1;
                    self.cv.notify_all();
                    while st.request == Request::Pause {
                        st = self.wait(st);
                    }
                    st.paused -= 1;
                }
            }
        }
    }

    /// Called by a vCPU thread whose guest has nothing more to run on it:
    /// blocks until the VM stops.
    pub(crate) fn park(&self, id: u32) {
        let mut st = self.lock();
        st.parked += 1;
        if let Some(p) = st.parked_ids.get_mut(id as usize) {
            *p = true;
        }
        self.cv.notify_all();
        while st.request != Request::Stop {
            st = self.wait(st);
        }
    }

    /// Records how the VM ended (first report wins) and stops every vCPU.
    pub(crate) fn finish(&self, exit: VmExit) {
        {
            let mut st = self.lock();
            st.exit.get_or_insert(exit);
            st.request = Request::Stop;
            self.cv.notify_all();
        }
        self.kick_all();
    }

    pub(crate) fn thread_done(&self) {
        let mut st = self.lock();
        st.exited += 1;
        self.cv.notify_all();
    }

    /// Pauses every vCPU; returns once all are out of the guest.
    pub(crate) fn pause(&self, timeout: Duration) -> Result<(), ControlError> {
        let start = Instant::now();
        {
            let mut st = self.lock();
            match st.request {
                Request::Stop => return Err(ControlError::NotRunning),
                Request::Pause | Request::Run => st.request = Request::Pause,
            }
        }
        loop {
            {
                let st = self.lock();
                if st.request == Request::Stop {
                    return Err(ControlError::NotRunning);
                }
                if st.paused + st.parked + st.exited >= st.total {
                    return Ok(());
                }
            }
            self.kick_all();
            let st = self.lock();
            let _ = self
                .cv
                .wait_timeout(st, Duration::from_millis(2))
                .unwrap_or_else(|p| p.into_inner());
            if start.elapsed() > timeout {
                // Leave no half-paused VM behind.
                let mut st = self.lock();
                if st.request == Request::Pause {
                    st.request = Request::Run;
                    self.cv.notify_all();
                }
                return Err(ControlError::Timeout(timeout));
            }
        }
    }

    /// Before the vCPU threads start: makes them wait at their first
    /// checkpoint, as if paused.
    pub(crate) fn hold(&self) {
        let mut st = self.lock();
        if st.request == Request::Run {
            st.request = Request::Pause;
        }
    }

    /// Resumes a paused VM.
    pub(crate) fn resume(&self) -> Result<(), ControlError> {
        let mut st = self.lock();
        match st.request {
            Request::Pause => {
                st.request = Request::Run;
                self.cv.notify_all();
                Ok(())
            }
            Request::Run => Err(ControlError::NotPaused),
            Request::Stop => Err(ControlError::NotRunning),
        }
    }

    /// Blocks until every vCPU thread ended; returns how the VM ended.
    pub(crate) fn wait_exit(&self) -> VmExit {
        let mut st = self.lock();
        while st.exited < st.total {
            st = self.wait(st);
        }
        st.exit.clone().unwrap_or(VmExit::Stopped)
    }

    /// Waits up to `timeout` for the VM to end.
    pub(crate) fn wait_exit_timeout(&self, timeout: Duration) -> Option<VmExit> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.exited < st.total {
            let left = deadline.checked_duration_since(Instant::now())?;
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Some(st.exit.clone().unwrap_or(VmExit::Stopped))
    }

    /// Whether vCPU `id` is parked (saved with the state; a restored parked
    /// vCPU is not run again).
    pub(crate) fn is_parked(&self, id: u32) -> bool {
        self.lock().parked_ids.get(id as usize) == Some(&true)
    }

    pub(crate) fn state(&self) -> RunState {
        let st = self.lock();
        match st.request {
            _ if st.exited >= st.total => RunState::Stopped,
            Request::Run => RunState::Running,
            Request::Pause => RunState::Paused,
            Request::Stop => RunState::Stopping,
        }
    }
}
