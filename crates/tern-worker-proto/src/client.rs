//! The blocking client (`std::os::unix::net`), for the CLI and tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{ErrorCode, WorkerError};
use crate::hello::{Hello, HelloReply, VersionError};
use crate::wire::{decode_reply, Call, ReplyError, Request};

/// A request that did not get its typed reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("cannot connect to worker {}", path.display())]
    Connect {
        /// The control socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing the request failed.
    #[error("worker {}: cannot send the request", path.display())]
    Send {
        /// The control socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading the reply failed.
    #[error("worker {}: cannot read the reply", path.display())]
    Receive {
        /// The control socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker closed the connection before replying.
    #[error("worker {} closed the connection without a reply", path.display())]
    Closed {
        /// The control socket.
        path: PathBuf,
    },
    /// No reply in time.
    #[error("worker {} did not answer within {timeout:?}", path.display())]
    Timeout {
        /// The control socket.
        path: PathBuf,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The reply is not of the expected type.
    #[error("worker {}", path.display())]
    BadReply {
        /// The control socket.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ReplyError,
    },
    /// The worker refused or failed the request.
    #[error(transparent)]
    Worker(WorkerError),
    /// The worker speaks a protocol version this client does not know.
    #[error(transparent)]
    Version(VersionError),
}

impl ClientError {
    /// The worker's refusal, when the request got one.
    pub fn worker_error(&self) -> Option<&WorkerError> {
        match self {
            ClientError::Worker(e) => Some(e),
            _ => None,
        }
    }

    /// The worker's error code, when the request got a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        self.worker_error().map(|e| e.code)
    }

    /// Whether the request failed on the way (no worker, no reply, a
    /// garbled reply) rather than being answered.
    pub fn is_transport(&self) -> bool {
        !matches!(self, ClientError::Worker(_) | ClientError::Version(_))
    }

    pub(crate) fn io(
        path: &Path,
        timeout: Option<Duration>,
        send: bool,
        e: std::io::Error,
    ) -> Self {
        let path = path.to_path_buf();
        match (e.kind(), timeout) {
            (std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut, Some(timeout)) => {
                ClientError::Timeout { path, timeout }
            }
            _ if send => ClientError::Send { path, source: e },
            _ => ClientError::Receive { path, source: e },
        }
    }
}

/// Turns a reply line into the typed reply.
pub(crate) fn finish<T: serde::de::DeserializeOwned>(
    path: &Path,
    line: &str,
) -> Result<T, ClientError> {
    if line.is_empty() {
        return Err(ClientError::Closed { path: path.into() });
    }
    match decode_reply::<T>(line) {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(refused)) => Err(ClientError::Worker(refused)),
        Err(source) => Err(ClientError::BadReply {
            path: path.into(),
            source,
        }),
    }
}

/// The request line, newline included.
pub(crate) fn line_of(req: Request) -> String {
    let mut line = req.encode();
    line.push('\n');
    line
}

/// A worker's control socket; each call opens a connection.
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    /// A client of the worker serving `path`; no timeout.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Client {
            path: path.into(),
            timeout: None,
        }
    }

    /// Waits at most `timeout` for each send and each reply.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The control socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a connection for several requests.
    pub fn connect(&self) -> Result<Connection, ClientError> {
        let stream = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        let set = stream
            .set_read_timeout(self.timeout)
            .and_then(|()| stream.set_write_timeout(self.timeout));
        let writer =
            set.and_then(|()| stream.try_clone())
                .map_err(|source| ClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        Ok(Connection {
            path: self.path.clone(),
            timeout: self.timeout,
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `req` on a new connection and returns its typed reply.
    pub fn call<R: Call>(&self, req: R) -> Result<R::Reply, ClientError> {
        self.connect()?.call(req)
    }

    /// `hello`, refusing a worker of an unknown protocol version.
    pub fn hello(&self) -> Result<HelloReply, ClientError> {
        let reply = self.call(Hello {})?;
        reply.check().map_err(ClientError::Version)?;
        Ok(reply)
    }
}

/// One open connection to a worker: requests are answered in order.
#[derive(Debug)]
pub struct Connection {
    path: PathBuf,
    timeout: Option<Duration>,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Connection {
    /// Sends `req` and returns its typed reply.
    pub fn call<R: Call>(&mut self, req: R) -> Result<R::Reply, ClientError> {
        let line = line_of(req.into());
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| ClientError::io(&self.path, self.timeout, true, e))?;
        let mut reply = String::new();
        self.reader
            .read_line(&mut reply)
            .map_err(|e| ClientError::io(&self.path, self.timeout, false, e))?;
        finish(&self.path, &reply)
    }
}
