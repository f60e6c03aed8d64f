//! `tern run`: the VM worker's command line. It turns its options into a
//! [`LaunchSpec`] (or reads one with `--launch FILE|-`) and hands it to
//! [`tern_worker::run`], which runs the VM until it ends.

use std::path::PathBuf;

use clap::Args;
use tern_worker_proto::launch::{
    BootDevice, CpuModelSpec, GuestSpec, MemoryFileSpec, RestoreMode, RestoreSpec, SecureBootSpec,
    SecureBootTemplate, SerialSpec,
};
use tern_worker_proto::{
    DiskFormat, DiskSpec, Endpoint, LaunchSpec, LaunchSpecError, NicSpec, QosLimits, ScsiLunKind,
    ScsiLunSpec, VsockSpec,
};

use crate::exit_code;
use tern_api::parse_size;

pub use tern_worker::error_chain as chain;

/// Options that describe the VM, which `--launch` replaces (not
/// `--probe-image`: it may come from the environment).
const VM_OPTIONS: [&str; 25] = [
    "vcpus",
    "memory",
    "guest",
    "kernel",
    "initrd",
    "cmdline",
    "serial",
    "control",
    "memfd",
    "vsock",
    "disks",
    "nics",
    "scsi",
    "scsi_initiator",
    "restore",
    "checkpoint_dir",
    "incoming",
    "listening_file",
    "dest_dir",
    "memory_file",
    "paused",
    "prealloc",
    "cpu_model",
    "secure_boot",
    "boot",
];

