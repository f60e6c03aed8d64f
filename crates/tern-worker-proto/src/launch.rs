//! The launch spec: the whole configuration of the VM a worker runs, as one
//! versioned JSON document (`tern run --launch FILE|-`). A daemon writes
//! one instead of formatting command-line options, so no value (a path
//! holding `,` or `=`) is ever re-parsed.
//!
//! Versioning: [`LAUNCH_SPEC_VERSION`] is the newest version; a worker
//! reads every version from 1 up to it. A field added later has a default,
//! so an older document still reads; a change an older document cannot
//! express that way bumps the version and [`LaunchSpec::parse`] upgrades
//! the older shape. A document newer than the worker is refused, as is a
//! field the worker does not know (a typo must not be ignored).

use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;
use crate::types::{DiskFormat, QosLimits};

/// The newest launch spec version.
pub const LAUNCH_SPEC_VERSION: u32 = 1;

/// Guest memory when the spec does not say (as `tern run`).
pub const DEFAULT_MEMORY: u64 = 512 << 20;

/// One VM's configuration for a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    /// The document's version ([`LAUNCH_SPEC_VERSION`] when written by
    /// this crate).
    pub version: u32,
    /// vCPUs (ignored with `restore`: the saved VM says).
    #[serde(default = "one")]
    pub vcpus: u32,
    /// Guest memory, bytes (ignored with `restore`).
    #[serde(default = "default_memory")]
    pub memory: u64,
    /// What to boot; absent only with `restore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestSpec>,
    /// Disks, in the guest's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// NICs, in the guest's order (after the disks in the device slots).
    /// Added in version 1 with a default: a document without it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicSpec>,
    /// The vsock device (after the disks and NICs). Added in version 1
    /// with a default: a document without it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockSpec>,
    /// SCSI LUNs on one virtio-scsi controller (in the slot after the
    /// NICs'; no controller when empty). Added in version 1 with a
    /// default: a document without it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scsi: Vec<ScsiLunSpec>,
    /// The initiator name of the VM's SCSI controller: persistent
    /// reservations on shared disks are kept by it, so two VMs must not
    /// share one (absent: one is made up at start; a restore or migration
    /// keeps the saved one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scsi_initiator: Option<String>,
    /// Where the serial console goes.
    #[serde(default)]
    pub serial: SerialSpec,
    /// Control socket path (absent: `$XDG_RUNTIME_DIR` or `/tmp`,
    /// `tern-worker-PID.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<PathBuf>,
    /// Back guest memory with a memfd (a same-host migration hands it over).
    #[serde(default)]
    pub memfd: bool,
    /// Allocate and map all guest memory before the VM runs.
    #[serde(default)]
    pub prealloc: bool,
    /// Start with the vCPUs paused.
    #[serde(default)]
    pub paused: bool,
    /// Where the VM's checkpoints live (created when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue a saved VM (a saved directory or an export) instead of
    /// booting; its configuration comes from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
    /// Wait for a live migration here, then run the VM it brings (the rest
    /// of the spec must describe the same VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<Endpoint>,
    /// With `incoming`: once listening, write a [`Listening`] document
    /// here saying on which endpoint (the port the kernel gave for port 0).
    ///
    /// [`Listening`]: crate::Listening
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening_file: Option<PathBuf>,
    /// With `incoming`: where disks mirrored by a shared-nothing
    /// migration are created (absent: such a migration is refused). Added
    /// in version 1 with a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_dir: Option<PathBuf>,
    /// Initial memory contents from an image file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file: Option<MemoryFileSpec>,
    /// KVM device node (absent: `/dev/kvm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<PathBuf>,
    /// The CPU the guest is shown (absent: `host`; ignored with `restore`
    /// and `incoming`: the saved VM keeps the CPU it was using).
    #[serde(default, skip_serializing_if = "CpuModelSpec::is_host")]
    pub cpu_model: CpuModelSpec,
    /// Judge a Linux kernel as UEFI Secure Boot would before it runs
    /// (docs/secure-boot.md); a refused kernel does not boot. Added in
    /// version 1 with a default: a document without it boots unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<SecureBootSpec>,
}

