//! From a [`LaunchSpec`] to the VMM's configuration, and from VMM errors
//! and VM exits to the worker's exit code.

use std::path::{Path, PathBuf};

use tern_devices::serial::SerialMode;
use tern_vmm::boot::linux::LinuxError;
use tern_vmm::cpuid::CpuidError;
use tern_vmm::devices::{BlockError, DiskConfig, DiskError, QosLimits};
use tern_vmm::{Backing, CpuModel, Guest, MemorySource, VmConfig, VmError, VmExit};
use tern_worker_proto::launch::{CpuModelSpec, GuestSpec, SerialSpec};
use tern_worker_proto::{DiskFormat, DiskSpec, LaunchSpec};

use crate::exit_code;

/// Where the worker looks for the probe guest when the spec does not say:
/// `$TERN_PROBE_IMAGE`, else `probe-guest` beside this executable (a build
/// tree), else `../lib/tern/probe-guest` from it (where the Debian package
/// puts it: an image, not a program for `$PATH`).
pub fn default_probe_image() -> PathBuf {
    if let Some(p) = std::env::var_os("TERN_PROBE_IMAGE") {
        return p.into();
    }
    let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return PathBuf::from("probe-guest");
    };
    probe_image_near(&dir)
}

/// The probe image for an executable in `dir`: beside it if there is one
/// there, else in `dir/../lib/tern/`.
fn probe_image_near(dir: &Path) -> PathBuf {
    let beside = dir.join("probe-guest");
    if beside.exists() {
        return beside;
    }
    let installed = dir.join("../lib/tern/probe-guest");
    if installed.exists() {
        return installed;
    }
    beside
}

/// The control socket when the spec does not say:
/// `$XDG_RUNTIME_DIR` (or the temporary directory)`/tern-worker-PID.sock`.
pub fn default_control_path() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("tern-worker-{}.sock", std::process::id()))
}

/// The KVM device node when the spec does not say.
pub const DEFAULT_KVM: &str = "/dev/kvm";

/// The serial console the spec asks for.
pub fn serial_mode(s: &SerialSpec) -> SerialMode {
    match s {
        SerialSpec::Stdout => SerialMode::Stdout,
        SerialSpec::Null => SerialMode::Null,
        SerialSpec::File { path } => SerialMode::File(path.clone()),
        SerialSpec::Socket { path } => SerialMode::Socket(path.clone()),
    }
}

/// The block layer's name for a spec's disk format.
pub fn block_format(f: DiskFormat) -> tern_block::DiskFormat {
    match f {
        DiskFormat::Raw => tern_block::DiskFormat::Raw,
        DiskFormat::Vhdx => tern_block::DiskFormat::Vhdx,
    }
}

/// A disk of the spec as the VMM attaches it.
pub fn disk_config(d: &DiskSpec) -> DiskConfig {
    DiskConfig {
        path: d.path.clone(),
        format: d.format.map(block_format),
        read_only: d.read_only,
        qos: QosLimits {
            max_iops: d.qos.max_iops,
            min_iops: d.qos.min_iops,
            max_bw: d.qos.max_bw,
        },
        poll: d.poll,
    }
}

/// The VM a booting spec describes (`None` for a restore: the saved VM
/// brings its configuration).
pub fn vm_config(spec: &LaunchSpec) -> Option<VmConfig> {
    let guest = match spec.guest.as_ref()? {
        GuestSpec::Probe { workload, image } => Guest::Probe {
            image: image.clone().unwrap_or_else(default_probe_image),
            workload: workload.clone(),
        },
        GuestSpec::Linux {
            kernel,
            initrd,
            cmdline,
        } => Guest::Linux {
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: cmdline
                .clone()
                .unwrap_or_else(|| tern_vmm::boot::linux::DEFAULT_CMDLINE.to_string()),
        },
        // Still a boot order only where no kernel is loaded (an incoming
        // migration: the guest arrives running); `boot_order::resolve`
        // turned every booting one into a kernel.
        GuestSpec::Boot { .. } => Guest::Linux {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: tern_vmm::boot::linux::DEFAULT_CMDLINE.to_string(),
        },
    };
    let mut cfg = VmConfig::new(spec.vcpus, spec.memory, guest);
    cfg.cpu_model = match spec.cpu_model {
        CpuModelSpec::Host => CpuModel::Host,
        CpuModelSpec::Compat => CpuModel::Compat,
    };
    apply_host_settings(spec, &mut cfg);
    cfg.disks = spec.disks.iter().map(disk_config).collect();
    cfg.nics = spec
        .nics
        .iter()
        .map(|n| tern_vmm::devices::nics::NicConfig {
            tap: n.tap.clone(),
            mac: n.mac,
        })
        .collect();
    cfg.scsi = crate::scsi::scsi_config(spec);
    cfg.vsock = spec
        .vsock
        .as_ref()
        .map(|v| tern_vmm::devices::vsock::VsockConfig {
            cid: v.cid,
            socket: v.socket.clone(),
        });
    if let Some(m) = &spec.memory_file {
        cfg.memory_source = MemorySource::File {
            path: m.path.clone(),
            lazy: m.lazy,
        };
    }
    if spec.memfd {
        cfg.backing = Backing::Memfd;
    }
    Some(cfg)
}

