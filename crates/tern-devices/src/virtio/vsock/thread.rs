//! The vsock device's thread: waits on the device's epoll set (the
//! listener and every host stream) and on a wakeup, and serves the
//! receive queue when either fires.
//!
//! While the guest has no receive buffers and the device holds something
//! for it, the epoll set is not watched (its level-triggered readiness
//! would only spin the thread); the driver's next RX notification, or
//! the TX path with a new control packet, wakes it instead.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use super::RX_QUEUE;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::net::{drain_eventfd, new_eventfd, signal_eventfd};
use crate::virtio::status;

/// How long one poll waits before it looks at the transport again.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Pause after a pass that moved nothing although the host side was
/// ready (the driver is not running, or the VM is paused): the streams
/// stay readable, and polling again at once would spin.
const BACKOFF: Duration = Duration::from_millis(20);

/// What the thread and the device share: whether the device waits for
/// receive buffers, and the eventfd that wakes the thread.
#[derive(Debug)]
pub struct Signal {
    starved: AtomicBool,
    wake: OwnedFd,
}

impl Signal {
    /// A fresh signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(Signal {
            starved: AtomicBool::new(false),
            wake: new_eventfd()?,
        })
    }

    /// True while the device holds packets and the guest gave no buffers.
    pub fn starved(&self) -> bool {
        self.starved.load(Ordering::Acquire)
    }

    /// The eventfd the thread polls.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Wakes the thread to serve the receive queue.
    pub fn wake(&self) {
        signal_eventfd(self.wake.as_fd());
    }

    pub(super) fn set_starved(&self, on: bool) {
        let was = self.starved.swap(on, Ordering::AcqRel);
        if was && !on {
            self.wake();
        }
    }
}

/// The thread of one vsock device; stops when dropped.
pub struct VsockThread {
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl VsockThread {
    /// Starts thread `name` waiting on `epoll` (the device's set) for
    /// `transport`, whose device shares `signal` and `progress` (a counter
    /// the device moves whenever it handles a host event).
    pub fn spawn(
        name: String,
        epoll: Arc<OwnedFd>,
        signal: Arc<Signal>,
        handle: Arc<super::VsockHandle>,
        transport: Weak<Mutex<MmioTransport>>,
    ) -> std::io::Result<VsockThread> {
        let stop = Arc::new(new_eventfd()?);
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(&epoll, &signal, &handle.stats().progress, &s, &transport))?;
        Ok(VsockThread {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for VsockThread {
    fn drop(&mut self) {
        signal_eventfd(self.stop.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    epoll: &OwnedFd,
    signal: &Signal,
    progress: &AtomicU64,
    stop: &OwnedFd,
    transport: &Weak<Mutex<MmioTransport>>,
) {
    let timeout = Timespec::try_from(POLL_TIMEOUT).expect("a small duration");
    loop {
        let starved = signal.starved();
        let (stopped, host_ready) = {
            let mut fds = vec![
                PollFd::new(stop, PollFlags::IN),
                PollFd::from_borrowed_fd(signal.wake_fd(), PollFlags::IN),
            ];
            if !starved {
                fds.push(PollFd::new(epoll, PollFlags::IN));
            }
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    eprintln!("tern: vsock thread: poll failed: {e}");
                    return;
                }
            }
            let host_ready = fds.get(2).is_some_and(|f| !f.revents().is_empty());
            (!fds[0].revents().is_empty(), host_ready)
        };
        if stopped {
            return;
        }
        drain_eventfd(signal.wake_fd());
        let Some(t) = transport.upgrade() else { return };
        let before = progress.load(Ordering::Relaxed);
        let running = {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            let st = t.status();
            let running = st & status::DRIVER_OK != 0 && st & status::DEVICE_NEEDS_RESET == 0;
            if running {
                t.process(RX_QUEUE);
            }
            running
        };
        if host_ready && (!running || progress.load(Ordering::Relaxed) == before) {
            std::thread::sleep(BACKOFF);
        }
    }
}
