//! The REST API: the axum router, error replies, the JSON body extractor,
//! bearer-token authentication for TCP, the console WebSocket and events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use tern_api::{
    limits, ApiError, AttachDisk, CreateCheckpoint, CreateDisk, CreateVm, DiskList, DiskQos,
    EventList, ResizeDisk, StartMigration, VmList,
};

use crate::daemon::Daemon;
use crate::error::{chain, OpError};
use crate::registry::RegistryError;
use crate::storage_move::handlers as mv;
use crate::switches::handlers as sw;
use crate::worker::WorkerError;
use tern_worker_proto::ClientError;

type AppState = Arc<Daemon>;

/// An error reply.
pub struct ApiErr(pub StatusCode, pub &'static str, pub String);

impl ApiErr {
    fn bad(msg: impl Into<String>) -> ApiErr {
        ApiErr(StatusCode::BAD_REQUEST, "bad_request", msg.into())
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ApiError {
                code: self.1.into(),
                message: self.2,
            }),
        )
            .into_response()
    }
}

impl From<OpError> for ApiErr {
    fn from(e: OpError) -> ApiErr {
        let msg = chain(&e);
        let (status, code) = match &e {
            OpError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            OpError::Registry(r) => match r {
                RegistryError::NoVm(_) | RegistryError::NoDisk(_) | RegistryError::NoSwitch(_) => {
                    (StatusCode::NOT_FOUND, "not_found")
                }
                RegistryError::NameTaken { .. }
                | RegistryError::WrongState { .. }
                | RegistryError::DiskBusy(_)
                | RegistryError::SwitchBusy(_) => (StatusCode::CONFLICT, "conflict"),
                RegistryError::Db(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
            OpError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
            OpError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            OpError::Peer(_) => (StatusCode::BAD_GATEWAY, "peer"),
            OpError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            OpError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable"),
            // No control socket: the worker has just ended on its own (its
            // guest finished) and the registry has not caught up yet.
            OpError::Worker {
                source:
                    WorkerError::Call {
                        source: ClientError::Connect { source, .. },
                        ..
                    },
                ..
            } if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
            {
                (StatusCode::CONFLICT, "conflict")
            }
            OpError::Worker { .. } | OpError::Failed(_) | OpError::Io { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        // The registry's own error says only "registry database error"; the
        // chain carries the SQLite detail.
        let msg = if matches!(e, OpError::Registry(_)) && code != "internal" {
            e.to_string()
        } else {
            msg
        };
        ApiErr(status, code, msg)
    }
}

impl From<RegistryError> for ApiErr {
    fn from(e: RegistryError) -> ApiErr {
        OpError::from(e).into()
    }
}

type ApiResult<T> = Result<T, ApiErr>;

/// A JSON body whose every failure (not JSON, wrong fields, bad values) is a
/// 400 with serde's message.
pub struct Body<T>(pub T);

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiErr::bad(format!("cannot read the request body: {e}")))?;
        if bytes.len() > MAX_BODY {
            return Err(ApiErr::bad("request body too large (limit 1 MiB)"));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiErr::bad("a JSON body is required"));
        }
        // serde would also take a struct from a JSON array of its fields;
        // every body here is an object.
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiErr::bad(format!("invalid JSON body: {e}")))?;
        if !value.is_object() {
            return Err(ApiErr::bad("the JSON body must be an object"));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| ApiErr::bad(format!("invalid JSON body: {e}")))
    }
}

/// Routes and the (method, path) pairs they serve, recorded as they are
/// added so tests can compare them with the OpenAPI document.
pub struct Routes {
    router: Router<AppState>,
    ops: Vec<(String, String)>,
}

impl Routes {
    fn new() -> Routes {
        Routes {
            router: Router::new(),
            ops: Vec::new(),
        }
    }

    fn add(mut self, method: &str, path: &str, mr: MethodRouter<AppState>) -> Routes {
        self.ops.push((method.to_string(), path.to_string()));
        self.router = self.router.route(path, mr);
        self
    }
}

