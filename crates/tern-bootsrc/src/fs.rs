//! Reading files from the file systems boot loaders read: FAT (an EFI
//! System Partition), ext4 (`/boot`) and ISO 9660 (a DVD), each through a
//! [`Window`] onto the medium. Paths are absolute, `/`-separated; a file
//! larger than the caller's limit is refused before it is read.

use std::io::Read;

use std::sync::Arc;

use crate::medium::{Medium, Window};

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The file system cannot be opened (not that kind, or damaged).
    #[error("not a readable {kind} file system: {reason}")]
    Mount {
        /// FAT, ext4 or ISO 9660.
        kind: &'static str,
        /// What the reader said.
        reason: String,
    },
    /// No such file or directory.
    #[error("{0} not found")]
    NotFound(String),
    /// Reading failed.
    #[error("reading {path} failed: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What the reader said.
        reason: String,
    },
    /// The file is larger than the caller allows.
    #[error("{path} is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// A mounted, read-only file system.
pub trait Fs {
    /// FAT, ext4 or ISO 9660.
    fn kind(&self) -> &'static str;
    /// The whole file at `path`, if at most `limit` bytes.
    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, FsError>;
    /// The names of the regular files in directory `path` (empty when it
    /// does not exist).
    fn files(&self, path: &str) -> Vec<String>;
}

fn read_limited(r: impl Read, path: &str, size: u64, limit: u64) -> Result<Vec<u8>, FsError> {
    if size > limit {
        return Err(FsError::TooLarge {
            path: path.into(),
            size,
            limit,
        });
    }
    let mut out = Vec::with_capacity(size as usize);
    r.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| FsError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if out.len() as u64 > limit {
        return Err(FsError::TooLarge {
            path: path.into(),
            size: out.len() as u64,
            limit,
        });
    }
    Ok(out)
}

/// A FAT12/16/32 file system (names are case-insensitive).
pub struct Fat(fatfs::FileSystem<Window>);

impl Fat {
    /// Mounts the FAT at `[start, start + len)`.
    pub fn mount(m: Arc<dyn Medium>, start: u64, len: u64) -> Result<Fat, FsError> {
        let mount = |e: std::io::Error| FsError::Mount {
            kind: "FAT",
            reason: e.to_string(),
        };
        let w = Window::new(m, start, len).map_err(mount)?;
        fatfs::FileSystem::new(w, fatfs::FsOptions::new())
            .map(Fat)
            .map_err(mount)
    }

    /// The directory entry for `rel` (no leading `/`).
    fn entry(&self, rel: &str) -> Option<fatfs::DirEntry<'_, Window>> {
        let (dir, name) = match rel.rsplit_once('/') {
            Some((d, n)) => (self.0.root_dir().open_dir(d).ok()?, n),
            None => (self.0.root_dir(), rel),
        };
        dir.iter()
            .filter_map(Result::ok)
            .find(|e| e.is_file() && e.file_name().eq_ignore_ascii_case(name))
    }
}

impl Fs for Fat {
    fn kind(&self) -> &'static str {
        "FAT"
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, FsError> {
        let rel = path.trim_start_matches('/');
        let e = self
            .entry(rel)
            .ok_or_else(|| FsError::NotFound(path.into()))?;
        read_limited(e.to_file(), path, e.len(), limit)
    }

    fn files(&self, path: &str) -> Vec<String> {
        let rel = path.trim_matches('/');
        let dir = if rel.is_empty() {
            Ok(self.0.root_dir())
        } else {
            self.0.root_dir().open_dir(rel)
        };
        let Ok(dir) = dir else { return Vec::new() };
        dir.iter()
            .filter_map(Result::ok)
            .filter(|e| e.is_file())
            .map(|e| e.file_name())
            .collect()
    }
}

/// An ext2/3/4 file system.
pub struct Ext4(ext4_view::Ext4);

struct Ext4Reader(Window);

impl ext4_view::Ext4Read for Ext4Reader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0.read_exact_at(dst, start_byte).map_err(Into::into)
    }
}

impl Ext4 {
    /// Mounts the ext4 at `[start, start + len)`.
    pub fn mount(m: Arc<dyn Medium>, start: u64, len: u64) -> Result<Ext4, FsError> {
        let mount = |reason: String| FsError::Mount {
            kind: "ext4",
            reason,
        };
        let w = Window::new(m, start, len).map_err(|e| mount(e.to_string()))?;
        ext4_view::Ext4::load(Box::new(Ext4Reader(w)))
            .map(Ext4)
            .map_err(|e| mount(e.to_string()))
    }
}

impl Fs for Ext4 {
    fn kind(&self) -> &'static str {
        "ext4"
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, FsError> {
        let md = self
            .0
            .metadata(path)
            .map_err(|_| FsError::NotFound(path.into()))?;
        if md.len() > limit {
            return Err(FsError::TooLarge {
                path: path.into(),
                size: md.len(),
                limit,
            });
        }
        self.0.read(path).map_err(|e| match e {
            ext4_view::Ext4Error::NotFound => FsError::NotFound(path.into()),
            e => FsError::Read {
                path: path.into(),
                reason: e.to_string(),
            },
        })
    }

    fn files(&self, path: &str) -> Vec<String> {
        let Ok(dir) = self.0.read_dir(path) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_regular_file()))
            .map(|e| {
                e.file_name()
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_default()
            })
            .filter(|n| !n.is_empty())
            .collect()
    }
}

/// An ISO 9660 file system (Rock Ridge or Joliet names where present).
pub struct Iso(crate::iso9660::Iso);

impl Iso {
    /// Mounts the whole medium as ISO 9660.
    pub fn mount(m: Arc<dyn Medium>) -> Result<Iso, FsError> {
        crate::iso9660::Iso::open(m)
            .map(Iso)
            .map_err(|e| FsError::Mount {
                kind: "ISO 9660",
                reason: e.to_string(),
            })
    }
}

impl Fs for Iso {
    fn kind(&self) -> &'static str {
        "ISO 9660"
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, FsError> {
        let err = |e: crate::iso9660::IsoError| FsError::Read {
            path: path.into(),
            reason: e.to_string(),
        };
        match self.0.lookup(path).map_err(err)? {
            Some(n) if !n.dir => {
                if n.len > limit {
                    return Err(FsError::TooLarge {
                        path: path.into(),
                        size: n.len,
                        limit,
                    });
                }
                self.0.read(&n).map_err(err)
            }
            _ => Err(FsError::NotFound(path.into())),
        }
    }

    fn files(&self, path: &str) -> Vec<String> {
        match self.0.lookup(path) {
            Ok(Some(d)) if d.dir => self
                .0
                .list(&d, path)
                .map(|l| l.into_iter().filter(|n| !n.dir).map(|n| n.name).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}
