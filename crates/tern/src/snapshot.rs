//! The worker's saved states, checkpoints, export and import: control
//! requests (`save`, `checkpoint-*`, `export`), `tern run --restore`, and
//! the worker-level CLI `tern worker ...`.
//!
//! The host daemon's `tern vm`/`tern checkpoint` commands call the same
//! control requests through the REST API; `tern worker` talks to one
//! worker's socket directly (tests, scripts, debugging).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use clap::Subcommand;
use serde_json::{json, Value};
use tern_snapshot::checkpoint::Store;
use tern_snapshot::{export, saved};
use tern_vmm::{RunState, Vm};

use crate::exit_code;
use crate::run::chain;

/// Where this worker keeps its checkpoints (`--checkpoint-dir`).
static STORE: OnceLock<Mutex<Store>> = OnceLock::new();

/// Opens (or creates) the checkpoint store; call once before serving.
pub fn open_store(dir: &Path) -> Result<(), tern_snapshot::checkpoint::CheckpointError> {
    let store = Store::open(dir)?;
    let _ = STORE.set(Mutex::new(store));
    Ok(())
}

fn err(e: &dyn std::error::Error) -> Value {
    json!({"ok": false, "error": chain(e)})
}

/// Pauses the VM if it runs; returns whether it did.
fn pause_for(vm: &Vm) -> Result<bool, tern_vmm::VmError> {
    match vm.state() {
        RunState::Running => vm.pause().map(|()| true),
        _ => Ok(false),
    }
}

fn resume_if(vm: &Vm, was_running: bool) {
    if was_running {
        if let Err(e) = vm.resume() {
            eprintln!(
                "tern: error: cannot resume after the operation: {}",
                chain(&e)
            );
        }
    }
}

/// `save {dir}`: pause, write state and memory into `dir`, then (after
/// the reply is sent) stop the worker. On failure the VM runs on.
pub fn save(vm: &Vm, dir: &Path) -> Value {
    let t0 = Instant::now();
    let was_running = match pause_for(vm) {
        Ok(r) => r,
        Err(e) => return err(&e),
    };
    let paused_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Err(e) = vm.disks().flush_all() {
        resume_if(vm, was_running);
        return err(&e);
    }
    match saved::save_into(vm, dir, true) {
        Ok(info) => {
            eprintln!(
                "tern: saved to {} ({} MiB of RAM, {} MiB written) in {:.0} ms",
                info.dir.display(),
                info.memory >> 20,
                info.memory_written >> 20,
                info.seconds * 1e3
            );
            json!({"ok": true, "state": "saved", "dir": info.dir,
                   "memory": info.memory, "memory_written": info.memory_written,
                   "pause_ms": paused_ms, "save_ms": info.seconds * 1e3})
        }
        Err(e) => {
            resume_if(vm, was_running);
            err(&e)
        }
    }
}

fn with_store(f: impl FnOnce(&mut Store) -> Value) -> Value {
    match STORE.get() {
        Some(s) => f(&mut s.lock().unwrap_or_else(|p| p.into_inner())),
        None => json!({"ok": false,
            "error": "this worker has no checkpoint store (start it with --checkpoint-dir DIR)"}),
    }
}

/// `checkpoint-create {name, memory}`.
pub fn checkpoint_create(vm: &Vm, name: &str, memory: bool) -> Value {
    with_store(|store| {
        let was_running = match pause_for(vm) {
            Ok(r) => r,
            Err(e) => return err(&e),
        };
        let r = store.create(vm, name, memory);
        resume_if(vm, was_running);
        match r {
            Ok(c) => json!({"ok": true, "checkpoint": checkpoint_json(&c, store.current())}),
            Err(e) => err(&e),
        }
    })
}

/// `checkpoint-list`.
pub fn checkpoint_list() -> Value {
    with_store(|store| {
        let list: Vec<Value> = store
            .list()
            .iter()
            .map(|c| checkpoint_json(c, store.current()))
            .collect();
        json!({"ok": true, "current": store.current(), "checkpoints": list})
    })
}

/// `checkpoint-revert {id}`: the VM continues from the checkpoint (paused
/// if it was paused). A checkpoint without memory cannot be resumed: the
/// disks are switched and the worker stops (the VM is off).
pub fn checkpoint_revert(vm: &Vm, id: u64) -> (Value, bool) {
    let mut stop = false;
    let v = with_store(|store| {
        let was_running = match pause_for(vm) {
            Ok(r) => r,
            Err(e) => return err(&e),
        };
        match store.revert(vm, id) {
            Ok(outcome) => {
                if outcome.memory {
                    resume_if(vm, was_running);
                    json!({"ok": true, "current": id, "state": if was_running {"running"} else {"paused"}})
                } else {
                    stop = true;
                    json!({"ok": true, "current": id, "state": "stopped",
                           "note": "the checkpoint has no memory: the VM is off, start it again to boot from the reverted disks"})
                }
            }
            Err(e) => {
                resume_if(vm, was_running);
                err(&e)
            }
        }
    });
    (v, stop)
}

