//! The command line and the initrd: checking and placing them, and reading
//! back the command line a kernel printed.

use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;

use tern_probe_abi::MemRegion;
use vm_memory::{Bytes, GuestAddress};

use super::{LinuxError, CMDLINE_SPACE, PAGE};
use crate::memory::GuestMem;

/// The highest page-aligned address for `size` bytes of initrd inside one
/// of `regions`, not below `floor` and ending at or below `limit`.
pub fn place_initrd(regions: &[MemRegion], size: u64, floor: u64, limit: u64) -> Option<u64> {
    regions
        .iter()
        .filter_map(|r| {
            let top = r.start.checked_add(r.len)?.min(limit);
            let addr = top.checked_sub(size)? & !(PAGE - 1);
            (addr >= r.start && addr >= floor).then_some(addr)
        })
        .max()
}

/// Checks `cmdline` against the kernel's limit of `max` bytes (without the
/// terminating NUL) and returns the bytes to write, NUL included.
pub fn cmdline_bytes(cmdline: &str, max: u64) -> Result<Vec<u8>, LinuxError> {
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(LinuxError::CmdlineNul(at));
    }
    let max = max.min(CMDLINE_SPACE - 1);
    if cmdline.len() as u64 > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut v = Vec::with_capacity(cmdline.len() + 1);
    v.extend_from_slice(cmdline.as_bytes());
    v.push(0);
    Ok(v)
}

pub(super) fn load_initrd(
    mem: &GuestMem,
    regions: &[MemRegion],
    path: &Path,
    floor: u64,
    limit: u64,
) -> Result<MemRegion, LinuxError> {
    let mut file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => LinuxError::InitrdNotFound(path.to_path_buf()),
        _ => LinuxError::InitrdRead {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let size = file
        .metadata()
        .map_err(|source| LinuxError::InitrdRead {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if size == 0 {
        return Err(LinuxError::InitrdEmpty(path.to_path_buf()));
    }
    let addr = place_initrd(regions, size, floor, limit).ok_or(LinuxError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        floor,
        limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| LinuxError::InitrdLoad {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(MemRegion {
        start: addr,
        len: size,
    })
}

/// The command line a kernel printed (`Command line: ...`, from x86-64's
/// `setup_arch`), or `None` if the log has none yet.
///
/// Only complete lines count, so a line still being printed is not cut
/// short; the kernel's later "Kernel command line:" is not matched.
pub fn parse_cmdline_log(serial_text: &str) -> Option<&str> {
    const TAG: &str = "Command line: ";
    let mut rest = serial_text;
    while let Some(nl) = rest.find('\n') {
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        if let Some(at) = line.find(TAG) {
            let line = line.strip_suffix('\r').unwrap_or(line);
            return Some(&line[at + TAG.len()..]);
        }
    }
    None
}
