//! Export and import: a VM as a self-contained directory another host can
//! take in, with a manifest of SHA-256 checksums.
//!
//! ```text
//! EXPORT/manifest.json          format, writer, every file with size and SHA-256
//! EXPORT/vm/state.bin, memory.bin   the saved VM (disk paths ../disks/...)
//! EXPORT/disks/disk<i>.vhdx     each disk, differencing chains flattened
//! EXPORT/checkpoints/tree.bin   the checkpoint tree (disk paths relative)
//! EXPORT/checkpoints/<id>/...   each checkpoint's state and memory
//! EXPORT/checkpoints/disks/...  each checkpoint's disks, flattened
//! ```
//!
//! The export is written under a temporary name and renamed when complete,
//! the manifest last; import refuses a directory whose files are missing,
//! short, changed or not listed.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tern_block::DiskFormat;
use tern_vmm::Vm;

use crate::checkpoint::{Store, TREE_FILE};
use crate::file::{self, FileError};
use crate::proto::CheckpointTree;
use crate::saved::{self, SavedError};
use crate::staging::StagingError;

/// The manifest's name.
pub const MANIFEST: &str = "manifest.json";
/// The saved VM's folder.
pub const VM_DIR: &str = "vm";
/// The disks' folder.
pub const DISKS_DIR: &str = "disks";
/// The checkpoint store's folder.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Export format version this build writes and reads.
pub const EXPORT_FORMAT: u32 = 1;

/// One file of an export.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the export, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

/// The manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Export format version.
    pub format: u32,
    /// Who wrote it.
    pub writer: String,
    /// When, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Every file but the manifest.
    pub files: Vec<FileEntry>,
}

