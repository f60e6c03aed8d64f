//! `tern run`: the VM worker. Runs one VM in the foreground, serves its
//! control socket, and exits with the guest's status.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use tern_devices::serial::SerialMode;
use tern_vmm::boot::linux::LinuxError;
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
    #[arg(long, conflicts_with = "kernel", required_unless_present = "kernel")]
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
    if args.memfd {
        cfg.backing = Backing::Memfd;
    }
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
    let cfg = match config(&args) {
        Ok(c) => c,
        Err((code, msg)) => {
            eprintln!("tern: error: {msg}");
            return code;
        }
    };
    let hooks = VmHooks {
        on_report: Some(Box::new(|line| eprintln!("[probe] {line}"))),
    };
    let vm = match Vm::create(cfg, hooks) {
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
    if let Err(e) = vm.start() {
        eprintln!("tern: error: {}", chain(&e));
        return error_code(&e);
    }
    let exit = vm.wait();
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
