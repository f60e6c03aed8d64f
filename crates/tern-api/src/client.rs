//! A client of the REST API over a UNIX socket or TCP with a bearer token.
//!
//! One HTTP/1.1 connection per request: the CLI makes few requests and a
//! fresh connection keeps failures independent.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

/// A WebSocket message of the console.
pub use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::types::*;

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A UNIX socket (no token needed).
    Unix(PathBuf),
    /// `HOST:PORT` over TCP; every request carries the token.
    Tcp {
        /// `HOST:PORT`.
        addr: String,
        /// The bearer token.
        token: Option<String>,
    },
}

impl Endpoint {
    /// Parses `unix:/path`, `/path`, or `http://HOST:PORT` (the token comes
    /// separately).
    pub fn parse(text: &str, token: Option<String>) -> Result<Endpoint, ClientError> {
        if let Some(p) = text.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(p.into()));
        }
        if text.starts_with('/') {
            return Ok(Endpoint::Unix(text.into()));
        }
        if let Some(rest) = text.strip_prefix("http://") {
            let addr = rest.trim_end_matches('/');
            if addr.is_empty() || addr.contains('/') {
                return Err(ClientError::BadEndpoint(text.into()));
            }
            return Ok(Endpoint::Tcp {
                addr: addr.into(),
                token,
            });
        }
        Err(ClientError::BadEndpoint(text.into()))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

/// The daemon's default state directory: `$TERN_STATE_DIR`, else
/// `/var/lib/tern` for root, else `$XDG_STATE_HOME/tern` or
/// `~/.local/state/tern`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TERN_STATE_DIR") {
        return d.into();
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if root {
        return "/var/lib/tern".into();
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("tern");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/state/tern"))
        .unwrap_or_else(|| "/tmp/tern".into())
}

