//! The state file: a fixed header, then one protobuf message.
//!
//! ```text
//! offset size
//!      0    8  magic "TERNSAVE"
//!      8    4  format version of the writer (little-endian)
//!     12    4  oldest reader format version that may read it
//!     16    4  flags (none defined; a reader refuses bits it does not know)
//!     20    4  reserved, zero
//!     24    8  payload length in bytes
//!     32   32  SHA-256 of bytes 0..32 followed by the payload
//!     64    …  payload (prost message)
//! ```
//!
//! A reader refuses a file whose minimum reader version is above its own
//! format version; it reads a newer file whose minimum it meets, and then
//! reports the fields it did not know (see
//! [`tern_vmm::state::compat`]), refusing the file only when one of them
//! is listed as required in the payload.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tern_vmm::state::compat::{self, UnknownField};

/// The saved-state format version this build writes.
pub const FORMAT_VERSION: u32 = 1;
/// The oldest format version this build reads.
pub const OLDEST_READABLE: u32 = 1;
/// The oldest reader version this build's files need.
pub const MIN_READER_VERSION: u32 = 1;
/// File magic.
pub const MAGIC: &[u8; 8] = b"TERNSAVE";
/// Header size.
pub const HEADER_LEN: usize = 64;

/// Errors reading or writing a state file. Each says which file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
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
    /// Not a Tern state file.
    #[error("{}: not a Tern saved-state file (bad magic)", .0.display())]
    BadMagic(PathBuf),
    /// Shorter than its header says.
    #[error("{}: truncated: {have} bytes, the header says {need}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its size.
        have: u64,
        /// The size the header implies.
        need: u64,
    },
    /// Longer than its header says.
    #[error("{}: {extra} bytes after the payload", path.display())]
    Trailing {
        /// The file.
        path: PathBuf,
        /// Extra bytes.
        extra: u64,
    },
    /// The checksum does not match.
    #[error("{}: damaged (checksum mismatch)", .0.display())]
    Checksum(PathBuf),
    /// Written for readers newer than this one.
    #[error(
        "{}: written by saved-state format {writer}, which needs a reader of format {min_reader} or later; this Tern reads formats {OLDEST_READABLE} to {FORMAT_VERSION}",
        path.display()
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Writer's version.
        writer: u32,
        /// Minimum reader version.
        min_reader: u32,
    },
    /// Older than any format this build reads.
    #[error("{}: saved-state format {version} is no longer readable (oldest: {OLDEST_READABLE})", path.display())]
    TooOld {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// Unknown header flags.
    #[error("{}: unknown header flags {flags:#x} (from a newer writer)", path.display())]
    Flags {
        /// The file.
        path: PathBuf,
        /// The flags.
        flags: u32,
    },
    /// The payload does not decode.
    #[error("{}: bad payload", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: compat::CompatError,
    },
    /// Fields the writer marked as required are unknown to this reader.
    #[error(
        "{}: written by saved-state format {writer} with required fields this Tern (format {FORMAT_VERSION}) does not know: {}",
        path.display(),
        fields.join(", ")
    )]
    UnknownRequired {
        /// The file.
        path: PathBuf,
        /// Writer's version.
        writer: u32,
        /// Dotted field paths.
        fields: Vec<String>,
    },
}

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The writer's format version.
    pub version: u32,
    /// The oldest reader version that may read the file.
    pub min_reader: u32,
    /// Flags (none defined).
    pub flags: u32,
}

impl Default for Header {
    fn default() -> Self {
        Header {
            version: FORMAT_VERSION,
            min_reader: MIN_READER_VERSION,
            flags: 0,
        }
    }
}

/// Encodes a whole state file: header and payload.
pub fn encode(header: Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header.version.to_le_bytes());
    out.extend_from_slice(&header.min_reader.to_le_bytes());
    out.extend_from_slice(&header.flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let digest = Sha256::new()
        .chain_update(&out[..32])
        .chain_update(payload)
        .finalize();
    out.extend_from_slice(&digest);
    out.extend_from_slice(payload);
    out
}

