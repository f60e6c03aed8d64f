//! What a worker waiting for an incoming migration tells its launcher:
//! the endpoint it listens on (with port 0 asked for, the port the kernel
//! gave). The worker writes it to [`LaunchSpec::listening_file`] once it
//! accepts connections; the launcher waits for the file and reads it
//! instead of scraping the worker's log.
//!
//! [`LaunchSpec::listening_file`]: crate::LaunchSpec::listening_file

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Endpoint;

/// Version of the [`Listening`] document this crate writes.
pub const LISTENING_VERSION: u32 = 1;

/// The document in the listening file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listening {
    /// [`LISTENING_VERSION`] when written by this crate.
    pub version: u32,
    /// Where a source connects.
    pub endpoint: Endpoint,
}

/// A listening file that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ListeningError {
    /// The file cannot be written or read.
    #[error("listening file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds something else.
    #[error("listening file {}: not a listening document", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Written by a newer worker.
    #[error("listening file {}: version {found}, this build reads {LISTENING_VERSION}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version it has.
        found: u32,
    },
}

impl Listening {
    /// A document for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Listening {
            version: LISTENING_VERSION,
            endpoint,
        }
    }

    /// Writes the document to `path` atomically (a temporary file renamed
    /// over it), so a reader never sees half of it.
    pub fn write(&self, path: &Path) -> Result<(), ListeningError> {
        let io = |source| ListeningError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_vec(self).expect("a listening document serializes");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads the document at `path`: `Ok(None)` while there is none yet.
    pub fn read(path: &Path) -> Result<Option<Self>, ListeningError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ListeningError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let doc: Listening =
            serde_json::from_slice(&text).map_err(|source| ListeningError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if doc.version > LISTENING_VERSION {
            return Err(ListeningError::Version {
                path: path.to_path_buf(),
                found: doc.version,
            });
        }
        Ok(Some(doc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.json");
        assert!(Listening::read(&path).unwrap().is_none());
        let doc = Listening::new(Endpoint::Tcp {
            host: "[::1]".into(),
            port: 4242,
        });
        doc.write(&path).unwrap();
        assert_eq!(Listening::read(&path).unwrap(), Some(doc));
        assert!(!dir.path().join("l.json.tmp").exists());
    }

    #[test]
    fn refuses_garbage_and_newer_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.json");
        std::fs::write(&path, b"tcp:1.2.3.4:5").unwrap();
        assert!(matches!(
            Listening::read(&path),
            Err(ListeningError::Parse { .. })
        ));
        std::fs::write(&path, br#"{"version":9,"endpoint":"unix:/x"}"#).unwrap();
        assert!(matches!(
            Listening::read(&path),
            Err(ListeningError::Version { found: 9, .. })
        ));
    }
}
