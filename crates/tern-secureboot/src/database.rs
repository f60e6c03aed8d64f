//! A signature database (`db` or `dbx`) as Tern holds it: the entries of
//! one or more files, each remembering where it came from so that a
//! verdict can name the entry that decided.

use std::path::{Path, PathBuf};

use der::{Decode, DecodePem};
use x509_cert::Certificate;

use crate::guid::Guid;
use crate::siglist::{self, SigListError, SignatureData};

/// A database file Tern cannot use.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither a signature list nor a certificate.
    #[error("{path} is not an EFI_SIGNATURE_LIST file")]
    SigList {
        /// The file.
        path: PathBuf,
        /// What is wrong with it as a signature list.
        #[source]
        source: SigListError,
    },
    /// A PEM/DER certificate file that does not parse.
    #[error("{path} is not a valid X.509 certificate")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        #[source]
        source: der::Error,
    },
}

/// Where a database entry came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryOrigin {
    /// The file, or `template:NAME` for a built-in template.
    pub source: String,
    /// The list within the file (0-based).
    pub list: usize,
    /// The signature within the list (0-based).
    pub index: usize,
    /// SignatureOwner.
    pub owner: Guid,
}

impl std::fmt::Display for EntryOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} list {} entry {}", self.source, self.list, self.index)
    }
}

/// One entry, decoded for checking.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where it came from.
    pub origin: EntryOrigin,
    /// What it is.
    pub data: SignatureData,
    /// The certificate, when `data` is an X.509 entry that decodes
    /// (an undecodable one still matches by its bytes).
    pub cert: Option<Certificate>,
}

/// The owner GUID Tern writes for certificates a user gives as plain
/// certificate files (not signature lists): all zero, "no owner".
pub const NO_OWNER: Guid = Guid([0; 16]);

/// A `db` or `dbx`.
#[derive(Debug, Clone, Default)]
pub struct Database {
    /// Its entries, in the order given.
    pub entries: Vec<Entry>,
}

impl Database {
    /// Adds the entries of a signature list held in `bytes`, named `source`.
    pub fn add_siglist(&mut self, source: &str, bytes: &[u8]) -> Result<(), SigListError> {
        for e in siglist::parse(bytes)? {
            self.push(source, e.list, e.index, e.owner, e.data);
        }
        Ok(())
    }

    /// Adds one entry.
    pub fn push(
        &mut self,
        source: &str,
        list: usize,
        index: usize,
        owner: Guid,
        data: SignatureData,
    ) {
        let cert = match &data {
            SignatureData::X509(d) => Certificate::from_der(d).ok(),
            _ => None,
        };
        self.entries.push(Entry {
            origin: EntryOrigin {
                source: source.to_string(),
                list,
                index,
                owner,
            },
            data,
            cert,
        });
    }

    /// Adds a file: an EFI_SIGNATURE_LIST file (`.esl`, what `db`/`dbx`
    /// variables hold), or a single X.509 certificate in DER or PEM.
    pub fn add_file(&mut self, path: &Path) -> Result<(), DatabaseError> {
        let bytes = std::fs::read(path).map_err(|source| DatabaseError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path.display().to_string();
        if bytes.starts_with(b"-----BEGIN") {
            let cert =
                Certificate::from_pem(&bytes).map_err(|source| DatabaseError::Certificate {
                    path: path.to_path_buf(),
                    source,
                })?;
            let der = der::Encode::to_der(&cert).map_err(|source| DatabaseError::Certificate {
                path: path.to_path_buf(),
                source,
            })?;
            self.push(&name, 0, 0, NO_OWNER, SignatureData::X509(der));
            return Ok(());
        }
        // A DER certificate starts with SEQUENCE; a signature list with a
        // GUID, whose first byte is never 0x30 for the types UEFI defines
        // but may be for others: try the list first.
        match self.add_siglist(&name, &bytes) {
            Ok(()) => Ok(()),
            Err(list_err) if bytes.first() == Some(&0x30) => match Certificate::from_der(&bytes) {
                Ok(_) => {
                    self.push(&name, 0, 0, NO_OWNER, SignatureData::X509(bytes));
                    Ok(())
                }
                Err(_) => Err(DatabaseError::SigList {
                    path: path.to_path_buf(),
                    source: list_err,
                }),
            },
            Err(source) => Err(DatabaseError::SigList {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}