/// Arguments of `tern run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The whole VM configuration as a launch spec (JSON; `-`: standard
    /// input) instead of the options below. See README.md, "Launch spec".
    #[arg(long, value_name = "FILE|-", conflicts_with_all = VM_OPTIONS)]
    launch: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory, e.g. 512M or 2G.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    memory: u64,
    /// Built-in guest: `probe:WORKLOAD` (e.g. probe:hello, probe:vcpus,
    /// probe:dirty,mib=64,rate=100+verify).
    #[arg(long, conflicts_with_all = ["kernel", "boot"], required_unless_present_any = ["kernel", "boot", "restore", "launch"])]
    guest: Option<String>,
    /// Linux kernel (bzImage or ELF vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Boot from the VM's own media, as a firmware would: devices tried
    /// in order, comma-separated: `disk[:N]` (virtio disk N, from 0) and
    /// `dvd[:N]` (SCSI DVD drive N); e.g. `--boot dvd,disk`. The kernel,
    /// initrd and command line come from the medium's boot loader
    /// configuration (docs/boot-sources.md).
    #[arg(long, conflicts_with = "kernel", value_parser = parse_boot_order)]
    boot: Option<BootOrder>,
    /// Initial ramdisk for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Judge --kernel (or what --boot finds) as UEFI Secure Boot would
    /// before it runs (refused: exit 65): a template (debian, microsoft-uefi-ca, custom) and/or
    /// `db=FILE`, `dbx=FILE` (repeatable), comma-separated, e.g.
    /// `debian,dbx=dbx.esl`. See docs/secure-boot.md.
    #[arg(long, value_name = "TEMPLATE|db=FILE,dbx=FILE", value_parser = parse_secure_boot)]
    secure_boot: Option<SecureBootSpec>,
    /// Kernel command line for --kernel.
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
    /// Serial console: stdout, file:PATH, socket:PATH or null.
    #[arg(long, default_value = "stdout", value_parser = parse_serial)]
    serial: SerialSpec,
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
    /// path=FILE[,format=raw|vhdx][,readonly][,max-iops=N][,min-iops=N][,max-bw=BYTES][,poll].
    /// Without format=, FILE ending in .vhdx/.avhdx is VHDX, anything else
    /// raw. A comma inside a value is written twice (path=a,,b.img is the
    /// file `a,b.img`). IOPS are normalized: each 8 KiB of a request counts
    /// as one. `poll` serves the disk from its own polling thread (needs a
    /// spare host core).
    #[arg(long = "disk", value_name = "SPEC", value_parser = parse_disk)]
    disks: Vec<DiskSpec>,
    /// A NIC (repeatable; the guest sees them in this order, after the
    /// disks): tap=NAME[,mac=MAC]. The tap is opened, or made when
    /// missing; without mac= the address is derived from the tap's name
    /// and the NIC's index, the same at every start.
    #[arg(long = "nic", value_name = "SPEC", value_parser = parse_nic)]
    nics: Vec<NicSpec>,
    /// A SCSI LUN on the VM's virtio-scsi controller (repeatable; LUNs are
    /// numbered in order from 0 unless lun=N says): disk=IMAGE[,ro]
    /// [,shared][,format=raw|vhdx][,lun=N] or dvd=[ISO][,lun=N] (no ISO:
    /// an empty drive). `shared` lets other VMs attach the same raw image,
    /// with SCSI persistent reservations kept beside it.
    #[arg(long = "scsi", value_name = "SPEC", value_parser = parse_scsi)]
    scsi: Vec<ScsiLunSpec>,
    /// The SCSI controller's initiator name (reservations are kept by it;
    /// default: made up at start).
    #[arg(long, value_name = "NAME")]
    scsi_initiator: Option<String>,
    /// A vsock device (after the disks, NICs and SCSI controller):
    /// cid=N,socket=PATH. Host programs connect to PATH and write
    /// `CONNECT <port>\n`; guest connections to the host (CID 2) port P go
    /// to PATH_P.
    #[arg(long, value_name = "SPEC", value_parser = parse_vsock)]
    vsock: Option<VsockSpec>,
    /// Continue a saved VM (a directory written by the `save` request, or
    /// an export) instead of booting; its configuration comes from there.
    /// Nothing in the directory is changed.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["guest", "kernel", "disks", "nics", "scsi", "vsock", "incoming", "memory_file"]
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
    incoming: Option<Endpoint>,
    /// With --incoming: once listening, write where (JSON: version and
    /// endpoint, the real port for port 0) to FILE, atomically.
    #[arg(long, value_name = "FILE", requires = "incoming")]
    listening_file: Option<PathBuf>,
    /// With --incoming: the directory where a shared-nothing migration
    /// creates the disks it brings (without it, one is refused).
    #[arg(long, value_name = "DIR", requires = "incoming")]
    dest_dir: Option<PathBuf>,
    /// Initial memory contents from an image file: PATH[,lazy] (lazy: map
    /// it copy-on-write instead of copying it in). Boot data is written
    /// over it as usual.
    #[arg(long, value_name = "PATH[,lazy]", value_parser = parse_memory_file)]
    memory_file: Option<MemoryFileSpec>,
    /// Start with the vCPUs paused (resume through the control socket).
    #[arg(long)]
    paused: bool,
    /// Allocate and map all guest memory before the VM runs (QEMU's
    /// prealloc=on): no page faults later. With --incoming: before
    /// waiting, so the migration writes into memory that is ready.
    #[arg(long)]
    prealloc: bool,
    /// The CPU the guest is shown: host (everything this host's KVM
    /// offers) or compat (a fixed baseline for VMs that move between
    /// hosts with different CPUs). See docs/cpu-models.md.
    #[arg(long, value_enum, default_value = "host", conflicts_with = "restore")]
    cpu_model: CpuModelArg,
}

/// `--cpu-model`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CpuModelArg {
    /// Everything this host's KVM offers, normalized.
    Host,
    /// x86-64-v2 and KVM's paravirtual basics.
    Compat,
}