/// The routes of the API, without state; see [`router`].
pub fn routes() -> (Router<AppState>, Vec<(String, String)>) {
    let r = Routes::new()
        .add("GET", "/openapi.json", get(openapi_json))
        .add("GET", "/v1/host", get(host_info))
        .add("GET", "/v1/vms", get(list_vms))
        .add("POST", "/v1/vms", post(create_vm))
        .add("GET", "/v1/vms/{vm}", get(get_vm))
        .add("DELETE", "/v1/vms/{vm}", delete(delete_vm))
        .add("POST", "/v1/vms/{vm}/start", post(start_vm))
        .add("POST", "/v1/vms/{vm}/stop", post(stop_vm))
        .add("POST", "/v1/vms/{vm}/force-stop", post(force_stop_vm))
        .add("POST", "/v1/vms/{vm}/pause", post(pause_vm))
        .add("POST", "/v1/vms/{vm}/resume", post(resume_vm))
        .add("POST", "/v1/vms/{vm}/save", post(save_vm))
        .add("POST", "/v1/vms/{vm}/restore", post(restore_vm))
        .add("GET", "/v1/vms/{vm}/console", get(console))
        .add("POST", "/v1/vms/{vm}/disks", post(attach_disk))
        .add("DELETE", "/v1/vms/{vm}/disks/{disk}", delete(detach_disk))
        .add(
            "POST",
            "/v1/vms/{vm}/disks/{disk}/move",
            post(mv::move_disk),
        )
        .add(
            "GET",
            "/v1/vms/{vm}/disks/{disk}/move",
            get(mv::get_disk_move),
        )
        .add(
            "POST",
            "/v1/vms/{vm}/disks/{disk}/move/cancel",
            post(mv::cancel_disk_move),
        )
        .add("GET", "/v1/vms/{vm}/checkpoints", get(list_checkpoints))
        .add("POST", "/v1/vms/{vm}/checkpoints", post(create_checkpoint))
        .add(
            "DELETE",
            "/v1/vms/{vm}/checkpoints/{checkpoint}",
            delete(delete_checkpoint),
        )
        .add(
            "POST",
            "/v1/vms/{vm}/checkpoints/{checkpoint}/apply",
            post(apply_checkpoint),
        )
        .add("POST", "/v1/vms/{vm}/migrate", post(migrate_vm))
        .add("GET", "/v1/migrations", get(list_migrations))
        .add("POST", "/v1/migrations/incoming", post(incoming_migration))
        .add("GET", "/v1/migrations/{migration}", get(get_migration))
        .add(
            "POST",
            "/v1/migrations/{migration}/cancel",
            post(cancel_migration),
        )
        .add("GET", "/v1/disks", get(list_disks))
        .add("POST", "/v1/disks", post(create_disk))
        .add("GET", "/v1/disks/{disk}", get(get_disk))
        .add("DELETE", "/v1/disks/{disk}", delete(delete_disk))
        .add("POST", "/v1/disks/{disk}/resize", post(resize_disk))
        .add("PUT", "/v1/disks/{disk}/qos", put(set_disk_qos))
        .add("GET", "/v1/events", get(list_events))
        .add("GET", "/metrics", get(metrics))
        .add("GET", "/v1/cluster", get(crate::cluster::info))
        .add("GET", "/v1/cluster/nodes", get(crate::cluster::list_nodes))
        .add("GET", "/v1/cluster/vms", get(crate::cluster::list_vms))
        .add("POST", "/v1/cluster/vms", post(crate::cluster::add_vm))
        .add("GET", "/v1/switches", get(sw::list_switches))
        .add("POST", "/v1/switches", post(sw::create_switch))
        .add("GET", "/v1/switches/{switch}", get(sw::get_switch))
        .add("DELETE", "/v1/switches/{switch}", delete(sw::delete_switch))
        .add("GET", "/v1/vms/{vm}/nics", get(sw::list_nics))
        .add("POST", "/v1/vms/{vm}/nics", post(sw::add_nic));
    let mut ops = r.ops;
    ops.sort();
    ops.dedup();
    (r.router, ops)
}

/// The API routes over `daemon`, with the fallbacks.
fn api_router(daemon: Arc<Daemon>) -> Router {
    routes()
        .0
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(daemon)
}

