//! The probe-guest harness: its reports, its status page and the commands
//! the VMM writes into its mailbox.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tern_devices::testport::ProbeEvents;
use tern_probe_abi::{command, Status, STATUS_ADDR};
use vm_memory::{Bytes, GuestAddress};

use super::{Vm, VmError, VmExit};
use crate::control::Control;

/// A callback receiving each probe report line.
pub type ReportFn = Box<dyn Fn(&str) + Send + Sync>;

/// Probe guest reports, kept in order and waitable.
#[derive(Default)]
pub struct Reports {
    lines: Mutex<Vec<String>>,
    cv: Condvar,
    printer: Option<ReportFn>,
}

impl Reports {
    /// An empty log that hands each report to `printer` too.
    pub(super) fn with_printer(printer: Option<ReportFn>) -> Self {
        Reports {
            printer,
            ..Default::default()
        }
    }

    /// Every report so far.
    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until a report satisfies `pred` (returns it) or `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            lines = self
                .cv
                .wait_timeout(lines, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn push(&self, line: String) {
        if let Some(p) = &self.printer {
            p(&line);
        }
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
        self.cv.notify_all();
    }
}

/// Connects the test port to run control and the report log.
pub(super) struct ProbeSink {
    pub(super) control: Arc<Control>,
    pub(super) reports: Arc<Reports>,
}

impl ProbeEvents for ProbeSink {
    fn exit(&self, status: u32) {
        self.control.finish(VmExit::Guest(status));
    }
    fn report(&self, text: String) {
        self.reports.push(text);
    }
}

impl Vm {
    /// Reads the probe guest's status page.
    pub fn probe_status(&self) -> Result<Status, VmError> {
        read_status(&self.ram.mem).map_err(VmError::StatusPage)
    }

    /// Writes a command into the probe guest's mailbox (`command::STOP`).
    pub fn probe_command(&self, cmd: u32) -> Result<(), VmError> {
        let _held = self
            .pacer
            .command_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.ram
            .mem
            .write_obj(
                cmd,
                GuestAddress(STATUS_ADDR + tern_probe_abi::STATUS_COMMAND_OFFSET),
            )
            .map_err(VmError::StatusPage)
    }

    /// Asks the `touch` workload for round `round`.
    pub fn probe_touch(&self, round: u64) -> Result<(), VmError> {
        self.ram
            .mem
            .write_obj(
                round,
                GuestAddress(STATUS_ADDR + tern_probe_abi::STATUS_TOUCH_REQUEST_OFFSET),
            )
            .map_err(VmError::StatusPage)
    }

    /// Tells the probe's open-ended step to stop.
    pub fn probe_stop_step(&self) -> Result<(), VmError> {
        self.probe_command(command::STOP)
    }
}

/// Reads the status page field by field (each naturally aligned, so no
/// field is torn by a concurrent guest write).
pub fn read_status(mem: &crate::memory::GuestMem) -> Result<Status, vm_memory::GuestMemoryError> {
    use std::mem::offset_of;
    let at = |off: usize| GuestAddress(STATUS_ADDR + off as u64);
    Ok(Status {
        magic: mem.read_obj(at(offset_of!(Status, magic)))?,
        phase: mem.read_obj(at(offset_of!(Status, phase)))?,
        step: mem.read_obj(at(offset_of!(Status, step)))?,
        command: mem.read_obj(at(offset_of!(Status, command)))?,
        command_ack: mem.read_obj(at(offset_of!(Status, command_ack)))?,
        generation: mem.read_obj(at(offset_of!(Status, generation)))?,
        cursor: mem.read_obj(at(offset_of!(Status, cursor)))?,
        pages: mem.read_obj(at(offset_of!(Status, pages)))?,
        touch_rounds: mem.read_obj(at(offset_of!(Status, touch_rounds)))?,
        touch_request: mem.read_obj(at(offset_of!(Status, touch_request)))?,
        checked_in: mem.read_obj(at(offset_of!(Status, checked_in)))?,
        blk_capacity_changes: mem.read_obj(at(offset_of!(Status, blk_capacity_changes)))?,
        blk_capacity: mem.read_obj(at(offset_of!(Status, blk_capacity)))?,
        blk_in_use_end: mem.read_obj(at(offset_of!(Status, blk_in_use_end)))?,
        tsc: mem.read_obj(at(offset_of!(Status, tsc)))?,
        clock_adjust: mem.read_obj(at(offset_of!(Status, clock_adjust)))?,
        clock_jumps: mem.read_obj(at(offset_of!(Status, clock_jumps)))?,
        clock_last: mem.read_obj(at(offset_of!(Status, clock_last)))?,
    })
}
