//! `tern run`: the VM worker. Runs one VM in the foreground, serves its
//! control socket, and exits with the guest's status.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use tern_devices::serial::SerialMode;
use tern_vmm::boot::linux::LinuxError;
use tern_vmm::devices::{BlockError, DiskConfig, DiskError, QosLimits};
use tern_vmm::{Backing, Guest, Vm, VmConfig, VmError, VmExit, VmHooks};

use crate::control;
use crate::exit_code;
use crate::size::parse_size;

/// Arguments of `tern run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory, e.g. 512M or 2G.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    memory: u64,
    /// Built-in guest: `probe:WORKLOAD` (e.g. probe:hello, probe:vcpus,
    /// probe:dirty,mib=64,rate=100+verify).
    #[arg(long, conflicts_with = "kernel", required_unless_present_any = ["kernel", "restore"])]
    guest: Option<String>,
    /// Linux kernel (bzImage or ELF vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line for --kernel.
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
    /// Serial console: stdout, file:PATH, socket:PATH or null.
    #[arg(long, default_value = "stdout")]
    serial: SerialMode,
    /// Control socket path (default: $XDG_RUNTIME_DIR or /tmp, tern-worker-PID.sock).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Back guest memory with a memfd (shareable with another process).
    #[arg(long)]
    memfd: bool,
    /// Probe guest image (default: `probe-guest` beside this executable).
    #[arg(long, env = "TERN_PROBE_IMAGE")]
    probe_image: Option<PathBuf>,
    /// KVM device node.
    #[arg(long, default_value = "/dev/kvm", hide = true)]
    kvm: PathBuf,
    /// A disk (repeatable; the guest sees them in this order):
    /// path=FILE[,readonly][,max-iops=N][,min-iops=N][,max-bw=BYTES][,poll].
    /// FILE ending in .vhdx/.avhdx is VHDX, anything else raw. IOPS are
    /// normalized: each 8 KiB of a request counts as one. `poll` serves the
    /// disk from its own polling thread (needs a spare host core).
    #[arg(long = "disk", value_name = "SPEC", value_parser = parse_disk)]
    disks: Vec<DiskConfig>,
    /// Continue a saved VM (a directory written by the `save` request, or
    /// an export) instead of booting; its configuration comes from there.
    /// Nothing in the directory is changed.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["guest", "kernel", "disks", "incoming", "memory_file"]
    )]
    restore: Option<PathBuf>,
    /// With --restore: map the memory image copy-on-write, pages are read
    /// on first touch (the default).
    #[arg(long, requires = "restore", conflicts_with = "eager")]
    lazy: bool,
    /// With --restore: copy all of memory in before the VM runs.
    #[arg(long, requires = "restore")]
    eager: bool,
    /// Where this VM's checkpoints live (created when missing).
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Wait for a live migration on tcp:HOST:PORT (port 0: any, printed)
    /// or unix:PATH, then run the VM it brings. The other options must
    /// describe the same VM (checked before any memory moves).
    #[arg(long, value_name = "ENDPOINT")]
    incoming: Option<tern_migrate::Endpoint>,
    /// Initial memory contents from an image file: PATH[,lazy] (lazy: map
    /// it copy-on-write instead of copying it in). Boot data is written
    /// over it as usual.
    #[arg(long, value_name = "PATH[,lazy]", value_parser = parse_memory_file)]
    memory_file: Option<tern_vmm::MemorySource>,
    /// Start with the vCPUs paused (resume through the control socket).
    #[arg(long)]
    paused: bool,
    /// Allocate and map all guest memory before the VM runs (QEMU's
    /// prealloc=on): no page faults later. With --incoming: before
    /// waiting, so the migration writes into memory that is ready.
    #[arg(long)]
    prealloc: bool,
}

/// Parses `--memory-file PATH[,lazy]`.
fn parse_memory_file(text: &str) -> Result<tern_vmm::MemorySource, String> {
    let (path, lazy) = match text.strip_suffix(",lazy") {
        Some(p) => (p, true),
        None => (text, false),
    };
    if path.is_empty() {
        return Err("--memory-file needs a path".into());
    }
    Ok(tern_vmm::MemorySource::File {
        path: path.into(),
        lazy,
    })
}

/// Where `tern run` looks for the probe guest when not told.
fn default_probe_image() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("probe-guest")))
        .unwrap_or_else(|| PathBuf::from("probe-guest"))
}

fn default_control_path() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("tern-worker-{}.sock", std::process::id()))
}