/// Parses `--serial stdout|null|file:PATH|socket:PATH`.
fn parse_serial(text: &str) -> Result<SerialSpec, String> {
    let path = |p: &str| -> Option<PathBuf> { (!p.is_empty()).then(|| p.into()) };
    match text {
        "stdout" => Ok(SerialSpec::Stdout),
        "null" => Ok(SerialSpec::Null),
        _ => {
            if let Some(path) = text.strip_prefix("file:").and_then(path) {
                Ok(SerialSpec::File { path })
            } else if let Some(path) = text.strip_prefix("socket:").and_then(path) {
                Ok(SerialSpec::Socket { path })
            } else {
                Err(format!(
                    "bad serial mode '{text}': expected stdout, null, file:PATH or socket:PATH"
                ))
            }
        }
    }
}

/// Parses `--memory-file PATH[,lazy]`.
/// A `--boot` list.
#[derive(Clone, Debug)]
struct BootOrder(Vec<BootDevice>);

/// `disk[:N],dvd[:N],...`.
fn parse_boot_order(text: &str) -> Result<BootOrder, String> {
    BootDevice::parse_order(text).map(BootOrder)
}

fn parse_secure_boot(text: &str) -> Result<SecureBootSpec, String> {
    let mut spec = SecureBootSpec {
        template: SecureBootTemplate::Custom,
        db: Vec::new(),
        dbx: Vec::new(),
    };
    for part in split_options(text) {
        let template = match part.split_once('=') {
            Some(("db", f)) if !f.is_empty() => {
                spec.db.push(f.into());
                continue;
            }
            Some(("dbx", f)) if !f.is_empty() => {
                spec.dbx.push(f.into());
                continue;
            }
            Some(("template", t)) => t,
            None => part.as_str(),
            Some(_) => {
                return Err(format!(
                    "bad secure boot option '{part}': expected TEMPLATE, db=FILE or dbx=FILE"
                ))
            }
        };
        spec.template = match template {
            "debian" => SecureBootTemplate::Debian,
            "microsoft-uefi-ca" => SecureBootTemplate::MicrosoftUefiCa,
            "custom" => SecureBootTemplate::Custom,
            other => {
                return Err(format!(
                    "unknown secure boot template '{other}' (debian, microsoft-uefi-ca, custom)"
                ))
            }
        };
    }
    Ok(spec)
}

fn parse_memory_file(text: &str) -> Result<MemoryFileSpec, String> {
    let (path, lazy) = match text.strip_suffix(",lazy") {
        Some(p) => (p, true),
        None => (text, false),
    };
    if path.is_empty() {
        return Err("--memory-file needs a path".into());
    }
    Ok(MemoryFileSpec {
        path: path.into(),
        lazy,
    })
}

/// The launch spec `tern run`'s options describe.
fn spec(args: RunArgs) -> Result<LaunchSpec, String> {
    let mut spec = match (&args.restore, &args.guest, &args.kernel) {
        (Some(dir), _, _) => LaunchSpec::restoring(RestoreSpec {
            dir: dir.clone(),
            mode: if args.eager {
                RestoreMode::Eager
            } else {
                RestoreMode::Lazy
            },
        }),
        (None, Some(g), None) => {
            let workload = g
                .strip_prefix("probe:")
                .ok_or_else(|| format!("unknown guest '{g}': expected probe:WORKLOAD"))?;
            LaunchSpec::new(
                args.vcpus,
                args.memory,
                GuestSpec::Probe {
                    workload: workload.into(),
                    image: args.probe_image.clone(),
                },
            )
        }
        (None, None, Some(k)) => LaunchSpec::new(
            args.vcpus,
            args.memory,
            GuestSpec::Linux {
                kernel: k.clone(),
                initrd: args.initrd.clone(),
                cmdline: args.cmdline.clone(),
            },
        ),
        (None, None, None) if args.boot.is_some() => LaunchSpec::new(
            args.vcpus,
            args.memory,
            GuestSpec::Boot {
                order: args.boot.clone().map(|b| b.0).unwrap_or_default(),
            },
        ),
        _ => return Err("give one of --guest, --kernel, --boot, --restore or --launch".into()),
    };
    spec.disks = args.disks;
    spec.nics = args.nics;
    spec.scsi = args.scsi;
    spec.scsi_initiator = args.scsi_initiator;
    spec.vsock = args.vsock;
    spec.serial = args.serial;
    spec.control = args.control;
    spec.memfd = args.memfd;
    spec.prealloc = args.prealloc;
    spec.paused = args.paused;
    spec.checkpoint_dir = args.checkpoint_dir;
    spec.incoming = args.incoming;
    spec.listening_file = args.listening_file;
    spec.dest_dir = args.dest_dir;
    spec.memory_file = args.memory_file;
    spec.kvm = Some(args.kvm);
    if args.secure_boot.is_some() && args.kernel.is_none() && args.boot.is_none() {
        return Err("--secure-boot judges a kernel: give --kernel or --boot".into());
    }
    spec.secure_boot = args.secure_boot;
    spec.cpu_model = match args.cpu_model {
        CpuModelArg::Host => CpuModelSpec::Host,
        CpuModelArg::Compat => CpuModelSpec::Compat,
    };
    Ok(spec)
}

