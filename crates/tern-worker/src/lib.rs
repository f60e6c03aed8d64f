//! The VM worker as a library: one process runs one VM.
//!
//! [`run`] takes a [`LaunchSpec`] (what `tern run` builds from its command
//! line, or reads with `--launch`), builds or restores the VM (or waits for
//! it to arrive by live migration), serves its control socket and returns
//! the process exit code ([`exit_code`]) when the VM ends.
//!
//! A [`Worker`] owns the VM, its checkpoint store and its migration job:
//! the control server hands it each typed request ([`Worker::handle`]).
//! The protocol itself is `tern-worker-proto`; this crate knows nothing of
//! the host daemon or its REST API.
//!
//! Files: `launch` (spec to VMM config, exit codes of failures),
//! `server` (the socket), `handlers` (what each request does), `saved`
//! (save, checkpoints, export, restore loading), `migration` (the
//! outgoing job), `incoming` (receiving a migration), `storage_move`
//! (moving a running disk's image).

mod boot_order;
pub mod exit_code;
mod handlers;
mod incoming;
pub mod launch;
mod migration;
mod ownership;
mod saved;
mod scsi;
mod secure_boot;
mod server;
mod storage_move;

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tern_devices::serial::SerialMode;
use tern_snapshot::checkpoint::Store;
use tern_vmm::{Vm, VmHooks};
use tern_worker_proto::launch::RestoreMode;
use tern_worker_proto::LaunchSpec;

pub use handlers::{hello, Handled};
pub use saved::{load_for_restore, RestoreError};
pub use server::{serve, ServeError, Server};

/// One VM and what the worker keeps beside it.
pub struct Worker {
    vm: Arc<Vm>,
    /// The checkpoint store (`checkpoint_dir` in the spec).
    store: Option<Mutex<Store>>,
    /// The current or last outgoing migration.
    migrations: migration::Migrations,
    /// The cluster ownership deadline (armed by `ownership-renew`).
    ownership: Arc<ownership::Ownership>,
    /// The current or last storage move.
    moves: storage_move::StorageMoves,
}

impl Worker {
    /// A worker for `vm`, with checkpoints in `store` if given.
    pub fn new(vm: Arc<Vm>, store: Option<Store>) -> Arc<Worker> {
        Arc::new(Worker {
            vm,
            store: store.map(Mutex::new),
            migrations: migration::Migrations::default(),
            ownership: Default::default(),
            moves: Default::default(),
        })
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }
}

/// One line: an error and its sources (see [`tern_error::chain`]).
pub use tern_error::chain as error_chain;

/// Runs the VM `spec` describes until it ends; returns the process exit
/// code. Diagnostics go to standard error, prefixed `tern:`.
pub fn run(spec: LaunchSpec) -> i32 {
    if let Err(e) = spec.validate() {
        eprintln!("tern: error: {}", error_chain(&e));
        return exit_code::USAGE;
    }
    let t0 = Instant::now();
    // Kept until the process ends: the loader reads the kernel from them.
    let (spec, _boot_files) = match boot_order::resolve(spec) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let (cfg, restore) = match &spec.restore {
        Some(r) => match load_for_restore(&r.dir, r.mode == RestoreMode::Lazy) {
            Ok(l) => {
                let mut cfg = l.config;
                launch::apply_host_settings(&spec, &mut cfg);
                (cfg, Some(l.state))
            }
            Err(e) => {
                eprintln!("tern: error: cannot restore: {}", error_chain(&e));
                return exit_code::DATA_ERR;
            }
        },
        None => match launch::vm_config(&spec) {
            Some(c) => (c, None),
            None => {
                eprintln!("tern: error: the launch spec has neither a guest nor a saved VM");
                return exit_code::USAGE;
            }
        },
    };
    if let Err(code) = secure_boot::check(&spec) {
        return code;
    }
    let store = match &spec.checkpoint_dir {
        Some(dir) => match Store::open(dir) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("tern: error: {}", error_chain(&e));
                return exit_code::USAGE;
            }
        },
        None => None,
    };
    let hooks = || VmHooks {
        on_report: Some(Box::new(|line| eprintln!("[probe] {line}"))),
    };
    let mut received = None;
    let built = match (&spec.incoming, &restore) {
        (Some(ep), _) => match incoming::incoming(
            &incoming::endpoint(ep),
            spec.listening_file.as_deref(),
            spec.dest_dir.as_deref(),
            cfg,
            hooks,
        ) {
            Ok((vm, r)) => {
                received = Some(r);
                Ok(vm)
            }
            Err(code) => return code,
        },
        (None, Some(state)) => Vm::restore(cfg, hooks(), state),
        (None, None) => Vm::create(cfg, hooks()),
    };
    let vm = match built {
        Ok(vm) => Arc::new(vm),
        Err(e) => {
            eprintln!("tern: error: {}", error_chain(&e));
            return launch::error_code(&e);
        }
    };
    let worker = Worker::new(vm.clone(), store);
    let moves = worker.clone();
    let control_path = spec
        .control
        .clone()
        .unwrap_or_else(launch::default_control_path);
    let server = match serve(&control_path, worker) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tern: error: {}", error_chain(&e));
            return exit_code::USAGE;
        }
    };
    if vm.config().serial == SerialMode::Stdout && std::io::stdin().is_terminal() {
        tern_devices::serial::spawn_input(vm.serial().clone(), std::io::stdin());
    }
    let paused = spec.paused || received.as_ref().is_some_and(|r| r.paused);
    if let Err(e) = if paused {
        vm.start_paused()
    } else {
        vm.start()
    } {
        eprintln!("tern: error: {}", error_chain(&e));
        return launch::error_code(&e);
    }
    if let Some(r) = received {
        incoming::confirm(&vm, r);
    }
    if let Some(r) = &spec.restore {
        eprintln!(
            "tern: restored from {} ({}), running after {:.1} ms",
            r.dir.display(),
            match r.mode {
                RestoreMode::Lazy => "lazy",
                RestoreMode::Eager => "eager",
            },
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    let exit = vm.wait();
    // A disk move still copying is cancelled: its partial file goes.
    moves.moves.stop(std::time::Duration::from_secs(10));
    // The process exits without dropping the VM: close disks explicitly
    // (a VHDX's log must be emptied for other tools to open it).
    for (i, e) in vm.disks().close() {
        eprintln!("tern: error: closing disk {i}: {}", error_chain(&e));
    }
    if let Ok(c) = vm.scsi() {
        for (lun, e) in c.close() {
            eprintln!("tern: error: closing SCSI LUN {lun}: {}", error_chain(&e));
        }
    }
    drop(server);
    launch::exit_status(&exit)
}