/// The full API router over `daemon`, and the web page.
pub fn router(daemon: Arc<Daemon>) -> Router {
    crate::web::router().merge(api_router(daemon))
}

/// The router for TCP: every API request needs `Authorization: Bearer
/// TOKEN`; the web page (which asks for the token) does not.
pub fn router_with_token(daemon: Arc<Daemon>, token: String) -> Router {
    let token = Arc::new(token);
    let api = api_router(daemon).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let token = token.clone();
            async move { auth(&token, req, next).await }
        },
    ));
    crate::web::router().merge(api)
}

/// The WebSocket subprotocol of the console.
pub const CONSOLE_PROTOCOL: &str = "tern.console";

/// Prefix of the WebSocket subprotocol that carries the bearer token,
/// base64url-encoded without padding: a browser cannot set
/// `Authorization` on a WebSocket.
pub const BEARER_PROTOCOL_PREFIX: &str = "tern.bearer.";

/// The bearer token of a request: `Authorization: Bearer TOKEN`, or, on a
/// WebSocket upgrade only, a `tern.bearer.BASE64URL` subprotocol.
fn bearer(headers: &HeaderMap) -> Option<Vec<u8>> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        return v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.as_bytes().to_vec());
    }
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return None;
    }
    use base64::Engine as _;
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL_PREFIX))
        .and_then(|t| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
        })
}

async fn auth(token: &str, req: Request, next: Next) -> Response {
    let given = bearer(req.headers());
    match given.as_deref() {
        Some(t) if constant_time_eq(t, token.as_bytes()) => next.run(req).await,
        Some(_) => ApiErr(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid bearer token".into(),
        )
        .into_response(),
        None => {
            let mut r = ApiErr(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this endpoint needs Authorization: Bearer TOKEN (see ternd --token-file)".into(),
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            r
        }
    }
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn no_route(method: Method, uri: Uri) -> ApiErr {
    ApiErr(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiErr {
    ApiErr(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        tern_api::openapi::document(),
    )
        .into_response()
}

async fn metrics(State(d): State<AppState>) -> ApiResult<Response> {
    let text = crate::metrics::scrape(&d).await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

async fn host_info(State(d): State<AppState>) -> ApiResult<Json<tern_api::HostInfo>> {
    Ok(Json(d.host()?))
}

async fn list_vms(State(d): State<AppState>) -> ApiResult<Json<VmList>> {
    Ok(Json(VmList { vms: d.list()? }))
}

async fn create_vm(State(d): State<AppState>, Body(spec): Body<CreateVm>) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(d.create(&spec)?)).into_response())
}

async fn get_vm(
    State(d): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(d.get(&vm)?))
}

async fn delete_vm(State(d): State<AppState>, Path(vm): Path<String>) -> ApiResult<StatusCode> {
    d.delete(&vm).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start_vm(
    State(d): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(d.start(&vm).await?))
}

async fn stop_vm(
    State(d): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(d.stop(&vm).await?))
}

async fn force_stop_vm(
    State(d): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(d.force_stop(&vm).await?))
}

async fn pause_vm(
    State(d): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(d.pause_resume(&vm, true).await?))
}

async fn resume_vm(
    State(d): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(d.pause_resume(&vm, false).await?))
}

async fn save_vm(
    State(d): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(d.save(&vm).await?))
}

async fn restore_vm(
    State(d): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(d.restore(&vm).await?))
}

async fn console(
    State(d): State<AppState>,
    Path(vm): Path<String>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let hub = d.console(&vm)?;
    let ws = ws.map_err(|e| {
        ApiErr::bad(format!(
            "the console is a WebSocket: send an Upgrade: websocket request ({e})"
        ))
    })?;
    // Named only when the client offers it (the page does, with its token).
    let ws = ws.protocols([CONSOLE_PROTOCOL]);
    Ok(ws.on_upgrade(move |socket| bridge(socket, hub)))
}