/// A guest CPU model (docs/cpu-models.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuModelSpec {
    /// Everything this host's KVM offers, normalized.
    #[default]
    Host,
    /// The fixed baseline for VMs that move between different hosts.
    Compat,
}

impl CpuModelSpec {
    /// Whether this is the default, `host`.
    pub fn is_host(&self) -> bool {
        *self == CpuModelSpec::Host
    }
}

fn one() -> u32 {
    1
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY
}

/// What a VM boots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GuestSpec {
    /// The built-in probe guest running `workload` (e.g. `hello`,
    /// `dirty,mib=64,rate=100+verify`).
    Probe {
        /// The workload, as after `probe:` on the command line.
        workload: String,
        /// The probe image (absent: the worker's default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<PathBuf>,
    },
    /// A Linux kernel.
    Linux {
        /// bzImage or ELF vmlinux.
        kernel: PathBuf,
        /// Initial ramdisk.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<PathBuf>,
        /// Kernel command line (absent: the worker's default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cmdline: Option<String>,
    },
    /// Boot from the VM's own media as a firmware's boot manager would:
    /// each device in order until one yields a kernel (and, with Secure
    /// Boot, one the policy accepts). Added in this release; an older
    /// worker refuses the kind (docs/boot-sources.md).
    Boot {
        /// The devices, first tried first.
        order: Vec<BootDevice>,
    },
}

/// A device a VM may boot from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BootDevice {
    /// Virtio disk `index` (in `disks` order).
    Disk {
        /// Index into `disks`.
        index: usize,
    },
    /// SCSI DVD drive `index` (the n-th DVD in `scsi`).
    Dvd {
        /// Which DVD drive, from 0.
        index: usize,
    },
}

impl BootDevice {
    /// Parses a boot order as people write it: `disk[:N]` and `dvd[:N]`,
    /// comma-separated (N from 0, default 0), e.g. `dvd,disk:1`.
    pub fn parse_order(text: &str) -> Result<Vec<BootDevice>, String> {
        text.split(',')
            .map(|item| {
                let (kind, n) = item.split_once(':').unwrap_or((item, "0"));
                let index: usize = n
                    .parse()
                    .map_err(|_| format!("boot device '{item}': '{n}' is not an index"))?;
                match kind {
                    "disk" => Ok(BootDevice::Disk { index }),
                    "dvd" => Ok(BootDevice::Dvd { index }),
                    _ => Err(format!(
                        "boot device '{item}': expected disk[:N] or dvd[:N]"
                    )),
                }
            })
            .collect()
    }
}

/// One disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// The image; any path, no escaping.
    pub path: PathBuf,
    /// Its format. Absent: by file name (`.vhdx`/`.avhdx` is VHDX, anything
    /// else raw); a daemon that knows the format always says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Attach read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Storage QoS limits (0: none).
    #[serde(default, skip_serializing_if = "QosLimits::is_unlimited")]
    pub qos: QosLimits,
    /// Serve the disk from its own polling thread (needs a spare core).
    #[serde(default)]
    pub poll: bool,
}

impl DiskSpec {
    /// A read-write disk at `path`, format by name, no limits.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskSpec {
            path: path.into(),
            format: None,
            read_only: false,
            qos: QosLimits::default(),
            poll: false,
        }
    }
}

/// One NIC: a virtio-net device on a host tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// The tap interface (opened, or created when missing).
    pub tap: String,
    /// The guest's MAC address (absent: derived from the tap name and the
    /// NIC's index, the same at every start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<tern_net::Mac>,
}

/// What a SCSI LUN is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScsiLunKind {
    /// A disk (raw or VHDX).
    Disk,
    /// A DVD drive on ISO media.
    Dvd,
}