/// Runs the worker; returns the process exit code.
pub fn run(args: RunArgs) -> i32 {
    init_log();
    let spec = match &args.launch {
        Some(path) => match LaunchSpec::read(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tern: error: {}", chain(&e));
                return match e {
                    LaunchSpecError::Read { .. } => exit_code::NO_INPUT,
                    _ => exit_code::USAGE,
                };
            }
        },
        None => match spec(args) {
            Ok(s) => s,
            Err(msg) => {
                eprintln!("tern: error: {msg}");
                return exit_code::USAGE;
            }
        },
    };
    tern_worker::run(spec)
}

/// The worker's log on standard error: `TERN_LOG` (tracing's filter
/// syntax, e.g. `tern_vmm::cpuid=debug` dumps the CPUID), by default
/// `info` (what the VMM answered for the guest, warnings).
fn init_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .try_init();
}

/// Splits a `key=value,...` option list; `,,` inside a value is a
/// literal comma (QEMU's rule), so a value may hold any character.
fn split_options(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                parts.last_mut().expect("never empty").push(',');
            }
            ',' => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

/// Parses `--nic tap=NAME[,mac=MAC]` (a `,` in a value written twice).
pub fn parse_nic(text: &str) -> Result<NicSpec, String> {
    let mut tap = None;
    let mut mac = None;
    for part in split_options(text) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part.as_str(), None),
        };
        match (key, value) {
            ("tap", Some(v)) if !v.is_empty() => tap = Some(v.to_string()),
            ("tap", _) => return Err("NIC option 'tap' needs an interface name (tap=NAME)".into()),
            ("mac", Some(v)) => mac = Some(v.parse::<tern_net::Mac>().map_err(|e| e.to_string())?),
            ("", None) => return Err(format!("empty option in NIC spec '{text}'")),
            _ => {
                return Err(format!(
                    "unknown NIC option '{part}' (expected tap=NAME, mac=MAC)"
                ))
            }
        }
    }
    let tap = tap.ok_or_else(|| format!("NIC spec '{text}' has no tap=NAME"))?;
    Ok(NicSpec { tap, mac })
}

