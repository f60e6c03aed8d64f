//! The worker's control socket: one JSON request per line, one JSON reply
//! per line.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"pause"}`, `{"cmd":"resume"}`,
//! `{"cmd":"shutdown"}`, `{"cmd":"reports"}`, `{"cmd":"probe-stop"}` (ends
//! the probe's open-ended step), `{"cmd":"probe-touch","round":N}`,
//! `{"cmd":"disk-qos","disk":N,"max_iops":N,"min_iops":N,"max_bw":BYTES}`
//! (omitted limits stay, 0 removes one), `{"cmd":"disk-resize","disk":N,
//! "size":BYTES}`, `{"cmd":"events"}` (QoS events),
//! `{"cmd":"save","dir":DIR}` (pause, write state and memory, stop the
//! worker), `{"cmd":"checkpoint-create","name":S,"memory":BOOL}`,
//! `{"cmd":"checkpoint-list"}`, `{"cmd":"checkpoint-revert","id":N}`,
//! `{"cmd":"checkpoint-delete","id":N}`, `{"cmd":"export","dir":DIR}`,
//! `{"cmd":"console-input","bytes":[N,...]}` (typing on the serial port).
//! Replies: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tern_vmm::{RunState, Vm};

/// Most bytes one `console-input` request may carry.
const MAX_CONSOLE_INPUT: usize = 4096;

/// `console-input`: the guest gets the bytes as it drains its UART; a
/// guest that stops reading makes the request fail after a second.
fn console_input(vm: &Vm, bytes: &[u8]) -> Value {
    if bytes.len() > MAX_CONSOLE_INPUT {
        return json!({"ok": false, "error": format!(
            "{} bytes of console input in one request; at most {MAX_CONSOLE_INPUT}",
            bytes.len()
        )});
    }
    let took = tern_devices::serial::type_input(vm.serial(), bytes, Duration::from_secs(1));
    if took < bytes.len() {
        return json!({"ok": false, "accepted": took, "error": format!(
            "the guest took {took} of {} bytes: it is not reading its serial port",
            bytes.len()
        )});
    }
    json!({"ok": true, "accepted": took})
}

/// A control request.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// VM state and probe progress.
    Status,
    /// Pause every vCPU.
    Pause,
    /// Resume after pause.
    Resume,
    /// Stop the VM; the worker exits.
    Shutdown,
    /// All probe reports so far.
    Reports,
    /// Tell the probe to end its open-ended step.
    ProbeStop,
    /// Ask the probe's `touch` step for a round.
    ProbeTouch {
        /// Round number (must increase).
        round: u64,
    },
    /// Change a disk's QoS limits now; omitted limits stay as they are,
    /// 0 removes one.
    DiskQos {
        /// Disk index (`--disk` order).
        disk: usize,
        /// Most normalized IOPS (8 KiB each).
        max_iops: Option<u64>,
        /// Reserved normalized IOPS (raises events when not met).
        min_iops: Option<u64>,
        /// Most bytes per second.
        max_bw: Option<u64>,
    },
    /// Grow or shrink a disk of the running VM.
    DiskResize {
        /// Disk index.
        disk: usize,
        /// New size in bytes (a multiple of 512).
        size: u64,
    },
    /// QoS events so far (`min-iops-not-met`, `min-iops-restored`).
    Events,
    /// Type bytes on the guest's serial port (a console's keystrokes).
    ConsoleInput {
        /// The bytes, in order.
        bytes: Vec<u8>,
    },
    /// Save the VM into a new directory and stop the worker.
    Save {
        /// Absolute path of a new (or empty) directory.
        dir: PathBuf,
    },
    /// Take a checkpoint (needs `--checkpoint-dir`).
    CheckpointCreate {
        /// Its name.
        name: String,
        /// Save memory and device state too (default true).
        #[serde(default = "yes")]
        memory: bool,
    },
    /// The checkpoint tree.
    CheckpointList,
    /// Go back to a checkpoint.
    CheckpointRevert {
        /// Checkpoint id.
        id: u64,
    },
    /// Delete a checkpoint, merging its disk changes.
    CheckpointDelete {
        /// Checkpoint id.
        id: u64,
    },
    /// Export the VM (config, memory, disks, checkpoints) into a new
    /// directory; the VM runs on.
    Export {
        /// Absolute path of a new (or empty) directory.
        dir: PathBuf,
    },
    /// Start a live migration (returns at once; poll `migrate-status`).
    Migrate(crate::migrate_cli::MigrateParams),
    /// Progress of the current or last migration.
    MigrateStatus,
    /// Cancel the running migration; the VM keeps running here.
    MigrateCancel,
}

