//! Waiting for an incoming live migration and building the VM it brings.

use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use tern_migrate::{Endpoint, IncomingMemory, Listener, ReceiveOptions, Received};
use tern_vmm::{Vm, VmConfig, VmHooks};

use crate::{error_chain, exit_code};

/// The endpoint as the migration crate takes it.
pub fn endpoint(ep: &tern_worker_proto::Endpoint) -> Endpoint {
    match ep {
        tern_worker_proto::Endpoint::Tcp { host, port } => Endpoint::Tcp(format!("{host}:{port}")),
        tern_worker_proto::Endpoint::Unix(path) => Endpoint::Unix(path.clone()),
    }
}

/// Where `listener` listens, as the worker protocol names it.
fn listening_endpoint(listener: &Listener) -> std::io::Result<tern_worker_proto::Endpoint> {
    Ok(match listener {
        Listener::Tcp(l) => {
            let addr = l.local_addr()?;
            let host = match addr.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            tern_worker_proto::Endpoint::Tcp {
                host,
                port: addr.port(),
            }
        }
        Listener::Unix(_, path) => tern_worker_proto::Endpoint::Unix(path.clone()),
    })
}

/// Waits on `ep` until a migration of a VM like `cfg` arrives, builds the
/// VM around it (disks opened) and waits for the source's commit. Returns
/// the VM, not started: the caller starts it and [`confirm`]s. Failed or
/// uncommitted attempts are logged, their VM discarded (it never ran), and
/// the worker waits for the next one. Once it listens it writes where to
/// `listening_file` (a [`tern_worker_proto::Listening`] document). Disks
/// of a shared-nothing migration are created in `dest_dir` (named once
/// the source commits). Returns the exit code on a fatal error.
pub fn incoming(
    ep: &Endpoint,
    listening_file: Option<&Path>,
    dest_dir: Option<&Path>,
    cfg: VmConfig,
    hooks: impl Fn() -> VmHooks,
) -> Result<(Vm, Received), i32> {
    let listener = match Listener::bind(ep) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tern: error: cannot listen on {ep}: {e}");
            return Err(exit_code::USAGE);
        }
    };
    let local = match listening_endpoint(&listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tern: error: cannot tell where {ep} listens: {e}");
            return Err(exit_code::SOFTWARE);
        }
    };
    let expect = tern_migrate::config_check(&cfg);
    // Memory for a stream is made before each wait (an attempt that
    // fails takes its memory with it), backed as the VM asks; so with
    // prealloc the source never waits for the allocation.
    let memory = || -> Result<Option<IncomingMemory>, i32> {
        if !matches!(listener, Listener::Tcp(_)) {
            return Ok(None);
        }
        let t = Instant::now();
        let m = IncomingMemory::new(cfg.memory, cfg.backing, cfg.prealloc).map_err(|e| {
            eprintln!("tern: error: {}", error_chain(&e));
            exit_code::UNAVAILABLE
        })?;
        if cfg.prealloc {
            eprintln!(
                "tern: {} MiB of guest memory preallocated in {:.0} ms",
                cfg.memory >> 20,
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        Ok(Some(m))
    };
    let mut ready = memory()?;
    if let Some(path) = listening_file {
        if let Err(e) = tern_worker_proto::Listening::new(local.clone()).write(path) {
            eprintln!("tern: error: {}", error_chain(&e));
            return Err(exit_code::CANT_CREATE);
        }
    }
    eprintln!("tern: waiting for a migration on {local}");
    let log = |m: &str| eprintln!("tern: {m}");
    let opts = ReceiveOptions {
        dest_dir: dest_dir.map(Path::to_path_buf),
    };
    loop {
        let attempt = tern_migrate::receive_with(&listener, &expect, ready.take(), &opts, &log);
        let mut received = match attempt {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "tern: incoming migration failed: {}; waiting for another",
                    error_chain(&e)
                );
                ready = memory()?;
                continue;
            }
        };
        let mut cfg = cfg.clone();
        // Prealloc'd memory came in `received`; mapping it again here
        // would only add to the downtime.
        cfg.prealloc = false;
        cfg.memory_source = received.memory.clone();
        // Mirrored disks: the VM opens the images received here (still
        // unnamed); the writes to them are done.
        let written = received
            .disks
            .as_ref()
            .map_or(Ok(()), |d| d.finish_writes());
        if let Err(e) = written {
            let msg = error_chain(&e);
            received.fail(&msg);
            eprintln!("tern: incoming migration failed: {msg}; waiting for another");
            ready = memory()?;
            continue;
        }
        if let Some(disks) = &received.disks {
            for (index, path, format) in disks.open_paths() {
                if let Some(d) = cfg.disks.get_mut(index) {
                    d.path = path;
                    d.format = Some(format);
                }
            }
        }
        let t = Instant::now();
        let vm = match Vm::restore(cfg, hooks(), &received.state) {
            Ok(vm) => {
                eprintln!(
                    "tern: the migrated VM is built here ({:.1} ms, {} disks opened); waiting for the source's commit",
                    t.elapsed().as_secs_f64() * 1e3,
                    vm.disks().len()
                );
                vm
            }
            Err(e) => {
                let msg = error_chain(&e);
                received.fail(&msg);
                eprintln!("tern: error: cannot restore the migrated VM: {msg}");
                return Err(exit_code::SOFTWARE);
            }
        };
        match received.await_commit() {
            Ok(()) => return Ok((vm, received)),
            Err(e) => {
                eprintln!(
                    "tern: the source did not commit the migration ({}); discarding the VM built here and waiting for another",
                    error_chain(&e)
                );
                for (i, e) in vm.disks().close() {
                    eprintln!("tern: error: closing disk {i}: {}", error_chain(&e));
                }
                drop(vm);
                drop(received);
                ready = memory()?;
            }
        }
    }
}

/// After the commit and the start (outside the downtime): names the
/// mirrored images in the destination directory and moves the VM's
/// disks onto those names under the running devices (closed and
/// reopened; requests wait meanwhile). An image that cannot be named
/// is used unnamed, and is lost when the VM stops: said loudly.
fn name_mirrored_disks(vm: &Vm, disks: &tern_migrate::disk_receive::DiskTargets) {
    for (index, named) in disks.commit() {
        match named {
            Ok(path) => match vm.disks().switch(index, &path) {
                Ok(()) => eprintln!("tern: disk {index} is now {}", path.display()),
                Err(e) => eprintln!(
                    "tern: error: disk {index}: cannot reopen {} ({}); the VM runs on the unnamed copy",
                    path.display(),
                    error_chain(&e)
                ),
            },
            Err(e) => eprintln!(
                "tern: error: disk {index}: {}; the VM runs on an unnamed copy that is lost when it stops",
                error_chain(&e)
            ),
        }
    }
}

/// After the migrated VM started: tells the source (which committed
/// already, so the VM runs here whether or not the word arrives), then
/// names the images of mirrored disks.
pub fn confirm(vm: &Vm, mut r: Received) {
    let (zero_copy, rounds, pages) = (r.zero_copy, r.rounds, r.pages);
    let disks = r.disks.take();
    if let Err(e) = r.confirm() {
        eprintln!("tern: warning: cannot tell the source the VM runs here ({e}); it runs on");
    }
    eprintln!(
        "tern: migration complete ({}, {rounds} rounds, {pages} pages received); VM running",
        if zero_copy {
            "memfd hand-over"
        } else {
            "streamed"
        }
    );
    if let Some(d) = disks {
        name_mirrored_disks(vm, &d);
    }
}