/// One SCSI LUN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScsiLunSpec {
    /// Disk or DVD drive.
    pub kind: ScsiLunKind,
    /// Its LUN number (absent: the next after the LUNs before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u16>,
    /// A disk's image; a DVD's ISO (absent or empty: an empty drive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// A disk's format (absent: by file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Attach read-only (a DVD always is).
    #[serde(default)]
    pub read_only: bool,
    /// A shared disk: other VMs may attach it too, and reservations are
    /// kept beside the image for all of them (raw images only).
    #[serde(default)]
    pub shared: bool,
}

impl ScsiLunSpec {
    /// The LUN numbers of `luns`, in order: each its own or the one after
    /// the previous.
    pub fn numbers(luns: &[ScsiLunSpec]) -> Vec<u16> {
        let mut next = 0u16;
        luns.iter()
            .map(|l| {
                let n = l.lun.unwrap_or(next);
                next = n.saturating_add(1);
                n
            })
            .collect()
    }
}

/// The vsock device: the guest's CID and the host-side UNIX socket
/// (docs/vsock.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    /// The guest's context id (3 or more, below 2^32 - 1).
    pub cid: u64,
    /// Host programs connect here (`CONNECT <port>`); guest connections
    /// to port P go to `<socket>_P`.
    pub socket: PathBuf,
}

/// Where the serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SerialSpec {
    /// The worker's standard output (and input, from a terminal).
    #[default]
    Stdout,
    /// Discarded.
    Null,
    /// Appended to a file (or written into a FIFO).
    File {
        /// The file.
        path: PathBuf,
    },
    /// A UNIX socket the worker listens on; every client gets the output
    /// and may type.
    Socket {
        /// The socket.
        path: PathBuf,
    },
}

/// A saved VM to continue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    /// A directory written by `save`, or an export.
    pub dir: PathBuf,
    /// How memory comes in.
    #[serde(default)]
    pub mode: RestoreMode,
}

/// How a restore brings memory in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// Map the memory image copy-on-write; pages are read on first touch.
    #[default]
    Lazy,
    /// Copy all of memory in before the VM runs.
    Eager,
}

/// Initial memory contents from an image file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryFileSpec {
    /// The image (regions back to back).
    pub path: PathBuf,
    /// Map it copy-on-write instead of copying it in.
    #[serde(default)]
    pub lazy: bool,
}

/// A launch spec that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LaunchSpecError {
    /// The document could not be read.
    #[error("cannot read the launch spec {what}")]
    Read {
        /// The file, or "from standard input".
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not JSON, or a field of the wrong type or unknown.
    #[error("bad launch spec")]
    Json(#[source] serde_json::Error),
    /// No `version` field.
    #[error(
        "the launch spec has no \"version\" (this worker reads versions 1..={LAUNCH_SPEC_VERSION})"
    )]
    NoVersion,
    /// A version this worker does not read.
    #[error("launch spec version {0} is not one this worker reads (1..={LAUNCH_SPEC_VERSION}): use a worker as new as the daemon")]
    Version(u64),
    /// Neither a guest nor a saved VM.
    #[error("the launch spec has neither \"guest\" nor \"restore\"")]
    NoGuest,
    /// Two settings that exclude each other.
    #[error("\"{0}\" and \"{1}\" exclude each other (a restored VM's configuration comes from its saved directory)")]
    Conflict(&'static str, &'static str),
    /// A setting that only means something with another.
    #[error("\"{0}\" needs \"{1}\"")]
    Needs(&'static str, &'static str),
    /// No vCPUs.
    #[error("a VM needs at least 1 vCPU (\"vcpus\" is 0)")]
    NoVcpus,
    /// Less memory than any VM needs.
    #[error("guest memory must be at least 1 MiB (\"memory\" is {0} bytes)")]
    TooLittleMemory(u64),
    /// A disk without a path.
    #[error("disk {0} has an empty \"path\"")]
    EmptyDiskPath(usize),
    /// A reserved vsock CID.
    #[error("vsock \"cid\" {0} is reserved (a guest's CID is 3 or more, below 2^32 - 1)")]
    VsockCid(u64),
    /// A vsock device without a socket.
    #[error("vsock has an empty \"socket\"")]
    EmptyVsockSocket,
    /// A SCSI disk without an image.
    #[error("SCSI LUN {0} is a disk without a \"path\"")]
    ScsiNoImage(u16),
    /// Two SCSI LUNs with one number, or one out of range.
    #[error("SCSI LUN {0} is given twice or is above 16383")]
    ScsiLun(u16),
    /// A shared DVD, or a shared read-only disk.
    #[error("SCSI LUN {0}: only a read-write disk can be \"shared\"")]
    ScsiShared(u16),
    /// Contradictory QoS limits.
    #[error("disk {index}: min_iops {min} is above max_iops {max}")]
    Qos {
        /// Disk index.
        index: usize,
        /// min_iops.
        min: u64,
        /// max_iops.
        max: u64,
    },
}