fn config(args: &RunArgs) -> Result<VmConfig, (i32, String)> {
    let guest = match (&args.guest, &args.kernel) {
        (Some(g), None) => {
            let workload = g.strip_prefix("probe:").ok_or_else(|| {
                (
                    exit_code::USAGE,
                    format!("unknown guest '{g}': expected probe:WORKLOAD"),
                )
            })?;
            let image = args.probe_image.clone().unwrap_or_else(default_probe_image);
            Guest::Probe {
                image,
                workload: workload.to_string(),
            }
        }
        (None, Some(k)) => Guest::Linux {
            kernel: k.clone(),
            initrd: args.initrd.clone(),
            cmdline: args
                .cmdline
                .clone()
                .unwrap_or_else(|| tern_vmm::boot::linux::DEFAULT_CMDLINE.to_string()),
        },
        _ => unreachable!("clap enforces exactly one of --guest and --kernel"),
    };
    let mut cfg = VmConfig::new(args.vcpus, args.memory, guest);
    cfg.serial = args.serial.clone();
    cfg.kvm_path = args.kvm.clone();
    cfg.disks = args.disks.clone();
    if let Some(src) = &args.memory_file {
        cfg.memory_source = src.clone();
    }
    if args.memfd {
        cfg.backing = Backing::Memfd;
    }
    cfg.prealloc = args.prealloc;
    Ok(cfg)
}

/// Maps a VM error to an exit code.
fn error_code(e: &VmError) -> i32 {
    match e {
        VmError::KvmOpen { .. } | VmError::NotKvm(_) => exit_code::UNAVAILABLE,
        VmError::Probe(tern_vmm::boot::probe::ProbeError::Open { .. })
        | VmError::Linux(
            LinuxError::KernelNotFound(_)
            | LinuxError::KernelRead { .. }
            | LinuxError::InitrdNotFound(_)
            | LinuxError::InitrdRead { .. },
        ) => exit_code::NO_INPUT,
        VmError::Kvm { .. } | VmError::Thread(_) | VmError::X86(_) | VmError::Control(_) => {
            exit_code::SOFTWARE
        }
        VmError::Disk(DiskError::Open { source, .. }) => match source {
            BlockError::Locked(_) => exit_code::UNAVAILABLE,
            _ => exit_code::NO_INPUT,
        },
        VmError::Disk(DiskError::Irq { .. }) => exit_code::SOFTWARE,
        _ => exit_code::USAGE,
    }
}