/// Parses `--scsi disk=IMAGE[,ro][,shared][,format=raw|vhdx][,lun=N]` or
/// `--scsi dvd=[ISO][,lun=N]` (a `,` in a path written twice).
pub fn parse_scsi(text: &str) -> Result<ScsiLunSpec, String> {
    let mut parts = split_options(text).into_iter();
    let first = parts.next().unwrap_or_default();
    let (kind, path) = match first.split_once('=') {
        Some(("disk", p)) if !p.is_empty() => (ScsiLunKind::Disk, Some(PathBuf::from(p))),
        Some(("disk", _)) => return Err("SCSI disk needs an image (disk=IMAGE)".into()),
        Some(("dvd", p)) => (ScsiLunKind::Dvd, (!p.is_empty()).then(|| PathBuf::from(p))),
        _ if first == "dvd" => (ScsiLunKind::Dvd, None),
        _ => {
            return Err(format!(
                "SCSI spec '{text}' must start with disk=IMAGE or dvd=[ISO]"
            ))
        }
    };
    let mut spec = ScsiLunSpec {
        kind,
        lun: None,
        path,
        format: None,
        read_only: false,
        shared: false,
    };
    for part in parts {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part.as_str(), None),
        };
        match (kind, key, value) {
            (_, "lun", Some(v)) => {
                spec.lun = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|n| *n <= 0x3FFF)
                        .ok_or_else(|| format!("SCSI lun '{v}' is not a number 0..=16383"))?,
                )
            }
            (ScsiLunKind::Disk, "ro" | "readonly", None) => spec.read_only = true,
            (ScsiLunKind::Disk, "shared", None) => spec.shared = true,
            (ScsiLunKind::Disk, "format", Some("raw")) => spec.format = Some(DiskFormat::Raw),
            (ScsiLunKind::Disk, "format", Some("vhdx")) => spec.format = Some(DiskFormat::Vhdx),
            (ScsiLunKind::Disk, "format", Some(v)) => {
                return Err(format!("unknown SCSI disk format '{v}' (raw or vhdx)"))
            }
            (_, "", None) => return Err(format!("empty option in SCSI spec '{text}'")),
            (ScsiLunKind::Disk, ..) => {
                return Err(format!(
                "unknown SCSI disk option '{part}' (expected ro, shared, format=raw|vhdx, lun=N)"
            ))
            }
            (ScsiLunKind::Dvd, ..) => {
                return Err(format!("unknown SCSI DVD option '{part}' (expected lun=N)"))
            }
        }
    }
    if spec.shared && spec.read_only {
        return Err("a SCSI disk cannot be both shared and ro".into());
    }
    Ok(spec)
}

/// Parses `--vsock cid=N,socket=PATH` (a `,` in the path written twice).
pub fn parse_vsock(text: &str) -> Result<VsockSpec, String> {
    let (mut cid, mut socket) = (None, None);
    for part in split_options(text) {
        match part.split_once('=') {
            Some(("cid", v)) => {
                cid = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|c| *c > 2 && *c < u64::from(u32::MAX))
                        .ok_or_else(|| {
                            format!("vsock cid '{v}' is not a guest CID (3 up to 4294967294)")
                        })?,
                )
            }
            Some(("socket", v)) if !v.is_empty() => socket = Some(PathBuf::from(v)),
            Some(("socket", _)) => return Err("vsock option 'socket' needs a path".into()),
            _ => {
                return Err(format!(
                    "unknown vsock option '{part}' (expected cid=N, socket=PATH)"
                ))
            }
        }
    }
    Ok(VsockSpec {
        cid: cid.ok_or_else(|| format!("vsock spec '{text}' has no cid=N"))?,
        socket: socket.ok_or_else(|| format!("vsock spec '{text}' has no socket=PATH"))?,
    })
}

/// Parses `--disk path=FILE[,format=raw|vhdx][,readonly][,max-iops=N]
/// [,min-iops=N][,max-bw=BYTES][,poll]`.
pub fn parse_disk(text: &str) -> Result<DiskSpec, String> {
    let mut path = None;
    let mut format = None;
    let mut read_only = false;
    let mut poll = false;
    let mut qos = QosLimits::default();
    for part in split_options(text) {
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
            "format" => {
                let v = value.ok_or("disk option 'format' needs a value (format=raw|vhdx)")?;
                format = Some(v.parse::<DiskFormat>()?);
            }
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
                    "unknown disk option '{other}' (expected path=FILE, format=raw|vhdx, readonly, max-iops=N, min-iops=N, max-bw=BYTES, poll)"
                ))
            }
        }
    }
    let path = path.ok_or_else(|| format!("disk spec '{text}' has no path=FILE"))?;
    if qos.max_iops != 0 && qos.min_iops > qos.max_iops {
        return Err(format!(
            "disk {}: min-iops {} is above max-iops {}",
            path.display(),
            qos.min_iops,
            qos.max_iops
        ));
    }
    Ok(DiskSpec {
        path,
        format,
        read_only,
        qos,
        poll,
    })
}

