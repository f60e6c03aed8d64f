//! The control socket: one JSON request per line, one JSON reply per line
//! (the encoding is `tern-worker-proto`'s), a thread per connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_worker_proto::wire::encode_reply;
use tern_worker_proto::Request;

use crate::Worker;

/// Errors starting the control server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bind failed.
    #[error("cannot listen on control socket {}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The serving control socket; removes the socket file when dropped.
pub struct Server {
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts serving `path` for `worker` on a background thread.
pub fn serve(path: &Path, worker: Arc<Worker>) -> Result<Server, ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: path.into(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another worker serves this socket",
            )));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let worker = worker.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || connection(stream, &worker));
            }
        })
        .map_err(bind_err)?;
    Ok(Server { path: path.into() })
}

fn connection(stream: UnixStream, worker: &Worker) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let handled = match Request::decode(&line) {
            Ok(req) => worker.handle(req),
            Err(e) => crate::handlers::Handled {
                line: encode_reply::<()>(&Err(e)),
                stop: false,
                migration_ended: None,
            },
        };
        // One write: a worker that exits right after must not leave a
        // client with half a line.
        let mut buf = handled.line;
        buf.push('\n');
        let written = out.write_all(buf.as_bytes()).is_ok();
        if let (true, Some(s)) = (written, &handled.migration_ended) {
            worker.migrations.status_delivered(s);
        }
        // Stop only once the reply is out: the worker exits right after.
        if handled.stop {
            worker.vm.request_stop();
        }
        if !written {
            return;
        }
    }
}
