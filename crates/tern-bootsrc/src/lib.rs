//! Boot sources: what a firmware's boot loader would load from a disk or
//! a DVD, found by Tern itself so it can direct-boot it (no firmware runs
//! in guests on hosts without guest ring 0; docs/boot-sources.md).
//!
//! A disk is searched partition by partition (GPT): each EFI System
//! Partition and XBOOTLDR partition (FAT) for unified kernel images in
//! `/EFI/Linux/*.efi`, then Boot Loader Specification entries in
//! `/loader/entries/*.conf`; then each Linux partition (ext4) for
//! `/boot/grub/grub.cfg`, `/grub/grub.cfg` (a separate `/boot`) and BLS
//! entries. A DVD (ISO 9660) is searched for `/boot/grub/grub.cfg`, then
//! `isolinux.cfg`/`syslinux.cfg`. Within a configuration its default entry
//! is tried first, then the others in menu order; the first entry whose
//! kernel (and initrds) can be read is the result. When nothing boots the
//! error lists every place tried and why it failed.
//!
//! Every byte of the image is untrusted: partition tables are checked by
//! their CRCs, file sizes against [`Limits`], includes against a depth
//! limit; a damaged image is an error, never a panic.

pub mod bls;
pub mod config;
pub mod fs;
pub mod gpt;
pub mod grub;
pub mod iso9660;
pub mod medium;
pub mod syslinux;
pub mod uki;

use std::sync::Arc;

use crate::config::Entry;
use crate::fs::{Fs, FsError};
pub use crate::medium::Medium;

/// Bounds on what is read from an image.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest kernel, initrd or UKI (bytes); also bounds their sum.
    pub max_boot_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_boot_bytes: 1 << 30,
        }
    }
}

/// Largest configuration file read.
const MAX_CONFIG: u64 = 1 << 20;

/// What was found: a kernel to direct-boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootImage {
    /// The kernel (bzImage, or the ELF vmlinux some images carry).
    pub kernel: Vec<u8>,
    /// The initrds, concatenated (empty: none).
    pub initrd: Vec<u8>,
    /// The command line.
    pub cmdline: String,
    /// The PE image a UEFI firmware would verify before running it: the
    /// UKI for a unified image, else the kernel itself.
    pub signed_image: Vec<u8>,
    /// Where it came from, for logs: `partition 1 (FAT), /loader/entries/x.conf`.
    pub source: String,
}

/// Why nothing could be booted.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The disk's partition table cannot be read.
    #[error("no usable partition table")]
    PartitionTable(#[source] gpt::GptError),
    /// Every place was tried; none yields a kernel.
    #[error("no bootable kernel found; tried: {}", .tried.join("; "))]
    NothingBootable {
        /// Each place and why it failed.
        tried: Vec<String>,
    },
}

/// Finds what boots from a disk image (GPT).
pub fn from_disk(m: Arc<dyn Medium>, limits: Limits) -> Result<BootImage, BootError> {
    let parts = gpt::partitions(m.as_ref()).map_err(BootError::PartitionTable)?;
    let mut tried = Vec::new();
    let fat_first = parts
        .iter()
        .filter(|p| p.type_guid == gpt::types::ESP || p.type_guid == gpt::types::XBOOTLDR);
    for p in fat_first {
        let place = format!("partition {} (FAT)", p.number);
        match fs::Fat::mount(m.clone(), p.start, p.len) {
            Ok(f) => {
                if let Some(b) = search_esp(&f, &place, limits, &mut tried) {
                    return Ok(b);
                }
            }
            Err(e) => tried.push(format!("{place}: {e}")),
        }
    }
    let linux = parts.iter().filter(|p| {
        p.type_guid == gpt::types::LINUX_FS || p.type_guid == gpt::types::LINUX_ROOT_X86_64
    });
    for p in linux {
        let place = format!("partition {} (ext4)", p.number);
        match fs::Ext4::mount(m.clone(), p.start, p.len) {
            Ok(f) => {
                for cfg in ["/boot/grub/grub.cfg", "/grub/grub.cfg"] {
                    if let Some(b) = try_config(&GRUB, &f, &place, cfg, limits, &mut tried) {
                        return Ok(b);
                    }
                }
                for dir in ["/boot/loader", "/loader"] {
                    if let Some(b) = try_bls(&f, &place, dir, limits, &mut tried) {
                        return Ok(b);
                    }
                }
            }
            Err(e) => tried.push(format!("{place}: {e}")),
        }
    }
    if tried.is_empty() {
        tried.push("no EFI System, XBOOTLDR or Linux partition".into());
    }
    Err(BootError::NothingBootable { tried })
}

/// Finds what boots from a DVD image (ISO 9660).
pub fn from_dvd(m: Arc<dyn Medium>, limits: Limits) -> Result<BootImage, BootError> {
    let mut tried = Vec::new();
    let place = "ISO 9660".to_string();
    match fs::Iso::mount(m) {
        Ok(f) => {
            if let Some(b) =
                try_config(&GRUB, &f, &place, "/boot/grub/grub.cfg", limits, &mut tried)
            {
                return Ok(b);
            }
            for cfg in [
                "/isolinux/isolinux.cfg",
                "/boot/isolinux/isolinux.cfg",
                "/isolinux.cfg",
                "/syslinux/syslinux.cfg",
                "/boot/syslinux/syslinux.cfg",
                "/syslinux.cfg",
            ] {
                if let Some(b) = try_config(&SYSLINUX, &f, &place, cfg, limits, &mut tried) {
                    return Ok(b);
                }
            }
        }
        Err(e) => tried.push(format!("{place}: {e}")),
    }
    Err(BootError::NothingBootable { tried })
}

