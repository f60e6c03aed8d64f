//! Pacing restored probe images that have no continuous clock.
//!
//! Probe images saved before the probe's clock took TSC jumps out (the
//! golden states of format version 1 among them) wait for TSC deadlines
//! set on the host they were saved on. Where this host could not carry the
//! guest's TSC over and it went back, those deadlines lie as far ahead as
//! the old host had been up. Every wait of those images also ends when the
//! command word is not NONE, so the VMM paces them from outside: it holds
//! [`command::WAKE`] there while the `dirty` step is behind the rate its
//! workload asked for and takes it away (NONE) while it is ahead; any other
//! step that waits is woken for good. A STOP is never overwritten: every
//! VMM write of the command word goes through [`Pacer::command_lock`], and
//! the guest only ever replaces a STOP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tern_probe_abi::workload::{parse, WorkloadKind};
use tern_probe_abi::{command, phase, PAGE_SIZE, STATUS_ADDR, STATUS_COMMAND_OFFSET};
use vm_memory::{Bytes, GuestAddress};

use super::probe::read_status;
use crate::control::{Control, RunState};
use crate::memory::GuestMem;

/// How often the pacer looks.
const TICK: Duration = Duration::from_millis(1);

/// The pacer of one VM (idle unless a restore asked for it).
#[derive(Default)]
pub(super) struct Pacer {
    /// Held by every VMM write of the probe's command word.
    pub(super) command_lock: Mutex<()>,
    needed: AtomicBool,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Pacer {
    /// A restore found an image that needs pacing.
    pub(super) fn require(&self) {
        self.needed.store(true, Ordering::SeqCst);
    }

    /// Starts the pacing thread if it is needed and not running yet.
    pub(super) fn start_if_needed(
        self: &Arc<Self>,
        mem: GuestMem,
        control: Arc<Control>,
        workload: &str,
    ) -> std::io::Result<()> {
        if !self.needed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if thread.is_some() {
            return Ok(());
        }
        // Rates per step: MiB/s of each `dirty` step, `None` for other steps.
        let rates: Vec<Option<u64>> = parse(workload)
            .map(|s| {
                s.as_slice()
                    .iter()
                    .map(|st| (st.kind == WorkloadKind::Dirty).then_some(st.rate))
                    .collect()
            })
            .unwrap_or_default();
        let me = self.clone();
        *thread = Some(
            std::thread::Builder::new()
                .name("probe-pacer".into())
                .spawn(move || me.run(&mem, &control, &rates))?,
        );
        Ok(())
    }

    /// Stops the thread (the VM ends).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    fn run(&self, mem: &GuestMem, control: &Control, rates: &[Option<u64>]) {
        // The schedule: `base_pages` written at `base`.
        let mut base: Option<(Instant, u64)> = None;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            match control.state() {
                RunState::Running => {}
                RunState::Paused => {
                    // A save or checkpoint taken now keeps no WAKE.
                    self.set(mem, command::NONE);
                    base = None;
                    continue;
                }
                RunState::Stopping | RunState::Stopped => return,
            }
            let Ok(s) = read_status(mem) else { return };
            if s.phase == phase::DONE {
                return;
            }
            if s.phase != phase::RUNNING {
                continue;
            }
            let Some(rate) = rates
                .get(s.step as usize)
                .copied()
                .flatten()
                .filter(|&r| r > 0)
            else {
                // Any other step that waits is woken for good.
                self.set(mem, command::WAKE);
                continue;
            };
            let written = |s: &tern_probe_abi::Status| {
                s.generation
                    .saturating_mul(s.pages)
                    .saturating_add(s.cursor)
            };
            let done = written(&s);
            let per_sec = rate.saturating_mul((1 << 20) / PAGE_SIZE);
            let now = Instant::now();
            let (t0, p0) = *base.get_or_insert((now, done));
            let due = p0.saturating_add(
                u64::try_from(now.duration_since(t0).as_micros() * u128::from(per_sec) / 1_000_000)
                    .unwrap_or(u64::MAX),
            );
            // Went back (a revert), or more than 100 ms behind (the host was
            // busy): start the schedule again from here, as the probe's own
            // pacing does.
            if done < p0 || due.saturating_sub(done) > per_sec / 10 {
                base = Some((now, done));
                continue;
            }
            if done >= due {
                continue;
            }
            // Behind: let it write until it is due, watching closely (an
            // unpaced guest writes thousands of pages a millisecond), then
            // hold it again.
            if !self.set(mem, command::WAKE) {
                continue;
            }
            let until = Instant::now() + TICK;
            while Instant::now() < until {
                match read_status(mem) {
                    Ok(s) if written(&s) < due && s.phase == phase::RUNNING => {
                        std::hint::spin_loop()
                    }
                    _ => break,
                }
            }
            self.set(mem, command::NONE);
        }
    }

    /// Puts `want` (WAKE or NONE) into the command word unless the word
    /// holds another command (a STOP); whether it now holds `want`.
    fn set(&self, mem: &GuestMem, want: u32) -> bool {
        let _held = self.command_lock.lock().unwrap_or_else(|p| p.into_inner());
        let at = GuestAddress(STATUS_ADDR + STATUS_COMMAND_OFFSET);
        match mem.read_obj::<u32>(at) {
            Ok(cmd) if cmd == want => true,
            Ok(command::NONE | command::WAKE) => mem.write_obj(want, at).is_ok(),
            _ => false,
        }
    }
}