/// Checks a whole file's bytes and returns its header and payload.
pub fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Header, &'a [u8]), FileError> {
    let path = || path.to_path_buf();
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(FileError::BadMagic(path()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(FileError::Truncated {
            path: path(),
            have: bytes.len() as u64,
            need: HEADER_LEN as u64,
        });
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let header = Header {
        version: u32_at(8),
        min_reader: u32_at(12),
        flags: u32_at(16),
    };
    let len = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    let need = (HEADER_LEN as u64).saturating_add(len);
    let have = bytes.len() as u64;
    if have < need {
        return Err(FileError::Truncated {
            path: path(),
            have,
            need,
        });
    }
    if have > need {
        return Err(FileError::Trailing {
            path: path(),
            extra: have - need,
        });
    }
    let payload = &bytes[HEADER_LEN..];
    let digest = Sha256::new()
        .chain_update(&bytes[..32])
        .chain_update(payload)
        .finalize();
    if digest.as_slice() != &bytes[32..64] {
        return Err(FileError::Checksum(path()));
    }
    // Version checks come after the checksum: a damaged file must be
    // called damaged, not "too new".
    if header.min_reader > FORMAT_VERSION {
        return Err(FileError::TooNew {
            path: path(),
            writer: header.version,
            min_reader: header.min_reader,
        });
    }
    if header.version < OLDEST_READABLE {
        return Err(FileError::TooOld {
            path: path(),
            version: header.version,
        });
    }
    if header.flags != 0 {
        return Err(FileError::Flags {
            path: path(),
            flags: header.flags,
        });
    }
    Ok((header, payload))
}

/// A payload type that lists its required field paths.
pub trait Payload: prost::Message + Default {
    /// Dotted field paths the writer marked as required.
    fn required(&self) -> &[String];
}

impl Payload for crate::proto::Snapshot {
    fn required(&self) -> &[String] {
        &self.required
    }
}

impl Payload for crate::proto::CheckpointTree {
    fn required(&self) -> &[String] {
        &self.required
    }
}

/// A decoded file: the message, its header, the fields this build did not
/// know (none of them required).
#[derive(Debug)]
pub struct Read<M> {
    /// The message.
    pub message: M,
    /// The header.
    pub header: Header,
    /// Unknown optional fields (report them).
    pub unknown: Vec<UnknownField>,
}

/// Decodes a payload, refusing unknown required fields.
pub fn decode_payload<M: Payload>(
    path: &Path,
    header: Header,
    payload: &[u8],
) -> Result<Read<M>, FileError> {
    let (message, unknown) =
        compat::decode_checked::<M>(payload).map_err(|source| FileError::Decode {
            path: path.into(),
            source,
        })?;
    // A required path that is unknown itself, or lies inside an unknown
    // field, cannot be honoured.
    let required: Vec<String> = unknown
        .iter()
        .map(UnknownField::dotted)
        .filter(|u| {
            message
                .required()
                .iter()
                .any(|r| r == u || r.starts_with(&format!("{u}.")))
        })
        .collect();
    if !required.is_empty() {
        return Err(FileError::UnknownRequired {
            path: path.into(),
            writer: header.version,
            fields: required,
        });
    }
    Ok(Read {
        message,
        header,
        unknown,
    })
}

/// Reads and checks a state file.
pub fn read<M: Payload>(path: &Path) -> Result<Read<M>, FileError> {
    let bytes = std::fs::read(path).map_err(|source| FileError::Io {
        path: path.into(),
        what: "read",
        source,
    })?;
    let (header, payload) = decode(path, &bytes)?;
    decode_payload(path, header, payload)
}

/// Writes `bytes` to `path` durably: a temporary name in the same folder,
/// fsync, rename, fsync of the folder. An existing file is replaced whole
/// or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let io = |what| {
        move |source| FileError::Io {
            path: path.into(),
            what,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io("create"))?;
        f.write_all(bytes).map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
        std::fs::rename(&tmp, path).map_err(io("rename into place"))?;
        sync_dir(dir).map_err(io("sync its folder"))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Writes a message as a state file with this build's header.
pub fn write<M: prost::Message>(path: &Path, message: &M) -> Result<(), FileError> {
    write_atomic(path, &encode(Header::default(), &message.encode_to_vec()))
}

/// fsyncs a folder, so renames and new files in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Snapshot;
    use prost::Message;

    fn snap() -> Snapshot {
        Snapshot {
            writer: "tern test".into(),
            created_unix_ms: 5,
            state: Some(tern_vmm::VmState {
                clock: 9,
                probe: true,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.bin");
        write(&p, &snap()).unwrap();
        let r = read::<Snapshot>(&p).unwrap();
        assert_eq!(r.message, snap());
        assert_eq!(r.header, Header::default());
        assert!(r.unknown.is_empty());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damage_is_named() {
        let p = Path::new("x");
        let good = encode(Header::default(), &snap().encode_to_vec());
        let e = decode(p, &good[..good.len() - 1]).unwrap_err();
        assert!(matches!(e, FileError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = decode(p, &good[..40]).unwrap_err();
        assert!(matches!(e, FileError::Truncated { .. }), "{e}");
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(decode(p, &flipped), Err(FileError::Checksum(_))));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            decode(p, &longer),
            Err(FileError::Trailing { .. })
        ));
        assert!(matches!(decode(p, b"hello"), Err(FileError::BadMagic(_))));
        let flags = encode(
            Header {
                flags: 4,
                ..Header::default()
            },
            &[],
        );
        assert!(matches!(decode(p, &flags), Err(FileError::Flags { .. })));
    }

    #[test]
    fn newer_formats_are_read_when_allowed_and_refused_when_not() {
        let p = Path::new("x");
        let payload = snap().encode_to_vec();
        let newer_ok = encode(
            Header {
                version: FORMAT_VERSION + 1,
                ..Header::default()
            },
            &payload,
        );
        assert!(decode(p, &newer_ok).is_ok());
        let newer_required = encode(
            Header {
                version: FORMAT_VERSION + 3,
                min_reader: FORMAT_VERSION + 2,
                flags: 0,
            },
            &payload,
        );
        let e = decode(p, &newer_required).unwrap_err();
        assert!(matches!(e, FileError::TooNew { .. }), "{e}");
        assert!(e.to_string().contains("needs a reader of format 3"), "{e}");
    }

    /// A payload from a newer writer: `Snapshot` with an extra field 90
    /// and, inside the VM state, an extra field 60.
    fn newer_payload(required: &[&str]) -> Vec<u8> {
        let mut s = snap();
        s.required = required.iter().map(|r| r.to_string()).collect();
        let mut state = s.state.take().unwrap().encode_to_vec();
        state.extend([0xe0, 0x03, 0x01]); // field 60, varint 1
        let mut out = s.encode_to_vec();
        out.push(0x12); // field 2, length-delimited
        prost::encoding::encode_varint(state.len() as u64, &mut out);
        out.extend(state);
        out.extend([0xd0, 0x05, 0x07]); // field 90, varint 7
        out
    }

    #[test]
    fn unknown_fields_are_reported_and_required_ones_refused() {
        let p = Path::new("x");
        let h = Header {
            version: 2,
            ..Header::default()
        };
        let r = decode_payload::<Snapshot>(p, h, &newer_payload(&[])).unwrap();
        let mut got: Vec<String> = r.unknown.iter().map(|u| u.dotted()).collect();
        got.sort();
        assert_eq!(got, ["2.60", "90"]);
        assert_eq!(r.message.state.unwrap().clock, 9);
        let e = decode_payload::<Snapshot>(p, h, &newer_payload(&["2.60"])).unwrap_err();
        assert!(matches!(e, FileError::UnknownRequired { .. }), "{e}");
        assert!(e.to_string().contains("does not know: 2.60"), "{e}");
        // A required field nested inside an unknown one is refused too;
        // a required field this build knows is fine.
        let e = decode_payload::<Snapshot>(p, h, &newer_payload(&["90.1"])).unwrap_err();
        assert!(e.to_string().contains(": 90"), "{e}");
        assert!(decode_payload::<Snapshot>(p, h, &newer_payload(&["2.4"])).is_ok());
    }
}