/// Copies serial output to the WebSocket (recent output first) and the
/// WebSocket's data to the serial input, until either side ends.
async fn bridge(socket: WebSocket, hub: Arc<crate::worker::ConsoleHub>) {
    let (mut tx, mut rx) = socket.split();
    let (scrollback, mut out) = hub.subscribe();
    let closed = async {
        let mut c = hub.closed();
        let _ = c.wait_for(|c| *c).await.map(drop);
    };
    tokio::pin!(closed);
    if !scrollback.is_empty() && tx.send(Message::Binary(scrollback.into())).await.is_err() {
        return;
    }
    let writer = async {
        loop {
            tokio::select! {
                chunk = out.recv() => match chunk {
                    Ok(c) => {
                        if tx.send(Message::Binary(c.into())).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let note = format!("\r\n[tern: console lagged, {n} chunks dropped]\r\n");
                        if tx.send(Message::Binary(note.into_bytes().into())).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                },
                _ = &mut closed => break,
            }
        }
        // Output still queued before the close.
        while let Ok(c) = out.try_recv() {
            let _ = tx.send(Message::Binary(c.into())).await;
        }
        let _ = tx
            .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                code: 1000,
                reason: "the VM's worker ended".into(),
            })))
            .await;
    };
    let reader = async {
        while let Some(Ok(msg)) = rx.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            // A guest that does not read its serial port drops the input;
            // the console stays open.
            if let Err(e) = hub.input(&data).await {
                tracing::debug!("console input not taken: {e}");
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}

async fn attach_disk(
    State(d): State<AppState>,
    Path(vm): Path<String>,
    Body(req): Body<AttachDisk>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(crate::disks::attach(&d, &vm, &req.disk)?))
}

async fn detach_disk(
    State(d): State<AppState>,
    Path((vm, disk)): Path<(String, String)>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(crate::disks::detach(&d, &vm, &disk)?))
}

