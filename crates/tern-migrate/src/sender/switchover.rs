//! The switchover: the last steps before the pause (drain the sockets,
//! sync with the destination), the pause with the last dirty pages and
//! the VM state, the commit, and the abort that undoes an attempt.

use std::time::{Duration, Instant};

use tern_vmm::Vm;

use super::dirty::{dirty_windows, merge_windows, Window};
use super::{error_chain, Engine, MigrateError, TimeoutAction, IO_TIMEOUT, OUTCOME_TIMEOUT};
use crate::compress::Compression;
use crate::progress::{Phase, Progress};
use crate::transport::{self, Stream};
use crate::wire::{self, Kind, WireError};

/// Tells the destination (best effort) and closes every connection.
pub(super) fn abort(ctl: &mut Stream, data: &[Stream], e: &MigrateError) {
    let _ = wire::write_msg(
        ctl,
        Kind::Abort,
        &wire::Abort {
            reason: error_chain(e),
        },
    );
    ctl.shutdown();
    for d in data {
        d.shutdown();
    }
}

/// The switchover over a UNIX socket: the memory goes across as the
/// memfd itself, with the state.
pub(super) fn switchover_zero_copy(
    vm: &Vm,
    mut ctl: Stream,
    memfd: &std::fs::File,
    progress: &Progress,
    was_paused: bool,
) -> Result<(), MigrateError> {
    progress.update(|s| s.phase = Phase::Switchover);
    // As in a streamed switchover: the hand-over's flush stays short.
    vm.disks().flush_all()?;
    let paused_at = Instant::now();
    if !was_paused {
        vm.pause()?;
    }
    vm.disks().release()?;
    let state = vm.save_state()?;
    let unix = ctl.as_unix().expect("zero-copy runs over UNIX sockets");
    transport::send_fd(unix, memfd)?;
    wire::write_msg(
        &mut ctl,
        Kind::Switchover,
        &wire::Switchover {
            vm_state: prost::Message::encode_to_vec(&state),
            paused: was_paused,
            rounds: 0,
        },
    )?;
    finish(ctl, paused_at, progress)
}

/// Waits for the destination's verdict, commits, and waits for it to run
/// the VM. Until the commit is written the source may resume; after it,
/// never on its own (the destination may be running the VM).
fn finish(mut ctl: Stream, paused_at: Instant, progress: &Progress) -> Result<(), MigrateError> {
    ctl.set_timeouts(Some(OUTCOME_TIMEOUT))?;
    let outcome: wire::Outcome = wire::read_msg(&mut ctl, Kind::Outcome, "outcome")?;
    if !outcome.ready {
        return Err(MigrateError::Destination(outcome.error));
    }
    // A write that fails never reached the destination's socket: it will
    // not run the VM, and this side may resume.
    wire::write_frame(&mut ctl, Kind::Commit, &[])?;
    ctl.set_timeouts(Some(IO_TIMEOUT))
        .map_err(|e| MigrateError::Unconfirmed(WireError::Io(e)))?;
    let mut buf = Vec::new();
    match wire::read_frame(&mut ctl, &mut buf) {
        Ok(Kind::Running) => {}
        Ok(got) => {
            return Err(MigrateError::Unconfirmed(WireError::Unexpected {
                expected: "running",
                got,
            }))
        }
        Err(e) => return Err(MigrateError::Unconfirmed(e)),
    }
    let downtime = paused_at.elapsed().as_secs_f64() * 1e3;
    progress.update(|s| s.downtime_ms = Some(downtime));
    Ok(())
}

impl Engine<'_> {
    /// Waits until the peer has taken everything written to the channels
    /// (the socket send queues hold megabytes: on a slow link, tens of
    /// milliseconds that would otherwise fall into the downtime).
    pub(super) fn drain(&self, data: &[Stream]) -> Result<(), MigrateError> {
        let mut last = (u64::MAX, Instant::now());
        loop {
            let mut unsent = 0;
            for d in data {
                // A socket that cannot say is not waited for.
                unsent += d.unsent().unwrap_or(0);
            }
            if unsent == 0 {
                return Ok(());
            }
            if self.progress.cancelled() {
                return Err(MigrateError::Cancelled);
            }
            if self.check_timeout() == Some(TimeoutAction::Cancel) {
                return Err(MigrateError::TimedOut(
                    self.opts.timeout.unwrap_or_default(),
                ));
            }
            let now = Instant::now();
            if unsent < last.0 {
                last = (unsent, now);
            } else if now.duration_since(last.1) > IO_TIMEOUT {
                return Err(MigrateError::Stalled(IO_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until the destination has applied everything sent so far:
    /// data it received but not yet applied is acknowledged by TCP already,
    /// so only it can say. (A destination short of CPU, e.g. decompressing
    /// on cores a compressing source also uses, held up to 32 MiB of
    /// received chunks; applying them inside the pause made 1 Gbit
    /// downtimes of 45-160 ms.)
    pub(super) fn sync(&self, data: &mut [Stream]) -> Result<(), MigrateError> {
        for d in data.iter_mut() {
            wire::write_frame(d, Kind::Sync, &[])?;
        }
        let mut buf = Vec::new();
        for d in data.iter_mut() {
            match wire::read_frame(d, &mut buf)? {
                Kind::Sync => {}
                got => {
                    return Err(WireError::Unexpected {
                        expected: "sync",
                        got,
                    }
                    .into())
                }
            }
        }
        Ok(())
    }

    /// Pauses, sends the last dirty pages and the state, waits for the
    /// destination to run the VM.
    pub(super) fn switchover(
        &self,
        ctl: &mut Stream,
        data: &mut [Stream],
        pending: Vec<Window>,
        was_paused: bool,
    ) -> Result<(), MigrateError> {
        self.progress.update(|s| s.phase = Phase::Switchover);
        // Write back what the guest wrote so far while it still runs: the
        // flush in the hand-over then covers only the last milliseconds.
        self.vm.disks().flush_all()?;
        let paused_at = Instant::now();
        if !was_paused {
            self.vm.pause()?;
        }
        // Before the last dirty log: a held queue writes no guest memory.
        self.vm.disks().release()?;
        // Mirrored disks: the last writes, flushed by the release.
        if let Some(m) = self.disks {
            let bytes = m.final_round()?;
            self.progress.update(|s| s.disk_remaining = bytes);
        }
        let log = self.vm.read_dirty_log()?;
        let windows = merge_windows(pending, dirty_windows(&log));
        let auto = matches!(self.opts.compression, Compression::Auto);
        self.send_round(data, &windows, false, auto, true)?;
        for d in data.iter_mut() {
            wire::write_frame(d, Kind::ChannelDone, &[])?;
        }
        let state = self.vm.save_state()?;
        let rounds = self.progress.snapshot().rounds + 1;
        wire::write_msg(
            ctl,
            Kind::Switchover,
            &wire::Switchover {
                vm_state: prost::Message::encode_to_vec(&state),
                paused: was_paused,
                rounds,
            },
        )?;
        if let Some(m) = self.disks {
            // The last round is sent: the images opened for it close.
            m.finish();
        }
        self.progress.update(|s| {
            s.rounds = rounds;
            s.remaining_bytes = 0;
            s.disk_remaining = 0;
        });
        finish(ctl.try_clone()?, paused_at, self.progress)
    }
}
