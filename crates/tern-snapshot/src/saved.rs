//! A saved VM on disk: a directory with the state file and the memory
//! image, written atomically (a temporary sibling directory, fsync,
//! rename) and read without changing anything in it.
//!
//! ```text
//! DIR/state.bin   header + Snapshot (config, CPU and device state)
//! DIR/memory.bin  guest RAM, regions back to back, zero pages as holes
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tern_vmm::devices::{DiskConfig, QosLimits};
use tern_vmm::memory::GuestRam;
use tern_vmm::state::compat::UnknownField;
use tern_vmm::{Backing, Guest, MemorySource, Vm, VmConfig, VmError, VmState};
use vm_memory::{Bytes, GuestAddress};

use crate::file::{self, FileError};
use crate::proto;

/// The state file's name in a saved directory.
pub const STATE_FILE: &str = "state.bin";
/// The memory image's name in a saved directory.
pub const MEMORY_FILE: &str = "memory.bin";

const PAGE: usize = 4096;
const CHUNK: usize = 4 << 20;

/// Errors saving or loading a saved VM.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    /// The VM could not be captured.
    #[error("cannot capture the VM state")]
    Capture(#[source] VmError),
    /// The target exists and is not empty.
    #[error("{}: already exists and is not empty (nothing was written)", .0.display())]
    Exists(PathBuf),
    /// A file could not be written or read.
    #[error("{}: cannot {what}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was attempted.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory could not be read.
    #[error("cannot read guest memory at {0:#x}")]
    Memory(u64, #[source] vm_memory::GuestMemoryError),
    /// The state file.
    #[error(transparent)]
    File(#[from] FileError),
    /// A part of the saved VM is missing.
    #[error("{}: not a saved VM: {what}", dir.display())]
    Incomplete {
        /// The directory.
        dir: PathBuf,
        /// What is missing.
        what: String,
    },
    /// The memory image does not have the recorded size.
    #[error("{}: memory image has {have} bytes, the saved state needs exactly {need} (truncated or replaced)", path.display())]
    MemorySize {
        /// The image.
        path: PathBuf,
        /// Its size.
        have: u64,
        /// The size recorded.
        need: u64,
    },
    /// The recorded configuration is not usable.
    #[error("{}: bad configuration: {why}", dir.display())]
    BadConfig {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// What [`save`] wrote.
#[derive(Clone, Debug)]
pub struct SaveInfo {
    /// The saved directory.
    pub dir: PathBuf,
    /// Guest RAM size.
    pub memory: u64,
    /// Bytes of RAM actually written (non-zero pages).
    pub memory_written: u64,
    /// Size of the state file.
    pub state_bytes: u64,
    /// Seconds spent.
    pub seconds: f64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The writer string recorded in files.
pub fn writer() -> String {
    format!("tern {}", env!("CARGO_PKG_VERSION"))
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> SavedError + 'a {
    move |source| SavedError::Io {
        path: path.into(),
        what,
        source,
    }
}

/// The encoded twin of a VM's configuration.
pub fn config_to_proto(c: &VmConfig) -> proto::Config {
    let (probe, linux) = match &c.guest {
        Guest::Probe { image, workload } => (
            Some(proto::ProbeGuest {
                image: image.display().to_string(),
                workload: workload.clone(),
            }),
            None,
        ),
        Guest::Linux {
            kernel,
            initrd,
            cmdline,
        } => (
            None,
            Some(proto::LinuxGuest {
                kernel: kernel.display().to_string(),
                initrd: initrd
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                cmdline: cmdline.clone(),
            }),
        ),
    };
    proto::Config {
        vcpus: c.vcpus,
        memory: c.memory,
        memfd: c.backing == Backing::Memfd,
        probe,
        linux,
        disks: c
            .disks
            .iter()
            .map(|d| proto::Disk {
                path: std::path::absolute(&d.path)
                    .unwrap_or_else(|_| d.path.clone())
                    .display()
                    .to_string(),
                read_only: d.read_only,
                max_iops: d.qos.max_iops,
                min_iops: d.qos.min_iops,
                max_bw: d.qos.max_bw,
                poll: d.poll,
                format: d.format.map(|f| f.name().to_string()).unwrap_or_default(),
            })
            .collect(),
        nics: c
            .nics
            .iter()
            .map(|n| proto::Nic {
                tap: n.tap.clone(),
                mac: n.mac.map(|m| m.bytes().to_vec()).unwrap_or_default(),
            })
            .collect(),
        vsock: c.vsock.as_ref().map(|v| proto::Vsock {
            cid: v.cid,
            socket: std::path::absolute(&v.socket)
                .unwrap_or_else(|_| v.socket.clone())
                .display()
                .to_string(),
        }),
    }
}

/// Rebuilds a VM configuration; relative disk paths are taken from `base`.
pub fn config_from_proto(
    p: &proto::Config,
    dir: &Path,
    base: &Path,
) -> Result<VmConfig, SavedError> {
    let bad = |why: &str| SavedError::BadConfig {
        dir: dir.into(),
        why: why.into(),
    };
    let guest = match (&p.probe, &p.linux) {
        (Some(g), None) => Guest::Probe {
            image: g.image.clone().into(),
            workload: g.workload.clone(),
        },
        (None, Some(l)) => Guest::Linux {
            kernel: l.kernel.clone().into(),
            initrd: (!l.initrd.is_empty()).then(|| l.initrd.clone().into()),
            cmdline: l.cmdline.clone(),
        },
        _ => return Err(bad("exactly one of probe and linux guest must be set")),
    };
    if p.vcpus == 0 || p.memory == 0 {
        return Err(bad("no vCPUs or no memory"));
    }
    let mut c = VmConfig::new(p.vcpus, p.memory, guest);
    if p.memfd {
        c.backing = Backing::Memfd;
    }
    c.disks = p
        .disks
        .iter()
        .map(|d| {
            let format = match d.format.as_str() {
                "" => None,
                "raw" => Some(tern_block::DiskFormat::Raw),
                "vhdx" => Some(tern_block::DiskFormat::Vhdx),
                other => return Err(bad(&format!("disk {}: unknown format '{other}'", d.path))),
            };
            Ok(DiskConfig {
                path: base.join(&d.path),
                format,
                read_only: d.read_only,
                qos: QosLimits {
                    max_iops: d.max_iops,
                    min_iops: d.min_iops,
                    max_bw: d.max_bw,
                },
                poll: d.poll,
            })
        })
        .collect::<Result<_, _>>()?;
    c.nics = p
        .nics
        .iter()
        .map(|n| {
            let mac = match n.mac.len() {
                0 => None,
                6 => Some(tern_vmm::devices::nics::Mac(
                    n.mac.as_slice().try_into().expect("6 bytes"),
                )),
                len => return Err(bad(&format!("NIC {}: a MAC of {len} bytes", n.tap))),
            };
            Ok(tern_vmm::devices::nics::NicConfig {
                tap: n.tap.clone(),
                mac,
            })
        })
        .collect::<Result<_, _>>()?;
    c.vsock = match &p.vsock {
        None => None,
        Some(v) if v.socket.is_empty() => return Err(bad("vsock without a socket")),
        Some(v) => Some(tern_vmm::devices::vsock::VsockConfig {
            cid: v.cid,
            socket: v.socket.clone().into(),
        }),
    };
    Ok(c)
}

fn page_is_zero(p: &[u8]) -> bool {
    p.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

/// Writes guest RAM to `path` (regions back to back); zero pages are left
/// as holes. Returns the bytes written.
pub fn write_memory(ram: &GuestRam, path: &Path) -> Result<u64, SavedError> {
    let f = File::create(path).map_err(io_err(path, "create"))?;
    f.set_len(ram.size()).map_err(io_err(path, "size"))?;
    let mut buf = vec![0u8; CHUNK];
    let (mut file_off, mut written) = (0u64, 0u64);
    for r in &ram.regions {
        let mut done = 0u64;
        while done < r.len {
            let n = (r.len - done).min(CHUNK as u64) as usize;
            let at = r.start + done;
            ram.mem
                .read_slice(&mut buf[..n], GuestAddress(at))
                .map_err(|e| SavedError::Memory(at, e))?;
            // Write runs of non-zero pages.
            let mut p = 0;
            while p < n {
                if page_is_zero(&buf[p..p + PAGE]) {
                    p += PAGE;
                    continue;
                }
                let start = p;
                while p < n && !page_is_zero(&buf[p..p + PAGE]) {
                    p += PAGE;
                }
                f.write_all_at(&buf[start..p], file_off + done + start as u64)
                    .map_err(io_err(path, "write"))?;
                written += (p - start) as u64;
            }
            done += n as u64;
        }
        file_off += r.len;
    }
    f.sync_all().map_err(io_err(path, "sync"))?;
    Ok(written)
}

/// Builds the snapshot message for a paused VM.
pub fn snapshot_of(
    vm: &Vm,
    state: VmState,
    memory: bool,
    config: proto::Config,
) -> proto::Snapshot {
    proto::Snapshot {
        config: Some(config),
        state: Some(state),
        required: Vec::new(),
        memory: Some(proto::MemoryImage {
            file: if memory {
                MEMORY_FILE.into()
            } else {
                String::new()
            },
            size: vm.ram().size(),
            included: memory,
        }),
        created_unix_ms: now_ms(),
        writer: writer(),
    }
}

/// Writes the paused VM's state (and memory when `memory`) into the new
/// directory `dir`, all or nothing.
pub fn save_into(vm: &Vm, dir: &Path, memory: bool) -> Result<SaveInfo, SavedError> {
    let mut config = config_to_proto(vm.config());
    // After checkpoints the VM runs on other images than it was given.
    for (d, now) in config.disks.iter_mut().zip(vm.disks().status()) {
        d.path = std::path::absolute(&now.path)
            .unwrap_or(now.path)
            .display()
            .to_string();
    }
    save_into_as(vm, dir, memory, config)
}

/// [`save_into`] recording `config` (an export's, with relative disk
/// paths) instead of the VM's own.
pub fn save_into_as(
    vm: &Vm,
    dir: &Path,
    memory: bool,
    config: proto::Config,
) -> Result<SaveInfo, SavedError> {
    let t0 = Instant::now();
    let state = vm.save_state().map_err(SavedError::Capture)?;
    let (tmp, parent) = crate::staging::staging_dir(dir).map_err(|e| match e {
        crate::staging::StagingError::Exists => SavedError::Exists(dir.into()),
        crate::staging::StagingError::Create(tmp, source) => io_err(&tmp, "create")(source),
    })?;
    let r = (|| {
        let written = if memory {
            write_memory(vm.ram(), &tmp.join(MEMORY_FILE))?
        } else {
            0
        };
        let snap = snapshot_of(vm, state, memory, config);
        file::write(&tmp.join(STATE_FILE), &snap)?;
        let state_bytes = std::fs::metadata(tmp.join(STATE_FILE))
            .map(|m| m.len())
            .unwrap_or(0);
        file::sync_dir(&tmp).map_err(io_err(&tmp, "sync"))?;
        // rename(2) replaces an empty directory; a non-empty one (a race
        // with another writer) makes it fail, and nothing is lost.
        std::fs::rename(&tmp, dir).map_err(io_err(dir, "rename into place"))?;
        file::sync_dir(&parent).map_err(io_err(&parent, "sync"))?;
        Ok(SaveInfo {
            dir: dir.into(),
            memory: vm.ram().size(),
            memory_written: written,
            state_bytes,
            seconds: t0.elapsed().as_secs_f64(),
        })
    })();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

/// A saved VM read back, ready for [`Vm::restore`].
#[derive(Debug)]
pub struct Loaded {
    /// The configuration, memory from the saved image (`memory_source`).
    pub config: VmConfig,
    /// CPU and device state.
    pub state: VmState,
    /// Fields from a newer writer that this build ignored.
    pub unknown: Vec<UnknownField>,
    /// Who wrote it.
    pub writer: String,
    /// The saved-state format version it was written with.
    pub format: u32,
}

/// Reads and checks a saved directory; nothing in it is changed. Relative
/// disk paths are taken from `base` (the export directory), absolute ones
/// as they are.
pub fn load(dir: &Path, lazy: bool) -> Result<Loaded, SavedError> {
    load_with_base(dir, lazy, dir)
}

/// [`load`] with relative disk paths resolved against `base`.
pub fn load_with_base(dir: &Path, lazy: bool, base: &Path) -> Result<Loaded, SavedError> {
    let incomplete = |what: &str| SavedError::Incomplete {
        dir: dir.into(),
        what: what.into(),
    };
    let state_path = dir.join(STATE_FILE);
    if !state_path.is_file() {
        return Err(incomplete(&format!("no {STATE_FILE}")));
    }
    let read = file::read::<proto::Snapshot>(&state_path)?;
    let snap = read.message;
    let config = snap
        .config
        .as_ref()
        .ok_or_else(|| incomplete("the state file has no configuration"))?;
    let mut config = config_from_proto(config, dir, base)?;
    let state = snap
        .state
        .ok_or_else(|| incomplete("the state file has no VM state"))?;
    let mem = snap
        .memory
        .ok_or_else(|| incomplete("the state file describes no memory image"))?;
    if !mem.included {
        return Err(incomplete("it was saved without memory"));
    }
    if mem.file.contains('/') || mem.file.is_empty() {
        return Err(incomplete("bad memory image name"));
    }
    let mem_path = dir.join(&mem.file);
    let have = std::fs::metadata(&mem_path)
        .map_err(io_err(&mem_path, "open the memory image"))?
        .len();
    if have != mem.size || mem.size != config.memory {
        return Err(SavedError::MemorySize {
            path: mem_path,
            have,
            need: mem.size,
        });
    }
    config.memory_source = MemorySource::File {
        path: mem_path,
        lazy,
    };
    Ok(Loaded {
        config,
        state,
        unknown: read.unknown,
        writer: snap.writer,
        format: read.header.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips() {
        let mut c = VmConfig::new(
            2,
            64 << 20,
            Guest::Linux {
                kernel: "/k".into(),
                initrd: None,
                cmdline: "console=ttyS0".into(),
            },
        );
        c.disks = vec![DiskConfig {
            path: "/d/a.img".into(),
            format: Some(tern_block::DiskFormat::Vhdx),
            read_only: true,
            qos: QosLimits {
                max_iops: 5,
                min_iops: 1,
                max_bw: 0,
            },
            ..Default::default()
        }];
        use tern_vmm::devices::nics::{Mac, NicConfig};
        c.nics = vec![
            NicConfig {
                tap: "tn0".into(),
                mac: Some(Mac([0x52, 0x54, 0, 0, 0, 2])),
            },
            NicConfig::new("tn1"),
        ];
        c.vsock = Some(tern_vmm::devices::vsock::VsockConfig {
            cid: 7,
            socket: "/run/v.sock".into(),
        });
        let p = config_to_proto(&c);
        let back = config_from_proto(&p, Path::new("/s"), Path::new("/s")).unwrap();
        assert_eq!(back.vcpus, 2);
        assert_eq!(back.disks, c.disks);
        assert_eq!(back.nics, c.nics);
        assert_eq!(back.vsock, c.vsock);
        let mut no_socket = p.clone();
        no_socket.vsock.as_mut().unwrap().socket.clear();
        assert!(config_from_proto(&no_socket, Path::new("/s"), Path::new("/s")).is_err());
        let mut bad_mac = p.clone();
        bad_mac.nics[0].mac = vec![1, 2, 3];
        assert!(config_from_proto(&bad_mac, Path::new("/s"), Path::new("/s")).is_err());
        assert!(matches!(back.guest, Guest::Linux { initrd: None, .. }));
        let mut broken = p.clone();
        broken.probe = Some(proto::ProbeGuest::default());
        assert!(config_from_proto(&broken, Path::new("/s"), Path::new("/s")).is_err());
    }

    #[test]
    fn zero_pages_are_found() {
        let mut p = vec![0u8; PAGE];
        assert!(page_is_zero(&p));
        p[PAGE - 1] = 1;
        assert!(!page_is_zero(&p));
    }

    #[test]
    fn loading_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path(), true).unwrap_err();
        assert!(e.to_string().contains("no state.bin"), "{e}");
        let snap = proto::Snapshot {
            config: Some(config_to_proto(&VmConfig::new(
                1,
                1 << 20,
                Guest::Probe {
                    image: "p".into(),
                    workload: "hello".into(),
                },
            ))),
            state: Some(VmState::default()),
            memory: Some(proto::MemoryImage {
                file: MEMORY_FILE.into(),
                size: 1 << 20,
                included: true,
            }),
            ..Default::default()
        };
        file::write(&dir.path().join(STATE_FILE), &snap).unwrap();
        std::fs::write(dir.path().join(MEMORY_FILE), vec![0u8; 4096]).unwrap();
        let e = load(dir.path(), true).unwrap_err();
        assert!(
            e.to_string()
                .contains("memory image has 4096 bytes, the saved state needs exactly 1048576"),
            "{e}"
        );
        std::fs::write(dir.path().join(MEMORY_FILE), vec![0u8; 1 << 20]).unwrap();
        let l = load(dir.path(), false).unwrap();
        assert!(matches!(
            l.config.memory_source,
            MemorySource::File { lazy: false, .. }
        ));
    }
}
