//! The tokio client, for daemons.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::client::{finish, line_of, ClientError};
use crate::hello::{Hello, HelloReply};
use crate::wire::Call;

/// How long a call waits unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A worker's control socket; each call opens a connection and is bounded
/// by a timeout (connect, send and reply together).
#[derive(Clone, Debug)]
pub struct AsyncClient {
    path: PathBuf,
    timeout: Duration,
}

impl AsyncClient {
    /// A client of the worker serving `path`, [`DEFAULT_TIMEOUT`] per call.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AsyncClient {
            path: path.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds each call by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The control socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `req` and returns its typed reply.
    pub async fn call<R: Call>(&self, req: R) -> Result<R::Reply, ClientError> {
        self.call_timeout(req, self.timeout).await
    }

    /// Sends `req`, waiting at most `timeout`.
    pub async fn call_timeout<R: Call>(
        &self,
        req: R,
        timeout: Duration,
    ) -> Result<R::Reply, ClientError> {
        let line = line_of(req.into());
        let exchange = async {
            let mut s =
                UnixStream::connect(&self.path)
                    .await
                    .map_err(|source| ClientError::Connect {
                        path: self.path.clone(),
                        source,
                    })?;
            s.write_all(line.as_bytes())
                .await
                .map_err(|e| ClientError::io(&self.path, None, true, e))?;
            let mut reply = String::new();
            BufReader::new(s)
                .read_line(&mut reply)
                .await
                .map_err(|e| ClientError::io(&self.path, None, false, e))?;
            finish(&self.path, &reply)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.path.clone(),
                timeout,
            })?
    }

    /// `hello`, refusing a worker of an unknown protocol version.
    pub async fn hello(&self) -> Result<HelloReply, ClientError> {
        let reply = self.call(Hello {}).await?;
        reply.check().map_err(ClientError::Version)?;
        Ok(reply)
    }
}