fn yes() -> bool {
    true
}

impl Request {
    /// Whether a successful request ends the worker (after its reply).
    fn stops_worker(&self) -> bool {
        matches!(self, Request::Save { .. })
    }
}

/// Errors starting the control server.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Bind failed.
    #[error("cannot listen on control socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Removes the socket file when the worker ends.
pub struct Server {
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts serving `path` for `vm` on a background thread.
pub fn serve(path: &Path, vm: Arc<Vm>) -> Result<Server, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.into(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another worker serves this socket",
            )));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let vm = vm.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || handle_conn(stream, &vm));
            }
        })
        .map_err(bind_err)?;
    Ok(Server { path: path.into() })
}

fn handle_conn(stream: UnixStream, vm: &Arc<Vm>) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let mut migrate_status = false;
        let (reply, stop) = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                migrate_status = matches!(req, Request::MigrateStatus);
                let stops = req.stops_worker();
                let reply = handle(req, vm);
                let stop = reply["stop"] == true || (stops && reply["ok"] == true);
                (reply, stop)
            }
            Err(e) => (
                json!({"ok": false, "error": format!("bad request: {e}")}),
                false,
            ),
        };
        // One write: a worker that exits right after must not leave a
        // client with half a line.
        let mut buf = reply.to_string();
        buf.push('\n');
        let written = out.write_all(buf.as_bytes()).is_ok();
        if migrate_status && written {
            crate::migrate_cli::status_delivered(&reply);
        }
        // Stop only once the reply is out: the worker exits right after.
        if stop {
            vm.request_stop();
        }
        if !written {
            return;
        }
    }
}

fn state_name(s: RunState) -> &'static str {
    match s {
        RunState::Running => "running",
        RunState::Paused => "paused",
        RunState::Stopping => "stopping",
        RunState::Stopped => "stopped",
    }
}