impl LaunchSpec {
    /// A spec of the newest version booting `guest` with `vcpus` and
    /// `memory`; everything else at its default.
    pub fn new(vcpus: u32, memory: u64, guest: GuestSpec) -> Self {
        LaunchSpec {
            vcpus,
            memory,
            guest: Some(guest),
            ..Self::empty()
        }
    }

    /// A spec of the newest version continuing the saved VM `restore`.
    pub fn restoring(restore: RestoreSpec) -> Self {
        LaunchSpec {
            restore: Some(restore),
            ..Self::empty()
        }
    }

    /// Every field at its default; neither guest nor restore.
    fn empty() -> Self {
        LaunchSpec {
            version: LAUNCH_SPEC_VERSION,
            vcpus: 1,
            memory: DEFAULT_MEMORY,
            guest: None,
            disks: Vec::new(),
            nics: Vec::new(),
            scsi: Vec::new(),
            scsi_initiator: None,
            vsock: None,
            serial: SerialSpec::default(),
            control: None,
            memfd: false,
            prealloc: false,
            paused: false,
            checkpoint_dir: None,
            restore: None,
            incoming: None,
            listening_file: None,
            dest_dir: None,
            memory_file: None,
            kvm: None,
            cpu_model: CpuModelSpec::Host,
            secure_boot: None,
        }
    }