/// What belongs to this host and run rather than to the VM: applied to a
/// restored VM's saved configuration too.
pub fn apply_host_settings(spec: &LaunchSpec, cfg: &mut VmConfig) {
    cfg.serial = serial_mode(&spec.serial);
    cfg.kvm_path = spec.kvm.clone().unwrap_or_else(|| DEFAULT_KVM.into());
    cfg.prealloc = spec.prealloc;
}

/// The exit code for a VM that could not be built or started.
pub fn error_code(e: &VmError) -> i32 {
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
        // A saved guest this host's CPU cannot carry on.
        VmError::Cpuid(CpuidError::NotOffered { .. }) => exit_code::UNAVAILABLE,
        _ => exit_code::USAGE,
    }
}

/// The exit code for how the VM ended (the guest's status for a probe
/// guest that reported one).
pub fn exit_status(exit: &VmExit) -> i32 {
    match exit {
        VmExit::Guest(status) => (*status).min(255) as i32,
        VmExit::Stopped => exit_code::OK,
        VmExit::PoweredOff => {
            eprintln!("tern: the guest powered off");
            exit_code::OK
        }
        VmExit::Reset => {
            eprintln!(
                "tern: the guest rebooted (worker exit code {})",
                exit_code::REBOOT
            );
            exit_code::REBOOT
        }
        VmExit::Crashed { vcpu, reason, rip } => {
            eprintln!("tern: error: guest crashed on vCPU {vcpu} at RIP {rip:#x}: {reason}");
            exit_code::SOFTWARE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_worker_proto::launch::MemoryFileSpec;

    #[test]
    fn the_probe_is_found_beside_the_binary_or_in_lib_tern() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("usr/bin");
        let lib = root.path().join("usr/lib/tern");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        // Neither: the name beside the binary, for the error to show.
        assert_eq!(probe_image_near(&bin), bin.join("probe-guest"));
        std::fs::write(lib.join("probe-guest"), b"x").unwrap();
        assert_eq!(probe_image_near(&bin), bin.join("../lib/tern/probe-guest"));
        // A build tree's own copy wins.
        std::fs::write(bin.join("probe-guest"), b"x").unwrap();
        assert_eq!(probe_image_near(&bin), bin.join("probe-guest"));
    }

    #[test]
    fn power_off_and_reboot_have_distinct_statuses() {
        assert_eq!(exit_status(&VmExit::PoweredOff), exit_code::OK);
        assert_eq!(exit_status(&VmExit::Stopped), exit_code::OK);
        assert_eq!(exit_status(&VmExit::Reset), exit_code::REBOOT);
        assert_ne!(exit_code::REBOOT, exit_code::OK);
        assert_eq!(exit_status(&VmExit::Guest(3)), 3);
    }

    #[test]
    fn specs_become_vm_configs() {
        let mut spec = LaunchSpec::new(
            3,
            64 << 20,
            GuestSpec::Probe {
                workload: "hello".into(),
                image: Some("/p".into()),
            },
        );
        spec.disks = vec![
            DiskSpec {
                format: Some(DiskFormat::Vhdx),
                read_only: true,
                ..DiskSpec::new("/d/x.img")
            },
            DiskSpec::new("/d/y.vhdx"),
        ];
        spec.memfd = true;
        spec.prealloc = true;
        spec.serial = SerialSpec::Null;
        spec.memory_file = Some(MemoryFileSpec {
            path: "/m".into(),
            lazy: true,
        });
        let cfg = vm_config(&spec).unwrap();
        assert_eq!((cfg.vcpus, cfg.memory), (3, 64 << 20));
        assert!(matches!(&cfg.guest, Guest::Probe { image, workload }
            if image == &PathBuf::from("/p") && workload == "hello"));
        assert_eq!(cfg.disks[0].format, Some(tern_block::DiskFormat::Vhdx));
        assert!(cfg.disks[0].read_only);
        assert_eq!(cfg.disks[1].format, None);
        assert_eq!(cfg.backing, Backing::Memfd);
        assert!(cfg.prealloc);
        assert_eq!(cfg.serial, SerialMode::Null);
        assert_eq!(cfg.kvm_path, PathBuf::from(DEFAULT_KVM));
        assert!(matches!(
            cfg.memory_source,
            MemorySource::File { lazy: true, .. }
        ));
        let restore = LaunchSpec::restoring(tern_worker_proto::launch::RestoreSpec {
            dir: "/s".into(),
            mode: Default::default(),
        });
        assert!(vm_config(&restore).is_none());
    }
}