/// The daemon's default UNIX socket: `ternd.sock` in the state directory.
pub fn default_socket() -> PathBuf {
    default_state_dir().join("ternd.sock")
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint text is not understood.
    #[error("bad daemon address '{0}': expected unix:/path or http://HOST:PORT")]
    BadEndpoint(String),
    /// The daemon cannot be reached.
    #[error("cannot reach the daemon at {endpoint}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with the daemon failed")]
    Http(#[source] hyper::Error),
    /// The WebSocket handshake or stream failed.
    #[error("console connection failed")]
    WebSocket(#[source] tokio_tungstenite::tungstenite::Error),
    /// No reply in time.
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    /// The daemon refused the request.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// `ApiError::code`.
        code: String,
        /// `ApiError::message`.
        message: String,
    },
    /// The reply is not what the API promises.
    #[error("unexpected reply from the daemon (HTTP {status}): {detail}")]
    Protocol {
        /// HTTP status.
        status: u16,
        /// What was wrong.
        detail: String,
    },
}

impl ClientError {
    /// The HTTP status of an API refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Protocol { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Either transport, for the WebSocket console.
pub enum Stream {
    /// UNIX socket.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Percent-encodes a path segment (names are restricted, ids are hex; this
/// only guards against odd user input).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A client of one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
}

impl Client {
    /// A client of `endpoint`; requests time out after 120 s.
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            timeout: Duration::from_secs(120),
        }
    }

    /// Changes the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The daemon's address.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&self) -> Result<Stream, ClientError> {
        let err = |source| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        };
        Ok(match &self.endpoint {
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p).await.map_err(err)?),
            Endpoint::Tcp { addr, .. } => {
                let s = TcpStream::connect(addr.as_str()).await.map_err(err)?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        })
    }

    fn host_header(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(_) => "localhost".into(),
            Endpoint::Tcp { addr, .. } => addr.clone(),
        }
    }

    fn token(&self) -> Option<&str> {
        match &self.endpoint {
            Endpoint::Tcp { token, .. } => token.as_deref(),
            Endpoint::Unix(_) => None,
        }
    }

    /// Sends one request with a raw body; returns the status and body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let fut = async {
            let stream = self.connect().await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(ClientError::Http)?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, self.host_header());
            if let Some(t) = self.token() {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            if body.is_some() {
                req = req.header(CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| ClientError::Protocol {
                    status: 0,
                    detail: format!("cannot build request for {path}: {e}"),
                })?;
            let resp = sender.send_request(req).await.map_err(ClientError::Http)?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(ClientError::Http)?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    /// Sends a request with an optional JSON body and decodes a JSON reply;
    /// an error status becomes [`ClientError::Api`].
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("API types serialize"));
        let (status, bytes) = self.raw(method, path, body).await?;
        decode(status, &bytes)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, body).await
    }

    async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let (status, bytes) = self.raw(Method::DELETE, path, None).await?;
        if status.is_success() {
            return Ok(());
        }
        decode::<serde_json::Value>(status, &bytes).map(|_| ())
    }

    /// `GET /v1/host`.
    pub async fn host(&self) -> Result<HostInfo, ClientError> {
        self.get("/v1/host").await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<crate::types::ClusterInfo, ClientError> {
        self.get("/v1/cluster").await
    }

    /// `GET /v1/cluster/nodes`.
    pub async fn cluster_nodes(&self) -> Result<Vec<crate::types::ClusterNode>, ClientError> {
        Ok(self
            .get::<crate::types::ClusterNodeList>("/v1/cluster/nodes")
            .await?
            .nodes)
    }

    /// `GET /v1/cluster/vms`.
    pub async fn cluster_vms(&self) -> Result<Vec<crate::types::ClusterVm>, ClientError> {
        Ok(self
            .get::<crate::types::ClusterVmList>("/v1/cluster/vms")
            .await?
            .vms)
    }

    /// `POST /v1/cluster/vms`.
    pub async fn add_cluster_vm(
        &self,
        req: &crate::types::AddClusterVm,
    ) -> Result<crate::types::ClusterVm, ClientError> {
        self.post("/v1/cluster/vms", Some(req)).await
    }

    /// `GET /v1/vms`.
    pub async fn list_vms(&self) -> Result<Vec<Vm>, ClientError> {
        Ok(self.get::<VmList>("/v1/vms").await?.vms)
    }

    /// `POST /v1/vms`.
    pub async fn create_vm(&self, spec: &CreateVm) -> Result<Vm, ClientError> {
        self.post("/v1/vms", Some(spec)).await
    }

    /// `GET /v1/vms/{vm}`.
    pub async fn get_vm(&self, vm: &str) -> Result<Vm, ClientError> {
        self.get(&format!("/v1/vms/{}", seg(vm))).await
    }

    /// `DELETE /v1/vms/{vm}`.
    pub async fn delete_vm(&self, vm: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/vms/{}", seg(vm))).await
    }

    /// `POST /v1/vms/{vm}/{action}` for start, stop, force-stop, pause,
    /// resume, save and restore.
    pub async fn vm_action(&self, vm: &str, action: &str) -> Result<Vm, ClientError> {
        self.post::<(), Vm>(&format!("/v1/vms/{}/{action}", seg(vm)), None)
            .await
    }

    /// `POST /v1/vms/{vm}/disks`.
    pub async fn attach_disk(&self, vm: &str, disk: &str) -> Result<Vm, ClientError> {
        self.post(
            &format!("/v1/vms/{}/disks", seg(vm)),
            Some(&AttachDisk { disk: disk.into() }),
        )
        .await
    }

    /// `DELETE /v1/vms/{vm}/disks/{disk}`.
    pub async fn detach_disk(&self, vm: &str, disk: &str) -> Result<Vm, ClientError> {
        self.call::<(), Vm>(
            Method::DELETE,
            &format!("/v1/vms/{}/disks/{}", seg(vm), seg(disk)),
            None,
        )
        .await
    }

    /// `GET /v1/vms/{vm}/checkpoints`.
    pub async fn list_checkpoints(&self, vm: &str) -> Result<Vec<Checkpoint>, ClientError> {
        Ok(self
            .get::<CheckpointList>(&format!("/v1/vms/{}/checkpoints", seg(vm)))
            .await?
            .checkpoints)
    }

    /// `POST /v1/vms/{vm}/checkpoints`.
    pub async fn create_checkpoint(&self, vm: &str, name: &str) -> Result<Checkpoint, ClientError> {
        self.post(
            &format!("/v1/vms/{}/checkpoints", seg(vm)),
            Some(&CreateCheckpoint { name: name.into() }),
        )
        .await
    }

    /// `DELETE /v1/vms/{vm}/checkpoints/{checkpoint}`.
    pub async fn delete_checkpoint(&self, vm: &str, cp: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/vms/{}/checkpoints/{}", seg(vm), seg(cp)))
            .await
    }

    /// `POST /v1/vms/{vm}/checkpoints/{checkpoint}/apply`.
    pub async fn apply_checkpoint(&self, vm: &str, cp: &str) -> Result<Vm, ClientError> {
        self.post::<(), Vm>(
            &format!("/v1/vms/{}/checkpoints/{}/apply", seg(vm), seg(cp)),
            None,
        )
        .await
    }

    /// `POST /v1/vms/{vm}/migrate`.
    pub async fn migrate(&self, vm: &str, req: &StartMigration) -> Result<Migration, ClientError> {
        self.post(&format!("/v1/vms/{}/migrate", seg(vm)), Some(req))
            .await
    }

    /// `POST /v1/migrations/incoming` (daemon to daemon).
    pub async fn incoming_migration(
        &self,
        req: &IncomingMigration,
    ) -> Result<IncomingReady, ClientError> {
        self.post("/v1/migrations/incoming", Some(req)).await
    }

    /// `GET /v1/migrations`.
    pub async fn list_migrations(&self) -> Result<Vec<Migration>, ClientError> {
        Ok(self
            .get::<MigrationList>("/v1/migrations")
            .await?
            .migrations)
    }

    /// `GET /v1/migrations/{id}`.
    pub async fn migration(&self, id: &str) -> Result<Migration, ClientError> {
        self.get(&format!("/v1/migrations/{}", seg(id))).await
    }

    /// `POST /v1/migrations/{id}/cancel`.
    pub async fn cancel_migration(&self, id: &str) -> Result<Migration, ClientError> {
        self.post::<(), Migration>(&format!("/v1/migrations/{}/cancel", seg(id)), None)
            .await
    }

    /// `POST /v1/vms/{vm}/disks/{disk}/move`.
    pub async fn move_disk(
        &self,
        vm: &str,
        disk: &str,
        req: &crate::MoveDisk,
    ) -> Result<crate::DiskMove, ClientError> {
        self.post(
            &format!("/v1/vms/{}/disks/{}/move", seg(vm), seg(disk)),
            Some(req),
        )
        .await
    }

    /// `GET /v1/vms/{vm}/disks/{disk}/move`.
    pub async fn disk_move(&self, vm: &str, disk: &str) -> Result<crate::DiskMove, ClientError> {
        self.get(&format!("/v1/vms/{}/disks/{}/move", seg(vm), seg(disk)))
            .await
    }

    /// `POST /v1/vms/{vm}/disks/{disk}/move/cancel`.
    pub async fn cancel_disk_move(
        &self,
        vm: &str,
        disk: &str,
    ) -> Result<crate::DiskMove, ClientError> {
        self.post::<(), crate::DiskMove>(
            &format!("/v1/vms/{}/disks/{}/move/cancel", seg(vm), seg(disk)),
            None,
        )
        .await
    }

    /// `GET /v1/disks`.
    pub async fn list_disks(&self) -> Result<Vec<Disk>, ClientError> {
        Ok(self.get::<DiskList>("/v1/disks").await?.disks)
    }

    /// `POST /v1/disks`.
    pub async fn create_disk(&self, spec: &CreateDisk) -> Result<Disk, ClientError> {
        self.post("/v1/disks", Some(spec)).await
    }

    /// `DELETE /v1/disks/{disk}`.
    pub async fn delete_disk(&self, disk: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/disks/{}", seg(disk))).await
    }

    /// `GET /v1/switches`.
    pub async fn list_switches(&self) -> Result<Vec<Switch>, ClientError> {
        Ok(self.get::<SwitchList>("/v1/switches").await?.switches)
    }

    /// `POST /v1/switches`.
    pub async fn create_switch(&self, spec: &CreateSwitch) -> Result<Switch, ClientError> {
        self.post("/v1/switches", Some(spec)).await
    }

    /// `GET /v1/switches/{switch}`.
    pub async fn get_switch(&self, switch: &str) -> Result<Switch, ClientError> {
        self.get(&format!("/v1/switches/{}", seg(switch))).await
    }

    /// `DELETE /v1/switches/{switch}`.
    pub async fn delete_switch(&self, switch: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/switches/{}", seg(switch))).await
    }

    /// `GET /v1/vms/{vm}/nics`.
    pub async fn list_nics(&self, vm: &str) -> Result<Vec<Nic>, ClientError> {
        Ok(self
            .get::<NicList>(&format!("/v1/vms/{}/nics", seg(vm)))
            .await?
            .nics)
    }

    /// `POST /v1/vms/{vm}/nics`.
    pub async fn add_nic(&self, vm: &str, nic: &CreateNic) -> Result<Nic, ClientError> {
        self.post(&format!("/v1/vms/{}/nics", seg(vm)), Some(nic))
            .await
    }

    /// `POST /v1/disks/{disk}/resize`.
    pub async fn resize_disk(&self, disk: &str, size: u64) -> Result<Disk, ClientError> {
        self.post(
            &format!("/v1/disks/{}/resize", seg(disk)),
            Some(&ResizeDisk { size: Size(size) }),
        )
        .await
    }

    /// `PUT /v1/disks/{disk}/qos`.
    pub async fn set_disk_qos(&self, disk: &str, qos: &DiskQos) -> Result<Disk, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/disks/{}/qos", seg(disk)),
            Some(qos),
        )
        .await
    }

    /// `GET /v1/events`.
    pub async fn events(
        &self,
        since: Option<i64>,
        vm: Option<&str>,
        wait_s: Option<u32>,
    ) -> Result<Vec<Event>, ClientError> {
        let mut q = Vec::new();
        if let Some(s) = since {
            q.push(format!("since={s}"));
        }
        if let Some(v) = vm {
            q.push(format!("vm={}", seg(v)));
        }
        if let Some(w) = wait_s {
            q.push(format!("wait={w}"));
        }
        let path = if q.is_empty() {
            "/v1/events".to_string()
        } else {
            format!("/v1/events?{}", q.join("&"))
        };
        Ok(self.get::<EventList>(&path).await?.events)
    }

    /// Opens the serial console of `vm` (WebSocket, binary frames both ways).
    pub async fn console(&self, vm: &str) -> Result<WebSocketStream<Stream>, ClientError> {
        let url = format!("ws://{}/v1/vms/{}/console", self.host_header(), seg(vm));
        let mut req = url.into_client_request().map_err(ClientError::WebSocket)?;
        if let Some(t) = self.token() {
            req.headers_mut().insert(
                AUTHORIZATION,
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::Protocol {
                        status: 0,
                        detail: "token is not a valid header value".into(),
                    })?,
            );
        }
        let stream = self.connect().await?;
        match tokio_tungstenite::client_async(req, stream).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status();
                let body = resp.body().clone().unwrap_or_default();
                Err(decode::<serde_json::Value>(status, &body).err().unwrap_or(
                    ClientError::Protocol {
                        status: status.as_u16(),
                        detail: "console refused".into(),
                    },
                ))
            }
            Err(e) => Err(ClientError::WebSocket(e)),
        }
    }
}