/// Errors exporting or importing.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// I/O.
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
    /// The target exists and is not empty.
    #[error("{}: already exists and is not empty (nothing was written)", .0.display())]
    Exists(PathBuf),
    /// Saving the VM.
    #[error(transparent)]
    Saved(#[from] SavedError),
    /// A state or tree file.
    #[error(transparent)]
    File(#[from] FileError),
    /// Flattening a disk.
    #[error("cannot copy disk {}", path.display())]
    Disk {
        /// The source image.
        path: PathBuf,
        /// Why.
        #[source]
        source: vhdx::Error,
    },
    /// No manifest: not an export, or an incomplete one.
    #[error("{}: no {MANIFEST}: not a Tern export, or an incomplete one", .0.display())]
    NoManifest(PathBuf),
    /// The manifest does not parse.
    #[error("{}: bad manifest", path.display())]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A newer export format.
    #[error("{}: export format {format} is newer than this Tern reads ({EXPORT_FORMAT})", path.display())]
    TooNew {
        /// The export.
        path: PathBuf,
        /// Its format.
        format: u32,
    },
    /// The manifest names an unsafe path.
    #[error("{}: manifest names an unsafe path {name:?}", dir.display())]
    UnsafePath {
        /// The export.
        dir: PathBuf,
        /// The path.
        name: String,
    },
    /// A listed file is missing.
    #[error("{}: {name} is missing (partial export?)", dir.display())]
    Missing {
        /// The export.
        dir: PathBuf,
        /// The file.
        name: String,
    },
    /// A listed file has the wrong size.
    #[error("{}: {name} has {have} bytes, the manifest says {want} (partial or altered export)", dir.display())]
    Size {
        /// The export.
        dir: PathBuf,
        /// The file.
        name: String,
        /// Its size.
        have: u64,
        /// The manifest's.
        want: u64,
    },
    /// A listed file's checksum differs.
    #[error("{}: {name} does not match its checksum (altered or damaged)", dir.display())]
    Checksum {
        /// The export.
        dir: PathBuf,
        /// The file.
        name: String,
    },
    /// A file not in the manifest.
    #[error("{}: {name} is not in the manifest (altered export)", dir.display())]
    Unlisted {
        /// The export.
        dir: PathBuf,
        /// The file.
        name: String,
    },
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> ExportError + 'a {
    move |source| ExportError::Io {
        path: path.into(),
        what,
        source,
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, ExportError> {
    let mut f = std::fs::File::open(path).map_err(io(path, "open"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path, "read"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Every file under `dir`, relative, `/`-separated, sorted.
fn walk(dir: &Path) -> Result<Vec<String>, ExportError> {
    fn go(root: &Path, d: &Path, out: &mut Vec<String>) -> Result<(), ExportError> {
        for e in std::fs::read_dir(d).map_err(io(d, "list"))? {
            let e = e.map_err(io(d, "list"))?;
            let p = e.path();
            if e.file_type().map_err(io(&p, "stat"))?.is_dir() {
                go(root, &p, out)?;
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                out.push(rel.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Copies a disk image of `format` (the format it is open with, never
/// guessed from its name): a VHDX (a differencing chain flattened) into a
/// new dynamic VHDX, a raw image as it is.
fn copy_disk(src: &Path, dst: &Path, format: DiskFormat) -> Result<(), ExportError> {
    if format == DiskFormat::Vhdx {
        vhdx::convert::convert(src, dst, vhdx::convert::Target::Dynamic, None).map_err(
            |source| ExportError::Disk {
                path: src.into(),
                source,
            },
        )?;
    } else {
        std::fs::copy(src, dst).map_err(io(src, "copy"))?;
    }
    Ok(())
}

/// The exported file's name: its extension says its format to readers
/// that go by name.
fn disk_name(index: usize, format: DiskFormat) -> String {
    match format {
        DiskFormat::Vhdx => format!("disk{index}.vhdx"),
        DiskFormat::Raw => format!("disk{index}.img"),
    }
}

fn create_tmp(dir: &Path) -> Result<(PathBuf, PathBuf), ExportError> {
    crate::staging::staging_dir(dir).map_err(|e| match e {
        StagingError::Exists => ExportError::Exists(dir.into()),
        StagingError::Create(tmp, source) => io(&tmp, "create")(source),
    })
}

/// Writes the manifest of everything in `tmp` and renames it to `dir`.
fn seal(tmp: &Path, parent: &Path, dir: &Path) -> Result<Manifest, ExportError> {
    let mut files = Vec::new();
    for rel in walk(tmp)? {
        let p = tmp.join(&rel);
        let size = std::fs::metadata(&p).map_err(io(&p, "stat"))?.len();
        files.push(FileEntry {
            sha256: sha256_file(&p)?,
            path: rel,
            size,
        });
    }
    let m = Manifest {
        format: EXPORT_FORMAT,
        writer: saved::writer(),
        created_unix_ms: saved::now_ms(),
        files,
    };
    let text = serde_json::to_vec_pretty(&m).expect("manifest serializes");
    file::write_atomic(&tmp.join(MANIFEST), &text)?;
    for rel in walk(tmp)? {
        let p = tmp.join(&rel);
        if let Ok(f) = std::fs::File::open(&p) {
            let _ = f.sync_all();
        }
    }
    std::fs::rename(tmp, dir).map_err(io(dir, "rename into place"))?;
    file::sync_dir(parent).map_err(io(parent, "sync"))?;
    Ok(m)
}

/// Exports the paused VM (and its checkpoints from `store`) into the new
/// directory `dir`.
pub fn export(vm: &Vm, dir: &Path, store: Option<&Store>) -> Result<Manifest, ExportError> {
    let (tmp, parent) = create_tmp(dir)?;
    let r = (|| {
        std::fs::create_dir_all(tmp.join(DISKS_DIR)).map_err(io(&tmp, "create"))?;
        let mut config = saved::config_to_proto(vm.config());
        for (i, d) in vm.disks().status().iter().enumerate() {
            let name = disk_name(i, d.format);
            copy_disk(&d.path, &tmp.join(DISKS_DIR).join(&name), d.format)?;
            if let Some(c) = config.disks.get_mut(i) {
                c.path = format!("../{DISKS_DIR}/{name}");
            }
        }
        saved::save_into_as(vm, &tmp.join(VM_DIR), true, config)?;
        if let Some(store) = store {
            export_checkpoints(store, &tmp.join(CHECKPOINTS_DIR))?;
        }
        seal(&tmp, &parent, dir)
    })();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

fn export_checkpoints(store: &Store, out: &Path) -> Result<(), ExportError> {
    let disks = out.join(crate::checkpoint::DISKS_DIR);
    std::fs::create_dir_all(&disks).map_err(io(out, "create"))?;
    let mut tree = CheckpointTree {
        current: store.current(),
        next_id: store.list().iter().map(|c| c.id).max().unwrap_or(0) + 1,
        ..Default::default()
    };
    for c in store.list() {
        let mut c = c.clone();
        let src = store.checkpoint_dir(c.id);
        let dst = out.join(c.id.to_string());
        std::fs::create_dir_all(&dst).map_err(io(&dst, "create"))?;
        for name in [saved::STATE_FILE, saved::MEMORY_FILE] {
            if src.join(name).exists() {
                std::fs::copy(src.join(name), dst.join(name)).map_err(io(&src, "copy"))?;
            }
        }
        for (i, d) in c.disks.iter_mut().enumerate() {
            let src = store.resolve(d);
            // Checkpoints hold only VHDX disks (`Store::create` refuses
            // others), whatever their files are named.
            let name = format!("c{}-{}", c.id, disk_name(i, DiskFormat::Vhdx));
            copy_disk(&src, &disks.join(&name), DiskFormat::Vhdx)?;
            *d = format!("{}/{name}", crate::checkpoint::DISKS_DIR);
        }
        tree.checkpoints.push(c);
    }
    file::write(&out.join(TREE_FILE), &tree)?;
    Ok(())
}

fn safe(name: &str) -> bool {
    !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Checks every file of an export against its manifest.
pub fn verify(dir: &Path) -> Result<Manifest, ExportError> {
    let mpath = dir.join(MANIFEST);
    if !mpath.is_file() {
        return Err(ExportError::NoManifest(dir.into()));
    }
    let text = std::fs::read(&mpath).map_err(io(&mpath, "read"))?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|source| ExportError::BadManifest {
        path: mpath.clone(),
        source,
    })?;
    if m.format > EXPORT_FORMAT {
        return Err(ExportError::TooNew {
            path: dir.into(),
            format: m.format,
        });
    }
    for f in &m.files {
        if !safe(&f.path) || f.path == MANIFEST {
            return Err(ExportError::UnsafePath {
                dir: dir.into(),
                name: f.path.clone(),
            });
        }
        let p = dir.join(&f.path);
        let have = match std::fs::metadata(&p) {
            Ok(md) if md.is_file() => md.len(),
            _ => {
                return Err(ExportError::Missing {
                    dir: dir.into(),
                    name: f.path.clone(),
                })
            }
        };
        if have != f.size {
            return Err(ExportError::Size {
                dir: dir.into(),
                name: f.path.clone(),
                have,
                want: f.size,
            });
        }
        if sha256_file(&p)? != f.sha256 {
            return Err(ExportError::Checksum {
                dir: dir.into(),
                name: f.path.clone(),
            });
        }
    }
    for rel in walk(dir)? {
        if rel != MANIFEST && !m.files.iter().any(|f| f.path == rel) {
            return Err(ExportError::Unlisted {
                dir: dir.into(),
                name: rel,
            });
        }
    }
    Ok(m)
}

/// Checks an export and copies it into the new directory `dest`, which
/// then holds the VM: restore it with `tern run --restore DEST` (and
/// `--checkpoint-dir DEST/checkpoints`). The export is not changed.
pub fn import(src: &Path, dest: &Path) -> Result<Manifest, ExportError> {
    let m = verify(src)?;
    let (tmp, parent) = create_tmp(dest)?;
    let r = (|| {
        for f in &m.files {
            let to = tmp.join(&f.path);
            if let Some(d) = to.parent() {
                std::fs::create_dir_all(d).map_err(io(d, "create"))?;
            }
            std::fs::copy(src.join(&f.path), &to).map_err(io(&to, "copy"))?;
            // The copy must be the file that was checked.
            if sha256_file(&to)? != f.sha256 {
                return Err(ExportError::Checksum {
                    dir: src.into(),
                    name: f.path.clone(),
                });
            }
        }
        std::fs::copy(src.join(MANIFEST), tmp.join(MANIFEST)).map_err(io(&tmp, "copy"))?;
        std::fs::rename(&tmp, dest).map_err(io(dest, "rename into place"))?;
        file::sync_dir(&parent).map_err(io(&parent, "sync"))?;
        Ok(m)
    })();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) {
        std::fs::create_dir_all(dir.join("vm")).unwrap();
        std::fs::write(dir.join("vm/state.bin"), b"state").unwrap();
        std::fs::write(dir.join("vm/memory.bin"), vec![7u8; 10000]).unwrap();
    }

    #[test]
    fn sealed_exports_verify_and_alterations_are_named() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("export");
        let (tmp, parent) = create_tmp(&out).unwrap();
        sample(&tmp);
        let m = seal(&tmp, &parent, &out).unwrap();
        assert_eq!(m.files.len(), 2);
        assert!(!tmp.exists());
        verify(&out).unwrap();

        // Import copies and checks.
        let dest = root.path().join("imported");
        import(&out, &dest).unwrap();
        verify(&dest).unwrap();

        // Truncated memory: partial.
        let mem = out.join("vm/memory.bin");
        std::fs::write(&mem, vec![7u8; 5000]).unwrap();
        let e = verify(&out).unwrap_err();
        assert!(e.to_string().contains("has 5000 bytes"), "{e}");
        // Same size, other bytes: tampered.
        let mut b = vec![7u8; 10000];
        b[9999] = 8;
        std::fs::write(&mem, &b).unwrap();
        let e = verify(&out).unwrap_err();
        assert!(e.to_string().contains("does not match its checksum"), "{e}");
        std::fs::write(&mem, vec![7u8; 10000]).unwrap();
        verify(&out).unwrap();
        // An added file.
        std::fs::write(out.join("vm/extra"), b"x").unwrap();
        let e = verify(&out).unwrap_err();
        assert!(e.to_string().contains("not in the manifest"), "{e}");
        std::fs::remove_file(out.join("vm/extra")).unwrap();
        // A missing file.
        std::fs::remove_file(out.join("vm/state.bin")).unwrap();
        let e = verify(&out).unwrap_err();
        assert!(e.to_string().contains("vm/state.bin is missing"), "{e}");
        // No manifest at all.
        std::fs::remove_file(out.join(MANIFEST)).unwrap();
        let e = verify(&out).unwrap_err();
        assert!(e.to_string().contains("no manifest.json"), "{e}");
        // Import into an existing non-empty directory is refused.
        let e = import(&dest, &dest).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
    }

    #[test]
    fn unsafe_manifest_paths_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let m = Manifest {
            format: 1,
            writer: "x".into(),
            created_unix_ms: 0,
            files: vec![FileEntry {
                path: "../etc/passwd".into(),
                size: 1,
                sha256: String::new(),
            }],
        };
        std::fs::write(root.path().join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = verify(root.path()).unwrap_err();
        assert!(e.to_string().contains("unsafe path"), "{e}");
    }
}
