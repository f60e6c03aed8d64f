//! Disk hand-over: storage is the last arbiter of "one copy, always". Beside
//! each disk image of a clustered VM lies `IMAGE.owner`, the fencing token of
//! the last owner that started the VM on it. A node about to start the VM
//! writes its own token there, under an exclusive lock of that file, and is
//! refused if the file already holds a newer one: a stale owner (say, a
//! daemon that slept through its lease) cannot start the VM over its
//! successor's disks, whatever it believes about etcd.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::wire::{self, TokenDoc};

/// Why a hand-over was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The token file could not be read or written.
    #[error("cannot use the token file {path}")]
    Io {
        /// The token file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds something else than a token document.
    #[error("token file {path} is not a fencing token document")]
    Bad {
        /// The token file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: crate::ClusterError,
    },
    /// A newer owner has started the VM on this image.
    #[error(
        "disk {image} was handed to node '{node}' with fencing token {held}; \
         token {offered} is older and is refused"
    )]
    Stale {
        /// The image.
        image: PathBuf,
        /// The token the file holds.
        held: i64,
        /// Who holds it.
        node: String,
        /// The token offered.
        offered: i64,
    },
}

/// The token file of `image`.
pub fn token_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".owner");
    PathBuf::from(name)
}

/// The token recorded beside `image`, if any.
pub fn recorded(image: &Path) -> Result<Option<TokenDoc>, FenceError> {
    let path = token_path(image);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FenceError::Io { path, source }),
    }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<TokenDoc, FenceError> {
    wire::decode(path.as_os_str().as_encoded_bytes(), bytes).map_err(|source| FenceError::Bad {
        path: path.to_owned(),
        source,
    })
}

/// Hands `image` to `node` with fencing `token`: records it beside the
/// image unless a newer token is there already ([`FenceError::Stale`]). The
/// same token again is accepted (the owner restarting its own VM).
pub fn hand_over(image: &Path, token: i64, node: &str) -> Result<(), FenceError> {
    let path = token_path(image);
    let io = |source| FenceError::Io {
        path: path.clone(),
        source,
    };
    let mut file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // Two nodes handing over at once are serialized here (flock, which
    // shared file systems such as NFSv4 carry to the server).
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(e.into()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    if !bytes.is_empty() {
        let held = decode(&path, &bytes)?;
        if held.token > token {
            return Err(FenceError::Stale {
                image: image.to_owned(),
                held: held.token,
                node: held.node,
                offered: token,
            });
        }
    }
    let doc = TokenDoc {
        version: wire::VERSION,
        token,
        node: node.to_owned(),
    };
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&wire::encode(&doc)).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_tokens_win_and_older_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("web.raw");
        std::fs::write(&image, b"").unwrap();
        assert!(recorded(&image).unwrap().is_none());
        hand_over(&image, 10, "n1").unwrap();
        hand_over(&image, 10, "n1").unwrap();
        hand_over(&image, 12, "n2").unwrap();
        match hand_over(&image, 11, "n1") {
            Err(FenceError::Stale {
                held,
                node,
                offered,
                ..
            }) => assert_eq!((held, node.as_str(), offered), (12, "n2", 11)),
            other => panic!("an older token was not refused: {other:?}"),
        }
        let now = recorded(&image).unwrap().unwrap();
        assert_eq!((now.token, now.node.as_str()), (12, "n2"));
        std::fs::write(token_path(&image), b"junk").unwrap();
        assert!(matches!(
            hand_over(&image, 13, "n1"),
            Err(FenceError::Bad { .. })
        ));
    }
}