/// One line: the error and its sources, outermost first.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Runs the worker; returns the process exit code.
pub fn run(args: RunArgs) -> i32 {
    let t0 = std::time::Instant::now();
    let (cfg, restore) = match &args.restore {
        Some(dir) => match crate::snapshot::load_for_restore(dir, !args.eager) {
            Ok(l) => {
                let mut cfg = l.config;
                cfg.serial = args.serial.clone();
                cfg.kvm_path = args.kvm.clone();
                cfg.prealloc = args.prealloc;
                (cfg, Some(l.state))
            }
            Err(msg) => {
                eprintln!("tern: error: cannot restore: {msg}");
                return exit_code::DATA_ERR;
            }
        },
        None => match config(&args) {
            Ok(c) => (c, None),
            Err((code, msg)) => {
                eprintln!("tern: error: {msg}");
                return code;
            }
        },
    };
    if let Some(dir) = &args.checkpoint_dir {
        if let Err(e) = crate::snapshot::open_store(dir) {
            eprintln!("tern: error: {}", chain(&e));
            return exit_code::USAGE;
        }
    }
    let hooks = || VmHooks {
        on_report: Some(Box::new(|line| eprintln!("[probe] {line}"))),
    };
    let mut incoming = None;
    let built = match (&args.incoming, &restore) {
        (Some(ep), _) => match crate::migrate_cli::incoming(ep, cfg, hooks) {
            Ok((vm, r)) => {
                incoming = Some(r);
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
            eprintln!("tern: error: {}", chain(&e));
            return error_code(&e);
        }
    };
    let control_path = args.control.clone().unwrap_or_else(default_control_path);
    let server = match control::serve(&control_path, vm.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tern: error: {}", chain(&e));
            return exit_code::USAGE;
        }
    };
    if args.serial == SerialMode::Stdout && std::io::stdin().is_terminal() {
        tern_devices::serial::spawn_input(vm.serial().clone(), std::io::stdin());
    }
    let paused = args.paused || incoming.as_ref().is_some_and(|r| r.paused);
    if let Err(e) = if paused {
        vm.start_paused()
    } else {
        vm.start()
    } {
        eprintln!("tern: error: {}", chain(&e));
        return error_code(&e);
    }
    if let Some(r) = incoming {
        crate::migrate_cli::confirm(r);
    }
    if let Some(dir) = &args.restore {
        eprintln!(
            "tern: restored from {} ({}), running after {:.1} ms",
            dir.display(),
            if args.eager { "eager" } else { "lazy" },
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    let exit = vm.wait();
    // The process exits without dropping the VM: close disks explicitly
    // (a VHDX's log must be emptied for other tools to open it).
    for (i, e) in vm.disks().close() {
        eprintln!("tern: error: closing disk {i}: {}", chain(&e));
    }
    drop(server);
    exit_status(&exit, &control_path)
}

fn exit_status(exit: &VmExit, _control: &Path) -> i32 {
    match exit {
        VmExit::Guest(status) => (*status).min(255) as i32,
        VmExit::Stopped | VmExit::Reset => exit_code::OK,
        VmExit::Crashed { vcpu, reason, rip } => {
            eprintln!("tern: error: guest crashed on vCPU {vcpu} at RIP {rip:#x}: {reason}");
            exit_code::SOFTWARE
        }
    }
}

/// Parses `--disk path=FILE[,readonly][,max-iops=N][,min-iops=N][,max-bw=BYTES]`.
pub fn parse_disk(text: &str) -> Result<DiskConfig, String> {
    let mut path = None;
    let mut read_only = false;
    let mut poll = false;
    let mut qos = QosLimits::default();
    for part in text.split(',') {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (part.trim(), None),
        };
        let number = |v: Option<&str>| -> Result<u64, String> {
            let v = v.ok_or_else(|| format!("disk option '{key}' needs a value ({key}=N)"))?;
            v.trim()
                .parse()
                .map_err(|_| format!("disk option '{key}={v}': expected a whole number"))
        };
        match key {
            "path" => match value {
                Some(v) if !v.is_empty() => path = Some(PathBuf::from(v)),
                _ => return Err("disk option 'path' needs a file (path=FILE)".into()),
            },
            "readonly" | "ro" if value.is_none() => read_only = true,
            "poll" if value.is_none() => poll = true,
            "max-iops" => qos.max_iops = number(value)?,
            "min-iops" => qos.min_iops = number(value)?,
            "max-bw" => {
                let v = value.ok_or("disk option 'max-bw' needs a value (max-bw=BYTES)")?;
                qos.max_bw = parse_size(v)?;
            }
            "" => return Err(format!("empty option in disk spec '{text}'")),
            other => {
                return Err(format!(
                    "unknown disk option '{other}' (expected path=FILE, readonly, max-iops=N, min-iops=N, max-bw=BYTES, poll)"
                ))
            }
        }
    }
    let path = path.ok_or_else(|| format!("disk spec '{text}' has no path=FILE"))?;
    qos.validate()
        .map_err(|e| format!("disk {}: {e}", path.display()))?;
    Ok(DiskConfig {
        path,
        read_only,
        qos,
        poll,
    })
}

#[cfg(test)]
mod disk_spec_tests {
    use super::*;

    #[test]
    fn parses_disk_specs() {
        let d = parse_disk("path=/x/a.vhdx,readonly,max-iops=500,min-iops=10,max-bw=1M").unwrap();
        assert_eq!(d.path, PathBuf::from("/x/a.vhdx"));
        assert!(d.read_only);
        assert_eq!(
            d.qos,
            QosLimits {
                max_iops: 500,
                min_iops: 10,
                max_bw: 1 << 20
            }
        );
        assert_eq!(parse_disk("path=a.img").unwrap().qos, QosLimits::default());
        assert!(!parse_disk("path=a.img").unwrap().poll);
        assert!(parse_disk("path=a.img,poll").unwrap().poll);
        for (bad, says) in [
            ("a.img", "unknown disk option 'a.img'"),
            ("readonly", "has no path=FILE"),
            ("path=", "needs a file"),
            ("path=a,max-iops=lots", "expected a whole number"),
            ("path=a,max-iops", "needs a value"),
            ("path=a,max-bw=3X", "bad size"),
            ("path=a,,readonly", "empty option"),
            ("path=a,readonly=yes", "unknown disk option 'readonly'"),
            (
                "path=a,max-iops=10,min-iops=20",
                "min-iops 20 is above max-iops 10",
            ),
        ] {
            let e = parse_disk(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