    /// Reads a document of any supported version, upgrades it to the
    /// newest shape and checks it.
    pub fn parse(text: &str) -> Result<LaunchSpec, LaunchSpecError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(LaunchSpecError::Json)?;
        let version = value
            .get("version")
            .ok_or(LaunchSpecError::NoVersion)?
            .as_u64()
            .ok_or(LaunchSpecError::NoVersion)?;
        let mut spec: LaunchSpec = match version {
            // Version 1 is the current shape. A version 2 would read a
            // version 1 document here into `v1::LaunchSpec` and upgrade it.
            1 => serde_json::from_value(value).map_err(LaunchSpecError::Json)?,
            v => return Err(LaunchSpecError::Version(v)),
        };
        spec.version = LAUNCH_SPEC_VERSION;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads a document from `path`, or from standard input when `path` is
    /// `-`.
    pub fn read(path: &std::path::Path) -> Result<LaunchSpec, LaunchSpecError> {
        let mut text = String::new();
        if path.as_os_str() == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| LaunchSpecError::Read {
                    what: "from standard input".into(),
                    source,
                })?;
        } else {
            text = std::fs::read_to_string(path).map_err(|source| LaunchSpecError::Read {
                what: path.display().to_string(),
                source,
            })?;
        }
        Self::parse(&text)
    }

    /// The document as JSON.
    pub fn to_json(&self) -> String {
        // Plain fields: serializing into a String cannot fail.
        serde_json::to_string_pretty(self).expect("a launch spec serializes")
    }

    /// Checks what serde cannot: required combinations and limits.
    pub fn validate(&self) -> Result<(), LaunchSpecError> {
        if self.listening_file.is_some() && self.incoming.is_none() {
            return Err(LaunchSpecError::Needs("listening_file", "incoming"));
        }
        if self.dest_dir.is_some() && self.incoming.is_none() {
            return Err(LaunchSpecError::Needs("dest_dir", "incoming"));
        }
        if self.restore.is_some() {
            let conflicts = [
                (self.guest.is_some(), "guest"),
                (!self.disks.is_empty(), "disks"),
                (!self.scsi.is_empty(), "scsi"),
                (self.vsock.is_some(), "vsock"),
                (self.incoming.is_some(), "incoming"),
                (self.memory_file.is_some(), "memory_file"),
            ];
            if let Some((_, what)) = conflicts.iter().find(|(set, _)| *set) {
                return Err(LaunchSpecError::Conflict("restore", what));
            }
            return Ok(());
        }
        if self.guest.is_none() {
            return Err(LaunchSpecError::NoGuest);
        }
        if self.vcpus == 0 {
            return Err(LaunchSpecError::NoVcpus);
        }
        if self.memory < 1 << 20 {
            return Err(LaunchSpecError::TooLittleMemory(self.memory));
        }
        let numbers = ScsiLunSpec::numbers(&self.scsi);
        for (i, (l, &n)) in self.scsi.iter().zip(&numbers).enumerate() {
            if n > 0x3FFF || numbers[..i].contains(&n) {
                return Err(LaunchSpecError::ScsiLun(n));
            }
            let has_path = l.path.as_ref().is_some_and(|p| !p.as_os_str().is_empty());
            if l.kind == ScsiLunKind::Disk && !has_path {
                return Err(LaunchSpecError::ScsiNoImage(n));
            }
            if l.shared && (l.kind == ScsiLunKind::Dvd || l.read_only) {
                return Err(LaunchSpecError::ScsiShared(n));
            }
        }
        if let Some(v) = &self.vsock {
            if v.cid <= 2 || v.cid >= u64::from(u32::MAX) {
                return Err(LaunchSpecError::VsockCid(v.cid));
            }
            if v.socket.as_os_str().is_empty() {
                return Err(LaunchSpecError::EmptyVsockSocket);
            }
        }
        for (index, d) in self.disks.iter().enumerate() {
            if d.path.as_os_str().is_empty() {
                return Err(LaunchSpecError::EmptyDiskPath(index));
            }
            if d.qos.max_iops != 0 && d.qos.min_iops > d.qos.max_iops {
                return Err(LaunchSpecError::Qos {
                    index,
                    min: d.qos.min_iops,
                    max: d.qos.max_iops,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod nic_tests {
    use super::*;

    #[test]
    fn nics_round_trip_and_older_documents_have_none() {
        let mut spec = LaunchSpec::new(
            1,
            DEFAULT_MEMORY,
            GuestSpec::Probe {
                workload: "net".into(),
                image: None,
            },
        );
        spec.nics = vec![
            NicSpec {
                tap: "tn0".into(),
                mac: Some("52:54:00:00:00:02".parse().unwrap()),
            },
            NicSpec {
                tap: "tn1".into(),
                mac: None,
            },
        ];
        let text = spec.to_json();
        assert!(text.contains(r#""52:54:00:00:00:02""#), "{text}");
        assert_eq!(LaunchSpec::parse(&text).unwrap(), spec);
        let old = LaunchSpec::parse(r#"{"version":1,"guest":{"kind":"probe","workload":"hello"}}"#)
            .unwrap();
        assert!(old.nics.is_empty());
        for bad in [
            r#"{"version":1,"guest":{"kind":"probe","workload":"net"},"nics":[{"tap":"t","mac":"zz"}]}"#,
            r#"{"version":1,"guest":{"kind":"probe","workload":"net"},"nics":[{"tap":"t","speed":1}]}"#,
            r#"{"version":1,"guest":{"kind":"probe","workload":"net"},"nics":[{"mac":"52:54:00:00:00:02"}]}"#,
        ] {
            assert!(LaunchSpec::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod scsi_tests {
    use super::*;

    #[test]
    fn scsi_luns_round_trip_and_older_documents_have_none() {
        let mut spec = LaunchSpec::new(
            1,
            DEFAULT_MEMORY,
            GuestSpec::Probe {
                workload: "scsi-verify".into(),
                image: None,
            },
        );
        spec.scsi = vec![
            ScsiLunSpec {
                kind: ScsiLunKind::Disk,
                lun: None,
                path: Some("/d/a,b=c.vhdx".into()),
                format: Some(DiskFormat::Vhdx),
                read_only: false,
                shared: false,
            },
            ScsiLunSpec {
                kind: ScsiLunKind::Dvd,
                lun: Some(4),
                path: None,
                format: None,
                read_only: true,
                shared: false,
            },
            ScsiLunSpec {
                kind: ScsiLunKind::Disk,
                lun: None,
                path: Some("/d/shared.img".into()),
                format: None,
                read_only: false,
                shared: true,
            },
        ];
        spec.scsi_initiator = Some("node-a".into());
        let text = spec.to_json();
        assert!(text.contains(r#""kind": "dvd""#), "{text}");
        assert_eq!(LaunchSpec::parse(&text).unwrap(), spec);
        assert_eq!(ScsiLunSpec::numbers(&spec.scsi), vec![0, 4, 5]);
        let old = LaunchSpec::parse(r#"{"version":1,"guest":{"kind":"probe","workload":"hello"}}"#)
            .unwrap();
        assert!(old.scsi.is_empty());
        assert_eq!(old.scsi_initiator, None);
        for (bad, what) in [
            (r#"[{"kind":"disk"}]"#, "without a \"path\""),
            (r#"[{"kind":"tape","path":"/x"}]"#, "bad launch spec"),
            (
                r#"[{"kind":"disk","path":"/x","lun":1},{"kind":"dvd","lun":1}]"#,
                "twice",
            ),
            (
                r#"[{"kind":"disk","path":"/x","lun":16384}]"#,
                "above 16383",
            ),
            (
                r#"[{"kind":"dvd","shared":true}]"#,
                "only a read-write disk",
            ),
            (
                r#"[{"kind":"disk","path":"/x","size":1}]"#,
                "bad launch spec",
            ),
        ] {
            let doc = format!(
                r#"{{"version":1,"guest":{{"kind":"probe","workload":"hello"}},"scsi":{bad}}}"#
            );
            let e = LaunchSpec::parse(&doc).unwrap_err();
            assert!(e.to_string().contains(what), "{bad}: {e}");
        }
    }
}

/// The Secure Boot policy a direct-booted kernel is judged by: a built-in
/// `db` template plus `db` and `dbx` files (EFI_SIGNATURE_LISTs, or single
/// DER/PEM certificates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureBootSpec {
    /// The built-in `db` to start from.
    #[serde(default)]
    pub template: SecureBootTemplate,
    /// More `db` files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub db: Vec<PathBuf>,
    /// `dbx` files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dbx: Vec<PathBuf>,
}

/// The built-in `db` templates (tern-secureboot's `Template`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecureBootTemplate {
    /// Debian's Secure Boot CA.
    Debian,
    /// Microsoft's third-party UEFI CA 2011 (from OVMF's variable store).
    MicrosoftUefiCa,
    /// Nothing built in: the `db` files only.
    #[default]
    Custom,
}

#[cfg(test)]
mod secure_boot_tests {
    use super::*;

    #[test]
    fn secure_boot_round_trips_and_older_documents_have_none() {
        let mut spec = LaunchSpec::new(
            1,
            DEFAULT_MEMORY,
            GuestSpec::Linux {
                kernel: "/boot/vmlinuz".into(),
                initrd: None,
                cmdline: None,
            },
        );
        spec.secure_boot = Some(SecureBootSpec {
            template: SecureBootTemplate::MicrosoftUefiCa,
            db: vec!["db.esl".into()],
            dbx: vec!["dbx.esl".into()],
        });
        let text = spec.to_json();
        assert!(text.contains(r#""microsoft-uefi-ca""#), "{text}");
        assert_eq!(LaunchSpec::parse(&text).unwrap(), spec);
        let old =
            LaunchSpec::parse(r#"{"version":1,"guest":{"kind":"linux","kernel":"/k"}}"#).unwrap();
        assert_eq!(old.secure_boot, None);
        let only_template = LaunchSpec::parse(
            r#"{"version":1,"guest":{"kind":"linux","kernel":"/k"},"secure_boot":{"template":"debian"}}"#,
        )
        .unwrap();
        assert_eq!(
            only_template.secure_boot,
            Some(SecureBootSpec {
                template: SecureBootTemplate::Debian,
                db: vec![],
                dbx: vec![]
            })
        );
        for bad in [
            r#"{"version":1,"guest":{"kind":"linux","kernel":"/k"},"secure_boot":{"template":"windows"}}"#,
            r#"{"version":1,"guest":{"kind":"linux","kernel":"/k"},"secure_boot":{"kek":[]}}"#,
        ] {
            assert!(LaunchSpec::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod vsock_tests {
    use super::*;

    #[test]
    fn vsock_round_trips_and_older_documents_have_none() {
        let mut spec = LaunchSpec::new(
            1,
            DEFAULT_MEMORY,
            GuestSpec::Probe {
                workload: "vsock".into(),
                image: None,
            },
        );
        spec.vsock = Some(VsockSpec {
            cid: 3,
            socket: "/run/tern/v.sock".into(),
        });
        let text = spec.to_json();
        assert!(text.contains(r#""cid": 3"#), "{text}");
        assert_eq!(LaunchSpec::parse(&text).unwrap(), spec);
        let old = LaunchSpec::parse(r#"{"version":1,"guest":{"kind":"probe","workload":"hello"}}"#)
            .unwrap();
        assert_eq!(old.vsock, None);
        for bad in [
            r#"{"version":1,"guest":{"kind":"probe","workload":"x"},"vsock":{"cid":2,"socket":"s"}}"#,
            r#"{"version":1,"guest":{"kind":"probe","workload":"x"},"vsock":{"cid":3,"socket":""}}"#,
            r#"{"version":1,"guest":{"kind":"probe","workload":"x"},"vsock":{"cid":3}}"#,
            r#"{"version":1,"guest":{"kind":"probe","workload":"x"},"vsock":{"cid":3,"socket":"s","port":1}}"#,
            r#"{"version":1,"restore":{"dir":"d"},"vsock":{"cid":3,"socket":"s"}}"#,
        ] {
            assert!(LaunchSpec::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod boot_order_tests {
    use super::*;

    #[test]
    fn boot_orders_round_trip_and_bad_ones_are_refused() {
        let spec = LaunchSpec::new(
            1,
            512 << 20,
            GuestSpec::Boot {
                order: vec![BootDevice::Dvd { index: 0 }, BootDevice::Disk { index: 1 }],
            },
        );
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains(r#""guest":{"kind":"boot","order":[{"kind":"dvd","index":0},{"kind":"disk","index":1}]}"#), "{text}");
        assert_eq!(LaunchSpec::parse(&text).unwrap(), spec);
        assert_eq!(
            BootDevice::parse_order("dvd,disk:1").unwrap(),
            [BootDevice::Dvd { index: 0 }, BootDevice::Disk { index: 1 }]
        );
        for bad in ["", "floppy", "disk:x", "disk:-1", "dvd,"] {
            assert!(BootDevice::parse_order(bad).is_err(), "{bad}");
        }
        for bad in [
            r#"{"version":1,"guest":{"kind":"boot","order":[{"kind":"floppy","index":0}]}}"#,
            r#"{"version":1,"guest":{"kind":"boot","order":[{"kind":"disk"}]}}"#,
            r#"{"version":1,"guest":{"kind":"boot"}}"#,
        ] {
            assert!(LaunchSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