fn search_esp(
    f: &dyn Fs,
    place: &str,
    limits: Limits,
    tried: &mut Vec<String>,
) -> Option<BootImage> {
    let mut ukis: Vec<String> = f
        .files("/EFI/Linux")
        .into_iter()
        .filter(|n| n.to_ascii_lowercase().ends_with(".efi"))
        .collect();
    config::newest_first(&mut ukis);
    for name in ukis {
        let path = format!("/EFI/Linux/{name}");
        let got = f
            .read(&path, limits.max_boot_bytes)
            .map_err(|e| e.to_string())
            .and_then(|img| {
                let u = uki::parse(&img).map_err(|e| e.to_string())?;
                Ok(BootImage {
                    kernel: u.kernel,
                    initrd: u.initrd.unwrap_or_default(),
                    cmdline: u.cmdline.unwrap_or_default(),
                    signed_image: img,
                    source: format!("{place}, {path}"),
                })
            });
        match got {
            Ok(b) => return Some(b),
            Err(e) => tried.push(format!("{place}, {path}: {e}")),
        }
    }
    try_bls(f, place, "/loader", limits, tried)
}

fn try_bls(
    f: &dyn Fs,
    place: &str,
    dir: &str,
    limits: Limits,
    tried: &mut Vec<String>,
) -> Option<BootImage> {
    let entries_dir = format!("{dir}/entries");
    let names = f.files(&entries_dir);
    if names.is_empty() {
        return None;
    }
    let default = f
        .read(&format!("{dir}/loader.conf"), MAX_CONFIG)
        .ok()
        .and_then(|t| bls::default_pattern(&String::from_utf8_lossy(&t)));
    // BLS paths are relative to the partition's root whatever `dir` is.
    for name in bls::order(names, default.as_deref()) {
        let path = format!("{entries_dir}/{name}");
        let text = match f.read(&path, MAX_CONFIG) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) => {
                tried.push(format!("{place}, {e}"));
                continue;
            }
        };
        let Some(e) = bls::parse_entry(&text, &name) else {
            tried.push(format!("{place}, {path}: no linux line"));
            continue;
        };
        match load_entry(f, &e, limits) {
            Ok(b) => return Some(with_source(b, place, &path)),
            Err(err) => tried.push(format!("{place}, {path}: {err}")),
        }
    }
    None
}

/// How a boot loader's configuration is read: its entries in the order
/// to try (default first), and what to call an entry in errors.
struct Loader {
    entries: ReadEntries,
    noun: &'static str,
}

/// Parses a configuration's text (file name, include loader) into its
/// entries, default first.
type ReadEntries = fn(
    &str,
    &str,
    &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Vec<Entry>, config::ConfigError>;

const GRUB: Loader = Loader {
    entries: |text, cfg, load| {
        grub::parse(text, cfg, load).map(|g| g.ordered().into_iter().cloned().collect())
    },
    noun: "menu entry",
};

const SYSLINUX: Loader = Loader {
    entries: |text, cfg, load| syslinux::parse(text, cfg, load).map(|s| s.ordered()),
    noun: "label",
};

/// Reads configuration `cfg` with `loader` (includes through `f`) and
/// tries its entries.
fn try_config(
    loader: &Loader,
    f: &dyn Fs,
    place: &str,
    cfg: &str,
    limits: Limits,
    tried: &mut Vec<String>,
) -> Option<BootImage> {
    let text = read_config(f, cfg)?;
    let mut load = |p: &str| read_config(f, p);
    match (loader.entries)(&text, cfg, &mut load) {
        Ok(entries) => {
            if entries.is_empty() {
                tried.push(format!("{place}, {cfg}: no {} with a kernel", loader.noun));
            }
            try_entries(f, place, cfg, entries.into_iter(), limits, tried)
        }
        Err(e) => {
            tried.push(format!("{place}, {e}"));
            None
        }
    }
}

fn try_entries(
    f: &dyn Fs,
    place: &str,
    cfg: &str,
    entries: impl Iterator<Item = Entry>,
    limits: Limits,
    tried: &mut Vec<String>,
) -> Option<BootImage> {
    for e in entries {
        match load_entry(f, &e, limits) {
            Ok(b) => return Some(with_source(b, place, &format!("{cfg} entry '{}'", e.title))),
            Err(err) => tried.push(format!("{place}, {cfg} entry '{}': {err}", e.title)),
        }
    }
    None
}

fn read_config(f: &dyn Fs, path: &str) -> Option<String> {
    f.read(path, MAX_CONFIG)
        .ok()
        .map(|t| String::from_utf8_lossy(&t).into_owned())
}

fn with_source(mut b: BootImage, place: &str, what: &str) -> BootImage {
    b.source = format!("{place}, {what}");
    b
}

/// Reads an entry's kernel and initrds, within the limits.
fn load_entry(f: &dyn Fs, e: &Entry, limits: Limits) -> Result<BootImage, FsError> {
    let kernel = f.read(&e.linux, limits.max_boot_bytes)?;
    let mut initrd = Vec::new();
    for p in &e.initrds {
        let left = limits
            .max_boot_bytes
            .saturating_sub(kernel.len() as u64 + initrd.len() as u64);
        initrd.extend(f.read(p, left)?);
    }
    Ok(BootImage {
        signed_image: kernel.clone(),
        kernel,
        initrd,
        cmdline: e.options.clone(),
        source: String::new(),
    })
}