/// Executes one request.
pub fn handle(req: Request, vm: &Arc<Vm>) -> Value {
    let done = |r: Result<(), tern_vmm::VmError>| match r {
        Ok(()) => json!({"ok": true, "state": state_name(vm.state())}),
        Err(e) => json!({"ok": false, "error": crate::run::chain(&e)}),
    };
    match req {
        Request::Status => {
            let cfg = vm.config();
            let mut v = json!({
                "ok": true,
                "state": state_name(vm.state()),
                "vcpus": cfg.vcpus,
                "memory": cfg.memory,
                "pid": std::process::id(),
            });
            v["disks"] = vm
                .disks()
                .status()
                .iter()
                .map(|d| {
                    json!({
                        "path": d.path,
                        "format": d.format,
                        "readonly": d.read_only,
                        "capacity": d.capacity,
                        "qos": qos_json(&d.qos),
                        "requests": d.requests,
                        "errors": d.errors,
                        "throttled": d.throttled,
                    })
                })
                .collect();
            if matches!(cfg.guest, tern_vmm::Guest::Probe { .. }) {
                if let Ok(s) = vm.probe_status() {
                    v["probe"] = json!({
                        "started": s.magic == tern_probe_abi::STATUS_MAGIC,
                        "phase": s.phase,
                        "step": s.step,
                        "generation": s.generation,
                        "cursor": s.cursor,
                        "pages": s.pages,
                        "touch_rounds": s.touch_rounds,
                        "command_ack": s.command_ack,
                        "checked_in": s.checked_in,
                        "blk_capacity": s.blk_capacity,
                        "blk_capacity_changes": s.blk_capacity_changes,
                        "blk_in_use_end": s.blk_in_use_end,
                    });
                }
            }
            v
        }
        Request::Pause => done(vm.pause()),
        Request::Resume => done(vm.resume()),
        Request::Shutdown => {
            vm.request_stop();
            json!({"ok": true, "state": "stopping"})
        }
        Request::Reports => json!({"ok": true, "reports": vm.reports().all()}),
        Request::ProbeStop => done(vm.probe_stop_step()),
        Request::ProbeTouch { round } => done(vm.probe_touch(round)),
        Request::ConsoleInput { bytes } => console_input(vm, &bytes),
        Request::Migrate(p) => crate::migrate_cli::start(vm, p),
        Request::MigrateStatus => crate::migrate_cli::status(),
        Request::MigrateCancel => crate::migrate_cli::cancel(),
        Request::DiskQos {
            disk,
            max_iops,
            min_iops,
            max_bw,
        } => {
            let Some(cur) = vm.disks().status().get(disk).map(|d| d.qos) else {
                let e = tern_vmm::devices::DiskError::NoSuchDisk(disk, vm.disks().len());
                return json!({"ok": false, "error": e.to_string()});
            };
            let limits = tern_vmm::devices::QosLimits {
                max_iops: max_iops.unwrap_or(cur.max_iops),
                min_iops: min_iops.unwrap_or(cur.min_iops),
                max_bw: max_bw.unwrap_or(cur.max_bw),
            };
            match vm.disks().set_qos(disk, limits) {
                Ok(()) => json!({"ok": true, "disk": disk, "qos": qos_json(&limits)}),
                Err(e) => json!({"ok": false, "error": crate::run::chain(&e)}),
            }
        }
        Request::DiskResize { disk, size } => {
            let policy = tern_vmm::devices::resize_policy(vm, disk);
            match vm.disks().resize(disk, size, &policy) {
                Ok(()) => json!({"ok": true, "disk": disk, "capacity": size}),
                Err(e) => json!({"ok": false, "error": crate::run::chain(&e)}),
            }
        }
        Request::Events => {
            let events: Vec<Value> = vm
                .disks()
                .events()
                .iter()
                .map(|e| {
                    json!({
                        "seq": e.seq,
                        "time_ms": e.time_ms,
                        "disk": e.disk,
                        "event": e.event.kind.name(),
                        "min_iops": e.event.min_iops,
                        "measured_iops": e.event.measured_iops,
                    })
                })
                .collect();
            json!({"ok": true, "events": events})
        }
        Request::Save { dir } => crate::snapshot::save(vm, &dir),
        Request::CheckpointCreate { name, memory } => {
            crate::snapshot::checkpoint_create(vm, &name, memory)
        }
        Request::CheckpointList => crate::snapshot::checkpoint_list(),
        Request::CheckpointRevert { id } => {
            let (mut v, stop) = crate::snapshot::checkpoint_revert(vm, id);
            if stop {
                v["stop"] = json!(true);
            }
            v
        }
        Request::CheckpointDelete { id } => crate::snapshot::checkpoint_delete(vm, id),
        Request::Export { dir } => crate::snapshot::export(vm, &dir),
    }
}

fn qos_json(q: &tern_vmm::devices::QosLimits) -> Value {
    json!({"max_iops": q.max_iops, "min_iops": q.min_iops, "max_bw": q.max_bw})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_json_lines() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"probe-touch","round":3}"#).unwrap(),
            Request::ProbeTouch { round: 3 }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"disk-qos","disk":1,"max_iops":900}"#)
                .unwrap(),
            Request::DiskQos {
                disk: 1,
                max_iops: Some(900),
                min_iops: None,
                max_bw: None
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"disk-resize","disk":0,"size":1048576}"#)
                .unwrap(),
            Request::DiskResize {
                disk: 0,
                size: 1 << 20
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"events"}"#).unwrap(),
            Request::Events
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"disk-resize","disk":0}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>("not json").is_err());
    }
}