/// Decodes a reply: JSON `T` on success, [`ClientError::Api`] otherwise.
fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ApiError>(bytes) {
            Ok(e) => ClientError::Api {
                status: status.as_u16(),
                code: e.code,
                message: e.message,
            },
            Err(_) => ClientError::Protocol {
                status: status.as_u16(),
                detail: String::from_utf8_lossy(bytes).chars().take(200).collect(),
            },
        });
    }
    serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol {
        status: status.as_u16(),
        detail: format!("cannot decode reply: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("unix:/run/t.sock", None).unwrap(),
            Endpoint::Unix("/run/t.sock".into())
        );
        assert_eq!(
            Endpoint::parse("/run/t.sock", None).unwrap(),
            Endpoint::Unix("/run/t.sock".into())
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:7070/", Some("t".into())).unwrap(),
            Endpoint::Tcp {
                addr: "127.0.0.1:7070".into(),
                token: Some("t".into())
            }
        );
        assert!(Endpoint::parse("ftp://x", None).is_err());
        assert!(Endpoint::parse("http://", None).is_err());
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(seg("web-1.a_b"), "web-1.a_b");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn errors_decode_to_api_errors() {
        let e = decode::<Vm>(
            StatusCode::NOT_FOUND,
            br#"{"code":"not_found","message":"no VM named 'x'"}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), Some(404));
        assert_eq!(e.to_string(), "no VM named 'x'");
        let e = decode::<Vm>(StatusCode::BAD_GATEWAY, b"<html>").unwrap_err();
        assert!(matches!(e, ClientError::Protocol { status: 502, .. }));
    }
}