async fn list_checkpoints(
    State(d): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Json<tern_api::CheckpointList>> {
    Ok(Json(tern_api::CheckpointList {
        checkpoints: crate::checkpoints::list(&d, &vm).await?,
    }))
}

async fn create_checkpoint(
    State(d): State<AppState>,
    Path(vm): Path<String>,
    Body(req): Body<CreateCheckpoint>,
) -> ApiResult<Response> {
    let cp = crate::checkpoints::create(&d, &vm, &req.name).await?;
    Ok((StatusCode::CREATED, Json(cp)).into_response())
}

async fn delete_checkpoint(
    State(d): State<AppState>,
    Path((vm, cp)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    crate::checkpoints::delete(&d, &vm, &cp).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn apply_checkpoint(
    State(d): State<AppState>,
    Path((vm, cp)): Path<(String, String)>,
) -> ApiResult<Json<tern_api::Vm>> {
    Ok(Json(crate::checkpoints::apply(&d, &vm, &cp).await?))
}

async fn migrate_vm(
    State(d): State<AppState>,
    Path(vm): Path<String>,
    Body(req): Body<StartMigration>,
) -> ApiResult<Response> {
    let m = crate::migration::start(&d, &vm, &req).await?;
    Ok((StatusCode::ACCEPTED, Json(m)).into_response())
}

async fn incoming_migration(
    State(d): State<AppState>,
    Body(req): Body<tern_api::IncomingMigration>,
) -> ApiResult<Response> {
    let r = crate::migration::incoming(&d, &req).await?;
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

async fn list_migrations(State(d): State<AppState>) -> ApiResult<Json<tern_api::MigrationList>> {
    Ok(Json(tern_api::MigrationList {
        migrations: crate::migration::list(&d),
    }))
}

async fn get_migration(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<tern_api::Migration>> {
    Ok(Json(crate::migration::show(&d, &id)?))
}

async fn cancel_migration(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<tern_api::Migration>> {
    Ok(Json(crate::migration::cancel(&d, &id).await?))
}

async fn list_disks(State(d): State<AppState>) -> ApiResult<Json<DiskList>> {
    Ok(Json(DiskList {
        disks: d.reg.disks()?,
    }))
}

async fn create_disk(
    State(d): State<AppState>,
    Body(req): Body<CreateDisk>,
) -> ApiResult<Response> {
    let disk = crate::disks::create(&d, &req).await?;
    Ok((StatusCode::CREATED, Json(disk)).into_response())
}

async fn get_disk(
    State(d): State<AppState>,
    Path(disk): Path<String>,
) -> ApiResult<Json<tern_api::Disk>> {
    Ok(Json(d.reg.disk(&disk)?.0))
}

async fn delete_disk(State(d): State<AppState>, Path(disk): Path<String>) -> ApiResult<StatusCode> {
    crate::disks::delete(&d, &disk)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resize_disk(
    State(d): State<AppState>,
    Path(disk): Path<String>,
    Body(req): Body<ResizeDisk>,
) -> ApiResult<Json<tern_api::Disk>> {
    Ok(Json(crate::disks::resize(&d, &disk, req.size.0).await?))
}

async fn set_disk_qos(
    State(d): State<AppState>,
    Path(disk): Path<String>,
    Body(qos): Body<DiskQos>,
) -> ApiResult<Json<tern_api::Disk>> {
    Ok(Json(crate::disks::set_qos(&d, &disk, &qos).await?))
}

async fn list_events(
    State(d): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    _headers: HeaderMap,
) -> ApiResult<Json<EventList>> {
    let num = |k: &str| -> ApiResult<Option<i64>> {
        q.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiErr::bad(format!("invalid {k} '{v}': expected an integer")))
            })
            .transpose()
    };
    for k in q.keys() {
        if !["since", "vm", "wait", "limit"].contains(&k.as_str()) {
            return Err(ApiErr::bad(format!(
                "unknown query parameter '{k}' (expected since, vm, wait, limit)"
            )));
        }
    }
    // Out of range is refused rather than clamped, as the document says.
    let ranged = |k: &str, min: i64, max: i64, default: i64| -> ApiResult<i64> {
        match num(k)? {
            None => Ok(default),
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(v) => Err(ApiErr::bad(format!(
                "invalid {k} {v}: must be from {min} to {max}"
            ))),
        }
    };
    let since = ranged("since", 0, i64::MAX, 0)?;
    let wait = ranged("wait", 0, limits::MAX_EVENT_WAIT, 0)? as u64;
    let limit = ranged(
        "limit",
        1,
        limits::MAX_EVENT_LIMIT,
        limits::DEFAULT_EVENT_LIMIT,
    )? as u32;
    let vm_id = match q.get("vm") {
        // A deleted VM's events stay: match its id or its last name.
        Some(v) => Some(match d.reg.vm(v) {
            Ok(row) => row.id,
            Err(RegistryError::NoVm(_)) => d
                .reg
                .events(0, None, u32::MAX)?
                .into_iter()
                .rev()
                .find(|e| e.vm.as_deref() == Some(v) || e.vm_id.as_deref() == Some(v))
                .and_then(|e| e.vm_id)
                .ok_or_else(|| {
                    ApiErr(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        format!("no VM named '{v}'"),
                    )
                })?,
            Err(e) => return Err(e.into()),
        }),
        None => None,
    };
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let events = d.reg.events(since, vm_id.as_deref(), limit)?;
        if !events.is_empty() || Instant::now() >= deadline {
            return Ok(Json(EventList { events }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_token_comes_from_the_header_or_a_websocket_subprotocol() {
        let auth = headers(&[(header::AUTHORIZATION, "Bearer s3cret")]);
        assert_eq!(bearer(&auth).as_deref(), Some(&b"s3cret"[..]));
        // base64url("s3cret/+") without padding.
        let proto = "tern.console, tern.bearer.czNjcmV0Lys";
        let ws = headers(&[
            (header::UPGRADE, "websocket"),
            (header::SEC_WEBSOCKET_PROTOCOL, proto),
        ]);
        assert_eq!(bearer(&ws).as_deref(), Some(&b"s3cret/+"[..]));
        // Only on a WebSocket upgrade.
        let plain = headers(&[(header::SEC_WEBSOCKET_PROTOCOL, proto)]);
        assert_eq!(bearer(&plain), None);
        let garbled = headers(&[
            (header::UPGRADE, "websocket"),
            (header::SEC_WEBSOCKET_PROTOCOL, "tern.bearer.***"),
        ]);
        assert_eq!(bearer(&garbled), None);
    }
}