#[cfg(test)]
mod vsock_spec_tests {
    use super::*;

    #[test]
    fn parses_vsock_specs() {
        assert_eq!(
            parse_vsock("cid=3,socket=/tmp/v.sock").unwrap(),
            VsockSpec {
                cid: 3,
                socket: "/tmp/v.sock".into()
            }
        );
        assert_eq!(
            parse_vsock("socket=/tmp/a,,b,cid=9").unwrap().socket,
            PathBuf::from("/tmp/a,b")
        );
        for (bad, needle) in [
            ("cid=2,socket=s", "is not a guest CID"),
            ("cid=x,socket=s", "is not a guest CID"),
            ("socket=s", "no cid=N"),
            ("cid=3", "no socket=PATH"),
            ("cid=3,socket=", "needs a path"),
            ("cid=3,socket=s,port=1", "unknown vsock option 'port=1'"),
        ] {
            let e = parse_vsock(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod nic_spec_tests {
    use super::*;

    #[test]
    fn parses_nic_specs() {
        let n = parse_nic("tap=tern0").unwrap();
        assert_eq!((n.tap.as_str(), n.mac), ("tern0", None));
        let n = parse_nic("mac=52:54:00:00:00:07,tap=t1").unwrap();
        assert_eq!(n.mac.unwrap().to_string(), "52:54:00:00:00:07");
        for (bad, msg) in [
            ("", "empty option"),
            ("tap=", "needs an interface name"),
            ("tap", "needs an interface name"),
            ("tap=a,mac=zz", "is not a MAC address"),
            ("tap=a,mac=01:00:00:00:00:01", "multicast"),
            ("tap=a,speed=10", "unknown NIC option 'speed=10'"),
            ("mac=52:54:00:00:00:07", "has no tap=NAME"),
        ] {
            let e = parse_nic(bad).unwrap_err();
            assert!(e.contains(msg), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod disk_spec_tests {
    use super::*;

    #[test]
    fn parses_disk_specs() {
        let d = parse_disk("path=/x/a.vhdx,readonly,max-iops=500,min-iops=10,max-bw=1M").unwrap();
        assert_eq!(d.path, PathBuf::from("/x/a.vhdx"));
        assert!(d.read_only);
        assert_eq!(d.format, None);
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
            ("path=a,", "empty option"),
            ("path=a,readonly=yes", "unknown disk option 'readonly'"),
            ("path=a,format=qcow2", "unknown disk format 'qcow2'"),
            ("path=a,format", "needs a value"),
            (
                "path=a,max-iops=10,min-iops=20",
                "min-iops 20 is above max-iops 10",
            ),
        ] {
            let e = parse_disk(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn scsi_specs() {
        let d = parse_scsi("disk=/v/a,,b.img,shared,lun=3").unwrap();
        assert_eq!(d.kind, ScsiLunKind::Disk);
        assert_eq!(d.path.as_deref(), Some(std::path::Path::new("/v/a,b.img")));
        assert!(d.shared && !d.read_only);
        assert_eq!(d.lun, Some(3));
        let d = parse_scsi("disk=/v/x.vhdx,ro,format=vhdx").unwrap();
        assert!(d.read_only);
        assert_eq!(d.format, Some(DiskFormat::Vhdx));
        assert_eq!(parse_scsi("dvd=").unwrap().path, None);
        assert_eq!(parse_scsi("dvd").unwrap().kind, ScsiLunKind::Dvd);
        let d = parse_scsi("dvd=/i/x.iso,lun=2").unwrap();
        assert_eq!(d.path.as_deref(), Some(std::path::Path::new("/i/x.iso")));
        for (bad, what) in [
            ("disk=", "needs an image"),
            ("tape=/x", "must start with"),
            ("disk=/x,lun=99999", "0..=16383"),
            ("disk=/x,shared,ro", "both shared and ro"),
            ("dvd=/x,shared", "unknown SCSI DVD option"),
            ("disk=/x,format=qcow2", "unknown SCSI disk format"),
            ("disk=/x,speed=1", "unknown SCSI disk option"),
        ] {
            let e = parse_scsi(bad).unwrap_err();
            assert!(e.contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn explicit_format_beats_the_extension() {
        let d = parse_disk("path=/v/x.img,format=vhdx").unwrap();
        assert_eq!(d.format, Some(DiskFormat::Vhdx));
        let d = parse_disk("format=raw,path=/v/x.vhdx").unwrap();
        assert_eq!(d.format, Some(DiskFormat::Raw));
    }

    #[test]
    fn doubled_commas_are_literal_so_paths_hold_any_character() {
        // The option injections the daemon once allowed: each is one path.
        for (spec, path) in [
            ("path=/v/a.raw,,readonly", "/v/a.raw,readonly"),
            ("path=/v/b,,path=/v/a.raw", "/v/b,path=/v/a.raw"),
            ("path=/v/c,,poll", "/v/c,poll"),
            (
                "path=/v/with space=and=equals.img",
                "/v/with space=and=equals.img",
            ),
            ("path=/v/trailing,,", "/v/trailing,"),
            ("path=/v/x,,,,y", "/v/x,,y"),
        ] {
            let d = parse_disk(spec).unwrap();
            assert_eq!(d.path, PathBuf::from(path), "{spec}");
            assert!(!d.read_only && !d.poll, "{spec}");
        }
        // A doubled comma then a real option.
        let d = parse_disk("path=/v/a,,b.img,,,readonly").unwrap();
        assert_eq!(d.path, PathBuf::from("/v/a,b.img,"));
        let d = parse_disk("path=/v/a,,b.img,readonly").unwrap();
        assert_eq!(d.path, PathBuf::from("/v/a,b.img"));
        assert!(d.read_only);
    }

    #[test]
    fn options_become_a_launch_spec() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let cli = Cli::try_parse_from([
            "tern",
            "--guest",
            "probe:hello",
            "--vcpus",
            "2",
            "--memory",
            "64M",
            "--disk",
            "path=/v/a,,b.img,format=vhdx",
            "--serial",
            "file:/s",
            "--incoming",
            "tcp:127.0.0.1:0",
            "--memfd",
        ])
        .unwrap();
        let s = spec(cli.run).unwrap();
        s.validate().unwrap();
        assert_eq!((s.vcpus, s.memory), (2, 64 << 20));
        assert_eq!(s.disks[0].path, PathBuf::from("/v/a,b.img"));
        assert_eq!(s.disks[0].format, Some(DiskFormat::Vhdx));
        assert_eq!(s.serial, SerialSpec::File { path: "/s".into() });
        assert!(s.memfd && s.incoming.is_some());
        // --launch replaces the VM options.
        assert!(Cli::try_parse_from(["tern", "--launch", "-", "--guest", "probe:hello"]).is_err());
        assert!(Cli::try_parse_from(["tern", "--launch", "-"]).is_ok());
        assert!(
            Cli::try_parse_from(["tern", "--guest", "probe:hello", "--serial", "tty"]).is_err()
        );
        // The CPU model: host unless asked, compat when asked, nothing else;
        // not with --restore (the saved VM keeps its CPU) or --launch.
        assert_eq!(s.cpu_model, CpuModelSpec::Host);
        let compat = Cli::try_parse_from(["tern", "--guest", "probe:x", "--cpu-model", "compat"]);
        assert_eq!(
            spec(compat.unwrap().run).unwrap().cpu_model,
            CpuModelSpec::Compat
        );
        for bad in [
            &["tern", "--guest", "probe:x", "--cpu-model", "pentium"][..],
            &["tern", "--restore", "/d", "--cpu-model", "compat"],
            &["tern", "--launch", "-", "--cpu-model", "compat"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
