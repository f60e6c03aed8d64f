//! `tern vm`, `tern volume`, `tern checkpoint`, `tern host`: the CLI over
//! the host daemon's REST API.
//!
//! Every command takes `--host` (`unix:/path` or `http://HOST:PORT`, default
//! the local daemon's socket), `--token`/`--token-file` for TCP and
//! `--json` (print the API's JSON instead of text). Exit codes are in
//! [`code`].

mod checkpoint;
mod console;
mod host;
mod migrate;
mod move_storage;
mod switch;
mod vm;
mod volume;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use tern_api::{Client, ClientError, Endpoint};

pub(crate) use self::{client as api_client, mib as size_text};
pub use checkpoint::CheckpointCmd;
pub use host::HostCmd;
pub use switch::SwitchCmd;
pub use vm::VmCmd;
pub use volume::VolumeCmd;

/// Exit codes of the API commands (stable: scripts may rely on them).
pub mod code {
    /// Success.
    pub const OK: i32 = 0;
    /// The operation failed on the host (the VM failed to start, the
    /// daemon hit an error: HTTP 5xx).
    pub const FAILED: i32 = 1;
    /// No such VM, disk, checkpoint or migration (HTTP 404).
    pub const NOT_FOUND: i32 = 2;
    /// Not possible in the current state, or the name is taken (HTTP 409).
    pub const CONFLICT: i32 = 3;
    /// The daemon does not implement this yet (HTTP 501).
    pub const NOT_IMPLEMENTED: i32 = 4;
    /// Bad command line (as `tern run`).
    pub const USAGE: i32 = 64;
    /// The daemon refused the request as invalid (HTTP 400).
    pub const INVALID: i32 = 65;
    /// The daemon cannot be reached.
    pub const UNREACHABLE: i32 = 69;
    /// Missing or wrong token (HTTP 401).
    pub const UNAUTHORIZED: i32 = 77;
}

/// How to reach the daemon, and how to print.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The daemon: unix:/path/ternd.sock or http://HOST:PORT (default: the
    /// local daemon's socket).
    #[arg(long, global = true, env = "TERN_HOST")]
    host: Option<String>,
    /// Bearer token for a TCP daemon.
    #[arg(long, global = true, env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, global = true, env = "TERN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON (the API's objects) instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// The commands that talk to the daemon.
#[derive(Subcommand, Debug)]
pub enum ApiCommand {
    /// Manage VMs on a host daemon (ternd).
    Vm(VmCmd),
    /// Manage the daemon's virtual disks (create, resize, QoS, ...).
    Volume(VolumeCmd),
    /// Manage checkpoints of a VM.
    Checkpoint(CheckpointCmd),
    /// Show the host daemon's status.
    Host(HostCmd),
    /// The failover cluster this daemon is a node of.
    #[command(subcommand)]
    Cluster(crate::cluster_cli::ClusterCmd),
    /// Manage virtual switches (external, internal, private).
    Switch(SwitchCmd),
}

/// A failed command: exit code and one line for stderr.
pub(crate) struct Fail(i32, String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        let code = match &e {
            ClientError::BadEndpoint(_) => code::USAGE,
            ClientError::Connect { .. } | ClientError::Timeout(_) => code::UNREACHABLE,
            ClientError::Api { status, .. } | ClientError::Protocol { status, .. } => {
                match status {
                    400 | 413 | 422 => code::INVALID,
                    401 | 403 => code::UNAUTHORIZED,
                    404 => code::NOT_FOUND,
                    409 => code::CONFLICT,
                    501 => code::NOT_IMPLEMENTED,
                    _ => code::FAILED,
                }
            }
            _ => code::FAILED,
        };
        Fail(code, crate::run::chain(&e))
    }
}

pub(crate) type CmdResult = Result<(), Fail>;

pub(crate) fn client(conn: &Conn) -> Result<Client, Fail> {
    let token = match (&conn.token, &conn.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| Fail(code::USAGE, format!("cannot read {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let endpoint = match &conn.host {
        Some(h) => Endpoint::parse(h, token)?,
        None => Endpoint::Unix(tern_api::client::default_socket()),
    };
    Ok(Client::new(endpoint))
}

pub(crate) fn print_json<T: Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("API types serialize")
    );
}

pub(crate) fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{}G", bytes >> 30)
    } else {
        format!("{}M", bytes >> 20)
    }
}

/// A spinner on stderr while a long request runs (only on a terminal, and
/// not with --json).
fn spinner(json: bool, msg: String) -> Option<indicatif::ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(100));
    Some(pb)
}

/// Runs an API command; returns the exit code.
pub fn run(cmd: ApiCommand) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: error: cannot start the runtime: {e}");
            return code::FAILED;
        }
    };
    match rt.block_on(dispatch(cmd)) {
        Ok(()) => code::OK,
        Err(Fail(code, msg)) => {
            eprintln!("tern: error: {msg}");
            code
        }
    }
}

async fn dispatch(cmd: ApiCommand) -> CmdResult {
    match cmd {
        ApiCommand::Vm(v) => vm::run(v).await,
        ApiCommand::Volume(v) => volume::run(v).await,
        ApiCommand::Checkpoint(c) => checkpoint::run(c).await,
        ApiCommand::Host(h) => host::run(h).await,
        ApiCommand::Cluster(c) => crate::cluster_cli::run(c).await,
        ApiCommand::Switch(s) => switch::run(s).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_codes() {
        let api = |status| {
            Fail::from(ClientError::Api {
                status,
                code: "x".into(),
                message: "m".into(),
            })
            .0
        };
        assert_eq!(api(400), code::INVALID);
        assert_eq!(api(401), code::UNAUTHORIZED);
        assert_eq!(api(404), code::NOT_FOUND);
        assert_eq!(api(409), code::CONFLICT);
        assert_eq!(api(501), code::NOT_IMPLEMENTED);
        assert_eq!(api(500), code::FAILED);
    }
}
