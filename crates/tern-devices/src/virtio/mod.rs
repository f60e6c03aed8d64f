//! Virtio devices on the virtio-mmio transport (virtio 1.2, §4.2).
//!
//! [`mmio::MmioTransport`] is the register window a guest driver talks to;
//! it owns the virtqueues ([`virtio_queue::Queue`]) and hands them to a
//! [`VirtioDevice`] model such as [`block::Block`] when the driver notifies.
//!
//! Requests are processed on the vCPU thread that wrote QueueNotify: no
//! cross-thread wakeup between the guest's kick and the I/O, which is the
//! lowest latency a polling or interrupt-driven guest can get, and the vCPU
//! exit is already paid for. A device that must wait (a QoS maximum) does
//! not block that thread: it leaves the request on the ring and asks for a
//! retry, which [`Timer`] (one thread per device) delivers; the same
//! thread gives the device a periodic [`VirtioDevice::tick`].
//!
//! Optionally ([`mmio::MmioTransport::set_threaded`]) the timer thread does
//! all the processing and polls the rings for [`POLL_WINDOW`] after each
//! burst with driver notifications off, so a busy driver never exits. That
//! wins with a spare host core; on a loaded host (two shared cores, as on
//! the CI machines) the thread's wakeups cost more than the exits, so the
//! inline path is the default. Measured with the probe guest, 4 KiB random
//! reads at depth 1 under KVM PVM with the host's cores busy: inline 14k
//! IOPS, polling thread under 1k.

pub mod block;
pub mod mmio;
pub mod net;
pub mod scsi;
#[cfg(test)]
mod test_driver;
#[cfg(test)]
mod tests;
pub mod vsock;

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtio_queue::Queue;

/// Guest memory as the VMM maps it (with dirty tracking of device writes).
pub type Mem = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Feature bit: virtio 1.0+ device (the only kind the v2 transport serves).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: used/avail event indexes.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Device status bits (§2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up.
    pub const FAILED: u32 = 0x80;
}

/// What a device did with a queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueOutcome {
    /// Used entries were added (the driver may need an interrupt).
    pub used: bool,
    /// Requests are left that must wait this long (throttled).
    pub retry_after: Option<Duration>,
    /// The driver broke the queue's rules (e.g. a bad avail index): the
    /// device goes into DEVICE_NEEDS_RESET.
    pub broken: bool,
    /// The device leaves the available buffers for its backend to fill
    /// (a NIC's receive queue with no frame waiting): buffers on the ring
    /// are no reason to process again; the backend's event will be.
    pub backend_wait: bool,
}

/// A device model behind a virtio transport.
pub trait VirtioDevice: Send {
    /// Virtio device id (2: block).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (VERSION_1 included).
    fn features(&self) -> u64;
    /// The driver accepted `features` (a subset of [`VirtioDevice::features`]).
    fn ack_features(&mut self, _features: u64) {}
    /// Reads device config space at `offset`; bytes beyond it read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Processes what the driver made available on queue `index`.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &Mem) -> QueueOutcome;
    /// Called about every [`TICK`] from the device's timer thread.
    fn tick(&mut self) {}
    /// The driver reset the device.
    fn reset(&mut self) {}
}

/// Period of [`VirtioDevice::tick`].
pub const TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct TimerState {
    deadline: Option<Instant>,
    stop: bool,
}

/// Wakes a transport's timer thread: at a retry deadline, or at once.
#[derive(Default)]
pub struct Waker {
    state: Mutex<TimerState>,
    cv: Condvar,
}

impl Waker {
    fn lock(&self) -> std::sync::MutexGuard<'_, TimerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a retry no later than `at`.
    pub fn schedule(&self, at: Instant) {
        let mut s = self.lock();
        if s.deadline.is_none_or(|d| at < d) {
            s.deadline = Some(at);
            self.cv.notify_all();
        }
    }

    /// Asks for a retry now (e.g. a limit was raised).
    pub fn kick(&self) {
        self.schedule(Instant::now());
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }
}

/// What one polling pass found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Requests were completed: keep polling.
    Worked,
    /// Nothing to do this pass.
    Idle,
    /// Stop polling (throttled, broken or not running).
    Stop,
}

/// Something a [`Timer`] drives: retries due work, ticks, and polls.
pub trait Timed: Send {
    /// `retry`: a scheduled retry (or a driver's kick) is due.
    fn on_timer(&mut self, retry: bool);
    /// One polling pass over the queues.
    fn poll(&mut self) -> Poll {
        Poll::Stop
    }
    /// Turns driver notifications on or off; on, returns true if work
    /// arrived meanwhile (so polling must go on).
    fn set_notify(&mut self, _on: bool) -> bool {
        false
    }
}

/// How long the timer thread polls the rings after the last request
/// before it turns notifications back on and sleeps. A driver that keeps
/// the queue busy then never exits to notify: under KVM PVM an MMIO exit
/// costs tens of microseconds, far more than a page-cache read.
pub const POLL_WINDOW: Duration = Duration::from_micros(200);

/// The per-device timer thread; stops when dropped.
pub struct Timer {
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Timer {
    /// Starts a thread named `name` driving `target` through `waker`. It
    /// ends when the timer is dropped or the target is gone.
    pub fn spawn<T: Timed + ?Sized + 'static>(
        name: String,
        waker: Arc<Waker>,
        target: Weak<Mutex<T>>,
    ) -> std::io::Result<Timer> {
        let w = waker.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || timer_loop(&w, &target))?;
        Ok(Timer {
            waker,
            thread: Some(thread),
        })
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.waker.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn timer_loop<T: Timed + ?Sized>(waker: &Waker, target: &Weak<Mutex<T>>) {
    let mut next_tick = Instant::now() + TICK;
    loop {
        let retry = {
            let mut s = waker.lock();
            loop {
                if s.stop {
                    return;
                }
                let now = Instant::now();
                if s.deadline.is_some_and(|d| d <= now) {
                    s.deadline = None;
                    break true;
                }
                if next_tick <= now {
                    break false;
                }
                let until = s.deadline.map_or(next_tick, |d| d.min(next_tick));
                s = waker
                    .cv
                    .wait_timeout(s, until - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let now = Instant::now();
        if next_tick <= now {
            next_tick = now + TICK;
        }
        let Some(t) = target.upgrade() else { return };
        t.lock().unwrap_or_else(|p| p.into_inner()).on_timer(retry);
        if retry {
            poll_rings(waker, &t);
        }
    }
}

/// Polls until the rings stay idle for [`POLL_WINDOW`], with driver
/// notifications off meanwhile; always leaves them on.
fn poll_rings<T: Timed + ?Sized>(waker: &Waker, t: &Mutex<T>) {
    // Locked per pass: the vCPU's register accesses get in between.
    let lock = || t.lock().unwrap_or_else(|p| p.into_inner());
    lock().set_notify(false);
    let mut until = Instant::now() + POLL_WINDOW;
    loop {
        match lock().poll() {
            Poll::Worked => until = Instant::now() + POLL_WINDOW,
            Poll::Stop => break,
            Poll::Idle => {}
        }
        if Instant::now() >= until || waker.lock().stop {
            // Re-arm, and catch a request that raced in before it.
            if lock().set_notify(true) {
                lock().set_notify(false);
                until = Instant::now() + POLL_WINDOW;
                continue;
            }
            return;
        }
        std::hint::spin_loop();
    }
    lock().set_notify(true);
}
