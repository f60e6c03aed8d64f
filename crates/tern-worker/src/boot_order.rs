//! Booting from the VM's own media (`GuestSpec::Boot`): each device in the
//! boot order is searched as a firmware's boot manager would
//! (tern-bootsrc), the kernel it yields is judged by Secure Boot when the
//! spec asks for it, and the first one that passes is direct-booted. What
//! was found goes into memory files (memfd) the kernel loader reads, so
//! nothing is written beside the images.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use tern_block::BlockBackend;
use tern_bootsrc::{BootImage, Limits, Medium};
use tern_worker_proto::launch::{BootDevice, GuestSpec, ScsiLunKind};
use tern_worker_proto::LaunchSpec;

use crate::exit_code;

/// A disk image through the block layer (raw or VHDX), read-only.
struct BlockMedium(Arc<dyn BlockBackend>);

impl Medium for BlockMedium {
    fn len(&self) -> u64 {
        self.0.capacity()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0
            .read_at(buf, offset)
            .map_err(|e| std::io::Error::other(crate::error_chain(&e)))
    }
}

/// The files a found boot image lives in while the VM is built.
pub struct BootFiles {
    _files: Vec<std::fs::File>,
}

/// A memory file holding `data`, and the path the loader opens it by.
fn memfile(name: &str, data: &[u8]) -> std::io::Result<(std::fs::File, PathBuf)> {
    let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it
    // returns a new descriptor this function then owns, or -1.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(data)?;
    Ok((f, PathBuf::from(format!("/proc/self/fd/{fd}"))))
}

/// Where device `d` of `spec` is, and whether it is a DVD.
fn device_image(spec: &LaunchSpec, d: BootDevice) -> Result<(PathBuf, bool), String> {
    match d {
        BootDevice::Disk { index } => spec
            .disks
            .get(index)
            .map(|disk| (disk.path.clone(), false))
            .ok_or_else(|| format!("the VM has {} disk(s)", spec.disks.len())),
        BootDevice::Dvd { index } => {
            let dvds: Vec<_> = spec
                .scsi
                .iter()
                .filter(|l| l.kind == ScsiLunKind::Dvd)
                .collect();
            let dvd = dvds
                .get(index)
                .ok_or_else(|| format!("the VM has {} DVD drive(s)", dvds.len()))?;
            dvd.path
                .clone()
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| (p, true))
                .ok_or_else(|| "the drive is empty".to_string())
        }
    }
}

fn describe(d: BootDevice) -> String {
    match d {
        BootDevice::Disk { index } => format!("disk {index}"),
        BootDevice::Dvd { index } => format!("dvd {index}"),
    }
}

/// Searches one device.
fn search(spec: &LaunchSpec, d: BootDevice, limits: Limits) -> Result<BootImage, String> {
    let (path, dvd) = device_image(spec, d)?;
    if dvd {
        let f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        return tern_bootsrc::from_dvd(Arc::new(f), limits).map_err(|e| crate::error_chain(&e));
    }
    let format = spec
        .disks
        .iter()
        .find(|x| x.path == path)
        .and_then(|x| x.format);
    let opts = tern_block::OpenOptions {
        format: format.map(crate::launch::block_format),
        ..tern_block::OpenOptions::new(&path).read_only(true)
    };
    let backend = tern_block::open(&opts).map_err(|e| crate::error_chain(&e))?;
    let found = tern_bootsrc::from_disk(Arc::new(BlockMedium(backend.clone())), limits)
        .map_err(|e| crate::error_chain(&e));
    let _ = backend.close();
    found
}

/// Turns a `Boot` guest into the `Linux` guest its first usable device
/// yields (other specs are returned as they are). Errors are printed;
/// the exit code says why nothing booted.
pub fn resolve(mut spec: LaunchSpec) -> Result<(LaunchSpec, Option<BootFiles>), i32> {
    let Some(GuestSpec::Boot { order }) = spec.guest.clone() else {
        return Ok((spec, None));
    };
    if spec.restore.is_some() || spec.incoming.is_some() {
        return Ok((spec, None));
    }
    let limits = Limits {
        max_boot_bytes: spec.memory,
    };
    for d in order.iter().copied() {
        let what = describe(d);
        let img = match search(&spec, d, limits) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("tern: boot: {what}: {e}; trying the next device");
                continue;
            }
        };
        let files = (|| -> std::io::Result<_> {
            let (kf, kernel) = memfile("tern-boot-kernel", &img.kernel)?;
            let (sf, signed) = memfile("tern-boot-signed", &img.signed_image)?;
            let mut files = vec![kf, sf];
            let initrd = if img.initrd.is_empty() {
                None
            } else {
                let (f, p) = memfile("tern-boot-initrd", &img.initrd)?;
                files.push(f);
                Some(p)
            };
            Ok((files, kernel, signed, initrd))
        })();
        let (files, kernel, signed, initrd) = match files {
            Ok(x) => x,
            Err(e) => {
                eprintln!("tern: error: boot: {what}: cannot hold the kernel in memory: {e}");
                return Err(exit_code::SOFTWARE);
            }
        };
        if let Some(sb) = &spec.secure_boot {
            if let Err(e) = crate::secure_boot::judge(sb, &signed) {
                eprintln!(
                    "tern: boot: {what}: {}: Secure Boot refused it: {}; trying the next device",
                    img.source,
                    crate::error_chain(&e)
                );
                continue;
            }
        }
        eprintln!(
            "tern: boot: {what}: {} ({} kernel bytes, {} initrd bytes)",
            img.source,
            img.kernel.len(),
            img.initrd.len()
        );
        spec.guest = Some(GuestSpec::Linux {
            kernel,
            initrd,
            cmdline: Some(img.cmdline),
        });
        // Judged above, on the image the firmware would have verified.
        spec.secure_boot = None;
        return Ok((spec, Some(BootFiles { _files: files })));
    }
    eprintln!(
        "tern: error: boot: no device in the boot order ({}) yields a kernel",
        order
            .iter()
            .map(|d| describe(*d))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Err(exit_code::DATA_ERR)
}
