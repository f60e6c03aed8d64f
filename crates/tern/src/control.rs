//! The worker's control socket: one JSON request per line, one JSON reply
//! per line.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"pause"}`, `{"cmd":"resume"}`,
//! `{"cmd":"shutdown"}`, `{"cmd":"reports"}`, `{"cmd":"probe-stop"}` (ends
//! the probe's open-ended step), `{"cmd":"probe-touch","round":N}`.
//! Replies: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tern_vmm::{RunState, Vm};

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

fn handle_conn(stream: UnixStream, vm: &Vm) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req, vm),
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        if writeln!(out, "{reply}").is_err() {
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
pub fn handle(req: Request, vm: &Vm) -> Value {
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
    }
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
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>("not json").is_err());
    }
}
