//! `tern worker ...`: one worker's saved states, checkpoints and export
//! over its control socket, export checks and import, saved-state
//! inspection, and the worker binary's `hello`.
//!
//! The host daemon's `tern vm`/`tern checkpoint` commands reach the same
//! worker requests through the REST API; `tern worker` talks to one
//! worker's socket directly (tests, scripts, debugging).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;
use tern_snapshot::export;
use tern_worker::load_for_restore;
use tern_worker_proto::requests::{
    CheckpointCreate, CheckpointDelete, CheckpointList, CheckpointRevert, Export, PowerButton, Save,
};
use tern_worker_proto::wire::encode_reply;
use tern_worker_proto::{Call, Client, ClientError};

use crate::exit_code;
use crate::run::chain;

/// `tern worker`: saved states and checkpoints of one worker, export
/// checks and import.
#[derive(Subcommand, Debug)]
pub enum WorkerCommand {
    /// Save a running worker's VM into DIR and stop it (restore it with
    /// `tern run --restore DIR`).
    Save {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
        /// A new (or empty) directory.
        dir: PathBuf,
    },
    /// Checkpoints of a worker started with --checkpoint-dir.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Export a worker's VM (config, memory, disks, checkpoints) into DIR.
    Export {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
        /// A new (or empty) directory.
        dir: PathBuf,
    },
    /// Check an export against its manifest and copy it to DEST (restore
    /// it with `tern run --restore DEST`).
    Import {
        /// The export.
        export: PathBuf,
        /// Where to put the imported VM (a new directory). Without it the
        /// export is only checked.
        dest: Option<PathBuf>,
    },
    /// Describe a saved state directory: format, writer, unknown fields.
    Inspect {
        /// The saved directory (or an export).
        dir: PathBuf,
    },
    /// Press a running worker's guest's ACPI power button (an ACPI-aware
    /// Linux guest shuts down; the worker then exits 0).
    PowerButton {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
    },
    /// The running VM's SCSI controller.
    #[command(flatten)]
    Scsi(crate::scsi_cli::ScsiCommand),
    /// Print this binary's worker `hello` (protocol version, product
    /// version, capabilities) as JSON, without starting a VM; with
    /// --control, ask that running worker instead.
    Hello {
        /// A running worker's control socket.
        #[arg(long)]
        control: Option<PathBuf>,
    },
}

/// `tern worker checkpoint` subcommands.
#[derive(Subcommand, Debug)]
pub enum CheckpointCommand {
    /// Take a checkpoint.
    Create {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
        /// Its name.
        name: String,
        /// Disks only, no memory (reverting boots the guest again).
        #[arg(long)]
        no_memory: bool,
    },
    /// List the checkpoint tree.
    List {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
    },
    /// Revert to a checkpoint.
    Revert {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
        /// Checkpoint id.
        id: u64,
    },
    /// Delete a checkpoint (its disk changes are merged, not lost).
    Delete {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
        /// Checkpoint id.
        id: u64,
    },
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Sends `req` to the worker at `control` and prints its reply as the
/// worker sent it (`{"ok":true,...}`).
pub(crate) fn call<R: Call>(control: &Path, req: R) -> i32 {
    print_reply(Client::new(control).call(req))
}

fn print_reply<T: serde::Serialize>(r: Result<T, ClientError>) -> i32 {
    match r {
        Ok(reply) => {
            println!("{}", encode_reply(&Ok(reply)));
            exit_code::OK
        }
        Err(e @ (ClientError::Worker(_) | ClientError::Version(_))) => {
            eprintln!("tern: error: {}", chain(&e));
            exit_code::SOFTWARE
        }
        Err(e) => {
            eprintln!("tern: error: {}", chain(&e));
            exit_code::UNAVAILABLE
        }
    }
}

/// Runs a `tern worker` command; returns the exit code.
pub fn run(cmd: WorkerCommand) -> i32 {
    match cmd {
        WorkerCommand::Save { control, dir } => call(
            &control,
            Save {
                dir: absolute(&dir),
            },
        ),
        WorkerCommand::PowerButton { control } => call(&control, PowerButton {}),
        WorkerCommand::Export { control, dir } => call(
            &control,
            Export {
                dir: absolute(&dir),
            },
        ),
        WorkerCommand::Checkpoint(c) => match c {
            CheckpointCommand::Create {
                control,
                name,
                no_memory,
            } => call(
                &control,
                CheckpointCreate {
                    name,
                    memory: !no_memory,
                },
            ),
            CheckpointCommand::List { control } => call(&control, CheckpointList {}),
            CheckpointCommand::Revert { control, id } => call(&control, CheckpointRevert { id }),
            CheckpointCommand::Delete { control, id } => call(&control, CheckpointDelete { id }),
        },
        WorkerCommand::Scsi(c) => crate::scsi_cli::run(c),
        WorkerCommand::Hello { control: None } => {
            println!(
                "{}",
                serde_json::to_string(&tern_worker::hello()).expect("hello serializes")
            );
            exit_code::OK
        }
        WorkerCommand::Hello {
            control: Some(control),
        } => match Client::new(&control).hello() {
            Ok(h) => {
                println!("{}", serde_json::to_string(&h).expect("hello serializes"));
                exit_code::OK
            }
            Err(e) => print_reply::<()>(Err(e)),
        },
        WorkerCommand::Import { export, dest } => {
            let r = match &dest {
                Some(d) => export::import(&export, d).map(|m| m.files.len()),
                None => export::verify(&export).map(|m| m.files.len()),
            };
            match r {
                Ok(n) => {
                    match dest {
                        Some(d) => println!("imported {n} files into {}", d.display()),
                        None => println!("{}: {n} files, all checksums match", export.display()),
                    }
                    exit_code::OK
                }
                Err(e) => {
                    eprintln!("tern: error: {}", chain(&e));
                    exit_code::DATA_ERR
                }
            }
        }
        WorkerCommand::Inspect { dir } => match load_for_restore(&dir, true) {
            Ok(l) => {
                let unknown: Vec<String> = l.unknown.iter().map(|u| u.dotted()).collect();
                println!(
                    "{}",
                    json!({"writer": l.writer, "format": l.format,
                           "vcpus": l.config.vcpus, "memory": l.config.memory,
                           "disks": l.config.disks.iter().map(|d| d.path.clone()).collect::<Vec<_>>(),
                           "unknown_fields": unknown})
                );
                exit_code::OK
            }
            Err(e) => {
                eprintln!("tern: error: {}", chain(&e));
                exit_code::DATA_ERR
            }
        },
    }
}