/// `checkpoint-delete {id}`: removes it; its differencing disk is merged
/// into its parent when nothing else depends on it (online: the VM pauses
/// for the merge).
pub fn checkpoint_delete(vm: &Vm, id: u64) -> Value {
    with_store(|store| {
        let was_running = match pause_for(vm) {
            Ok(r) => r,
            Err(e) => return err(&e),
        };
        let r = store.delete(vm, id);
        resume_if(vm, was_running);
        match r {
            Ok(merged) => json!({"ok": true, "deleted": id, "merged_disks": merged}),
            Err(e) => err(&e),
        }
    })
}

fn checkpoint_json(c: &tern_snapshot::proto::Checkpoint, current: u64) -> Value {
    json!({"id": c.id, "name": c.name, "parent": c.parent,
           "created_unix_ms": c.created_unix_ms, "memory": c.memory,
           "disks": c.disks, "current": c.id == current})
}

/// `export {dir}`: config, memory and state, disks and checkpoints into
/// `dir`, with a manifest of checksums; the VM runs on afterwards.
pub fn export(vm: &Vm, dir: &Path) -> Value {
    let was_running = match pause_for(vm) {
        Ok(r) => r,
        Err(e) => return err(&e),
    };
    let r = vm
        .disks()
        .flush_all()
        .map_err(|e| chain(&e))
        .and_then(|()| {
            let store = STORE
                .get()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()));
            export::export(vm, dir, store.as_deref()).map_err(|e| chain(&e))
        });
    resume_if(vm, was_running);
    match r {
        Ok(m) => json!({"ok": true, "dir": dir, "files": m.files.len(),
                        "bytes": m.files.iter().map(|f| f.size).sum::<u64>()}),
        Err(e) => json!({"ok": false, "error": e}),
    }
}

/// Loads a saved VM for `tern run --restore`: a saved directory, or an
/// export (whose manifest is checked first, whole).
pub fn load_for_restore(dir: &Path, lazy: bool) -> Result<saved::Loaded, String> {
    let t0 = Instant::now();
    let saved_dir = if dir.join(export::MANIFEST).exists() {
        export::verify(dir).map_err(|e| chain(&e))?;
        dir.join(export::VM_DIR)
    } else {
        dir.to_path_buf()
    };
    let loaded = saved::load(&saved_dir, lazy).map_err(|e| chain(&e))?;
    for u in &loaded.unknown {
        eprintln!(
            "tern: warning: {}: {u} is unknown to this Tern (written by {}, format {}); ignored",
            saved_dir.join(saved::STATE_FILE).display(),
            loaded.writer,
            loaded.format
        );
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "saved state loaded");
    Ok(loaded)
}

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

fn request(sock: &Path, req: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(sock)
        .map_err(|e| format!("cannot connect to worker {}: {e}", sock.display()))?;
    writeln!(s, "{req}").map_err(|e| format!("cannot send the request: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("no reply: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("bad reply {line:?}: {e}"))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn print_reply(r: Result<Value, String>) -> i32 {
    match r {
        Ok(v) if v["ok"] == true => {
            println!("{v}");
            exit_code::OK
        }
        Ok(v) => {
            eprintln!(
                "tern: error: {}",
                v["error"].as_str().unwrap_or("request failed")
            );
            exit_code::SOFTWARE
        }
        Err(e) => {
            eprintln!("tern: error: {e}");
            exit_code::UNAVAILABLE
        }
    }
}

/// Runs a `tern worker` command; returns the exit code.
pub fn run(cmd: WorkerCommand) -> i32 {
    match cmd {
        WorkerCommand::Save { control, dir } => print_reply(request(
            &control,
            &json!({"cmd": "save", "dir": absolute(&dir)}),
        )),
        WorkerCommand::Export { control, dir } => print_reply(request(
            &control,
            &json!({"cmd": "export", "dir": absolute(&dir)}),
        )),
        WorkerCommand::Checkpoint(c) => match c {
            CheckpointCommand::Create {
                control,
                name,
                no_memory,
            } => print_reply(request(
                &control,
                &json!({"cmd": "checkpoint-create", "name": name, "memory": !no_memory}),
            )),
            CheckpointCommand::List { control } => {
                print_reply(request(&control, &json!({"cmd": "checkpoint-list"})))
            }
            CheckpointCommand::Revert { control, id } => print_reply(request(
                &control,
                &json!({"cmd": "checkpoint-revert", "id": id}),
            )),
            CheckpointCommand::Delete { control, id } => print_reply(request(
                &control,
                &json!({"cmd": "checkpoint-delete", "id": id}),
            )),
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
                eprintln!("tern: error: {e}");
                exit_code::DATA_ERR
            }
        },
    }
}
