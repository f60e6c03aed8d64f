//! The NIC's receive thread: polls the tap and hands frames to the device
//! when the guest has buffers for them.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

use super::{drain_eventfd, new_eventfd, signal_eventfd, NetStats, RxSignal, RX_QUEUE};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::status;

/// How long one poll waits before it looks at the transport again.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Pause after a pass that could not move a frame (the driver is not
/// running, or its receive queue is not set up): the tap stays readable,
/// and polling it again at once would spin.
const BACKOFF: Duration = Duration::from_millis(20);

/// The receive thread of one NIC; stops when dropped.
pub struct RxThread {
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl RxThread {
    /// Starts thread `name` polling `tap` (a clone of the backend's fd)
    /// for `transport`, whose device shares `signal` and `stats`.
    pub fn spawn(
        name: String,
        tap: OwnedFd,
        signal: Arc<RxSignal>,
        stats: Arc<NetStats>,
        transport: Weak<Mutex<MmioTransport>>,
    ) -> std::io::Result<RxThread> {
        let stop = Arc::new(new_eventfd()?);
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || rx_loop(&tap, &signal, &stats, &s, &transport))?;
        Ok(RxThread {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RxThread {
    fn drop(&mut self) {
        signal_eventfd(self.stop.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn progress(stats: &NetStats) -> u64 {
    stats.rx_frames.load(Ordering::Relaxed) + stats.rx_dropped.load(Ordering::Relaxed)
}

fn rx_loop(
    tap: &OwnedFd,
    signal: &RxSignal,
    stats: &NetStats,
    stop: &OwnedFd,
    transport: &Weak<Mutex<MmioTransport>>,
) {
    let timeout = Timespec::try_from(POLL_TIMEOUT).expect("a small duration");
    loop {
        let starved = signal.starved();
        let (stop_ready, tap_ready) = {
            let mut fds = vec![
                PollFd::new(stop, PollFlags::IN),
                PollFd::from_borrowed_fd(signal.wake_fd(), PollFlags::IN),
            ];
            // Without buffers the frame waits in the device: the tap's
            // readiness means nothing until the driver adds some.
            if !starved {
                fds.push(PollFd::from_borrowed_fd(tap.as_fd(), PollFlags::IN));
            }
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    eprintln!("tern: NIC receive thread: poll failed: {e}");
                    return;
                }
            }
            let tap_ready = fds.get(2).is_some_and(|f| !f.revents().is_empty());
            (!fds[0].revents().is_empty(), tap_ready)
        };
        if stop_ready {
            return;
        }
        // Drain the wakeup; its count does not matter.
        drain_eventfd(signal.wake_fd());
        if !tap_ready && starved == signal.starved() && !starved {
            continue;
        }
        let Some(t) = transport.upgrade() else { return };
        let before = progress(stats);
        let running = {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            let st = t.status();
            let running = st & status::DRIVER_OK != 0 && st & status::DEVICE_NEEDS_RESET == 0;
            if running {
                t.process(RX_QUEUE);
            }
            running
        };
        if tap_ready && (!running || (progress(stats) == before && !signal.starved())) {
            std::thread::sleep(BACKOFF);
        }
    }
}
