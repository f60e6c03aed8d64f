//! The OpenAPI document of the REST API.
//!
//! Each operation is declared here, apart from the daemon's handlers, so that
//! the daemon's tests can check the document against what the router really
//! serves (every documented route exists, every route is documented) and a
//! committed copy (`crates/tern-api/openapi.json`) shows every change.

// The functions below only carry `#[utoipa::path]` attributes; the daemon
// implements the operations.
#![allow(dead_code)]

use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use crate::storage_move::{DiskMove, DiskMoveState, MoveDisk};
use crate::types::*;

/// The API document; `ApiDoc::openapi()` builds it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tern host daemon (ternd)",
        description = "Manage VMs, disks, checkpoints and migrations on one host. \
            Served on a UNIX socket without authentication (file permissions \
            guard it) and, when asked, on TCP where every request needs \
            `Authorization: Bearer TOKEN`. Errors are `ApiError` objects. \
            The daemon also serves a web page on this API at `/` (docs/web.md).",
        version = "1"
    ),
    paths(
        openapi_json,
        host_info,
        list_vms,
        create_vm,
        get_vm,
        delete_vm,
        start_vm,
        stop_vm,
        force_stop_vm,
        pause_vm,
        resume_vm,
        save_vm,
        restore_vm,
        console,
        attach_disk,
        detach_disk,
        move_disk,
        get_disk_move,
        cancel_disk_move,
        list_checkpoints,
        create_checkpoint,
        delete_checkpoint,
        apply_checkpoint,
        migrate_vm,
        list_migrations,
        incoming_migration,
        get_migration,
        cancel_migration,
        list_disks,
        create_disk,
        get_disk,
        delete_disk,
        resize_disk,
        set_disk_qos,
        list_events,
        metrics,
        cluster_info,
        cluster_nodes,
        list_cluster_vms,
        add_cluster_vm,
        list_switches,
        create_switch,
        get_switch,
        delete_switch,
        list_nics,
        add_nic,
    ),
    components(schemas(
        ApiError, VmState, CreateVm, Vm, VmList, Event, EventList, DiskFormat,
        CreateDisk, DiskQos, Disk, DiskList, ResizeDisk, AttachDisk, CreateCheckpoint,
        Checkpoint, CheckpointList, StartMigration, MigrationState, Migration,
        MigrationList, IncomingMigration, IncomingDisk, IncomingReady, Features, HostInfo,
        ClusterNodeState, ClusterNode, ClusterNodeList, ClusterInfo,
        ClusterPriority, AddClusterVm, ClusterVm, ClusterVmList,
        SwitchType, CreateSwitch, Switch, SwitchList, CreateNic, Nic, NicList,
        MoveDisk, DiskMoveState, DiskMove
    )),
    modifiers(&BearerAuth, &CommonResponses, &Links),
    tags(
        (name = "vms", description = "VM lifecycle"),
        (name = "disks", description = "Virtual disks"),
        (name = "checkpoints", description = "Checkpoints of a VM"),
        (name = "migration", description = "Live migration between hosts"),
        (name = "host", description = "The host and its events"),
        (name = "cluster", description = "The failover cluster this host is a node of"),
        (name = "switches", description = "Virtual switches and VMs' NICs"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![
            utoipa::openapi::security::SecurityRequirement::default(),
            utoipa::openapi::security::SecurityRequirement::new::<_, _, &str>("bearer", []),
        ]);
    }
}

/// Responses every operation can give: 401 on TCP without the right token,
/// 500 when the registry or a worker fails; and 400 for every operation
/// that takes a JSON body (malformed JSON, wrong fields, values out of
/// range).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let has_body = op.request_body.is_some();
                let r = &mut op.responses.responses;
                if has_body && !r.contains_key("400") {
                    r.insert(
                        "400".into(),
                        error("Malformed JSON, or a value the schema does not allow"),
                    );
                }
                r.entry("401".into()).or_insert_with(|| {
                    error("TCP only: no or a wrong `Authorization: Bearer TOKEN`")
                });
                r.entry("500".into())
                    .or_insert_with(|| error("The registry or a worker failed"));
            }
        }
    }
}

fn error(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiError")))
                    .build(),
            )
            .build(),
    )
}

/// An OpenAPI link: the reply of `from` with `status` names, at each JSON
/// pointer of `params`, the parameter of each operation in `to`.
struct LinkSpec {
    from: &'static str,
    status: &'static str,
    params: &'static [(&'static str, &'static str)],
    to: &'static [&'static str],
}

/// Links from the operations that create something to those that take its
/// id, so that stateful clients (and schemathesis) can follow them.
const LINKS: &[LinkSpec] = &[
    LinkSpec {
        from: "create_vm",
        status: "201",
        params: &[("vm", "/id")],
        to: &[
            "get_vm",
            "delete_vm",
            "start_vm",
            "stop_vm",
            "force_stop_vm",
            "pause_vm",
            "resume_vm",
            "save_vm",
            "restore_vm",
            "console",
            "attach_disk",
            "list_checkpoints",
            "create_checkpoint",
            "migrate_vm",
        ],
    },
    LinkSpec {
        from: "create_disk",
        status: "201",
        params: &[("disk", "/id")],
        to: &["get_disk", "delete_disk", "resize_disk", "set_disk_qos"],
    },
    LinkSpec {
        from: "move_disk",
        status: "202",
        params: &[("vm", "/vm"), ("disk", "/disk")],
        to: &["get_disk_move", "cancel_disk_move"],
    },
    LinkSpec {
        from: "migrate_vm",
        status: "202",
        params: &[("migration", "/id")],
        to: &["get_migration", "cancel_migration"],
    },
    LinkSpec {
        from: "incoming_migration",
        status: "201",
        params: &[("migration", "/migration/id")],
        to: &["get_migration", "cancel_migration"],
    },
    LinkSpec {
        from: "create_checkpoint",
        status: "201",
        params: &[("vm", "/vm"), ("checkpoint", "/id")],
        to: &["delete_checkpoint", "apply_checkpoint"],
    },
    LinkSpec {
        from: "attach_disk",
        status: "200",
        params: &[("vm", "/id"), ("disk", "/disks/0")],
        to: &["detach_disk"],
    },
];

struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut add = |from: &str, status: &str, to: &str, params: &[(&str, &str)]| {
            let mut link = LinkBuilder::new().operation_id(to);
            for (name, pointer) in params {
                link = link.parameter(*name, format!("$response.body#{pointer}"));
            }
            let op = operation_mut(openapi, from)
                .unwrap_or_else(|| panic!("link from unknown operation {from}"));
            match op.responses.responses.get_mut(status) {
                Some(RefOr::T(r)) => {
                    r.links.insert(to.to_string(), RefOr::T(link.build()));
                }
                _ => panic!("link from {from}: no inline {status} response"),
            }
        };
        for l in LINKS {
            for to in l.to {
                add(l.from, l.status, to, l.params);
            }
        }
    }
}

fn operation_mut<'a>(
    openapi: &'a mut utoipa::openapi::OpenApi,
    id: &str,
) -> Option<&'a mut utoipa::openapi::path::Operation> {
    openapi.paths.paths.values_mut().find_map(|item| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        .find(|op| op.operation_id.as_deref() == Some(id))
    })
}

/// The document as pretty JSON (what `/openapi.json` serves).
pub fn document() -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    camel_case_links(&mut doc);
    serde_json::to_string_pretty(&doc).expect("JSON values serialize")
}

/// utoipa 5.5 writes the fields of a Link Object in snake case
/// (`operation_id`); OpenAPI names them in camel case (`operationId`).
fn camel_case_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|r| r.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(v) = link.remove(snake) {
                link.insert(camel.into(), v);
            }
        }
    }
}

/// Every (method, path template) the document lists, sorted; methods in
/// upper case.
pub fn operations() -> Vec<(String, String)> {
    let doc = ApiDoc::openapi();
    let mut ops = Vec::new();
    for (path, item) in doc.paths.paths {
        let methods = [
            ("GET", item.get.is_some()),
            ("POST", item.post.is_some()),
            ("PUT", item.put.is_some()),
            ("PATCH", item.patch.is_some()),
            ("DELETE", item.delete.is_some()),
        ];
        for (m, present) in methods {
            if present {
                ops.push((m.to_string(), path.clone()));
            }
        }
    }
    ops.sort();
    ops
}

#[utoipa::path(get, path = "/openapi.json", tag = "host",
    responses((status = 200, description = "This document")))]
fn openapi_json() {}

#[utoipa::path(get, path = "/v1/host", tag = "host",
    responses((status = 200, body = HostInfo)))]
fn host_info() {}

#[utoipa::path(get, path = "/v1/vms", tag = "vms",
    responses((status = 200, body = VmList)))]
fn list_vms() {}

#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = CreateVm,
    responses(
        (status = 201, body = Vm, description = "Created (state `stopped`)"),
        (status = 400, body = ApiError, description = "Malformed JSON or invalid settings"),
        (status = 404, body = ApiError, description = "A named disk does not exist"),
        (status = 409, body = ApiError, description = "The name is taken or a disk is in use"),
    ))]
fn create_vm() {}

#[utoipa::path(get, path = "/v1/vms/{vm}", tag = "vms",
    params(("vm" = String, Path, description = "VM name or id")),
    responses((status = 200, body = Vm), (status = 404, body = ApiError)))]
fn get_vm() {}

#[utoipa::path(delete, path = "/v1/vms/{vm}", tag = "vms",
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 204, description = "Deleted; its disks are detached, not deleted"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "The VM has a worker: stop it first"),
    ))]
fn delete_vm() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/start", tag = "vms",
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 200, body = Vm, description = "The worker runs the guest (or ran it to its end \
            already: state `stopped`)"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Not stopped or failed"),
        (status = 500, body = ApiError, description = "The worker did not start; the VM is `failed`"),
    ))]
fn start_vm() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/stop", tag = "vms",
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 200, body = Vm, description = "Stopped: the worker has exited"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Not running or paused"),
    ))]
fn stop_vm() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/force-stop", tag = "vms",
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 200, body = Vm, description = "The worker was killed"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "No worker"),
    ))]
fn force_stop_vm() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/pause", tag = "vms",
    params(("vm" = String, Path, description = "VM name or id")),
    responses((status = 200, body = Vm), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Not running")))]
fn pause_vm() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/resume", tag = "vms",
    params(("vm" = String, Path, description = "VM name or id")),
    responses((status = 200, body = Vm), (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Not paused")))]
fn resume_vm() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/save", tag = "vms",
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 200, body = Vm, description = "Saved: state on disk, worker gone"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Not running or paused"),
        (status = 501, body = ApiError, description = "The worker cannot save state yet"),
    ))]
fn save_vm() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/restore", tag = "vms",
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 200, body = Vm, description = "Running again from the saved state"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Not saved"),
        (status = 501, body = ApiError, description = "The worker cannot restore state yet"),
    ))]
fn restore_vm() {}

#[utoipa::path(get, path = "/v1/vms/{vm}/console", tag = "vms",
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 101, description = "WebSocket: binary frames carry serial output \
            (recent output first) and keyboard input. On TCP a browser, which cannot \
            set `Authorization` on a WebSocket, may offer the subprotocols \
            `tern.console` and `tern.bearer.BASE64URL(TOKEN)` (no padding) instead; \
            the reply then names `tern.console`."),
        (status = 400, body = ApiError, description = "Not a WebSocket upgrade request"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "No worker"),
    ))]
fn console() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/disks", tag = "disks", request_body = AttachDisk,
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 200, body = Vm),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "The disk is in use, or the VM runs"),
    ))]
fn attach_disk() {}

#[utoipa::path(delete, path = "/v1/vms/{vm}/disks/{disk}", tag = "disks",
    params(("vm" = String, Path, description = "VM name or id"),
        ("disk" = String, Path, description = "Disk name or id")),
    responses(
        (status = 200, body = Vm),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "The VM runs"),
    ))]
fn detach_disk() {}

#[utoipa::path(get, path = "/v1/vms/{vm}/checkpoints", tag = "checkpoints",
    params(("vm" = String, Path, description = "VM name or id")),
    responses((status = 200, body = CheckpointList), (status = 404, body = ApiError)))]
fn list_checkpoints() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/checkpoints", tag = "checkpoints",
    request_body = CreateCheckpoint,
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 201, body = Checkpoint),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "The name is taken, or the VM's state does not allow it"),
        (status = 501, body = ApiError, description = "Checkpoints are not implemented yet"),
    ))]
fn create_checkpoint() {}

#[utoipa::path(delete, path = "/v1/vms/{vm}/checkpoints/{checkpoint}", tag = "checkpoints",
    params(("vm" = String, Path, description = "VM name or id"),
        ("checkpoint" = String, Path, description = "Checkpoint name or id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "The VM's state does not allow it"),
        (status = 501, body = ApiError, description = "Checkpoints are not implemented yet"),
    ))]
fn delete_checkpoint() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/checkpoints/{checkpoint}/apply", tag = "checkpoints",
    params(("vm" = String, Path, description = "VM name or id"),
        ("checkpoint" = String, Path, description = "Checkpoint name or id")),
    responses(
        (status = 200, body = Vm),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "The VM's state does not allow it"),
        (status = 501, body = ApiError, description = "Checkpoints are not implemented yet"),
    ))]
fn apply_checkpoint() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/disks/{disk}/move", tag = "disks",
    request_body = MoveDisk,
    params(("vm" = String, Path, description = "VM name or id"),
        ("disk" = String, Path, description = "Disk name or id (or its index in the VM's disk order)")),
    responses(
        (status = 202, body = DiskMove, description = "Started; the VM runs on; poll `GET .../move`"),
        (status = 400, body = ApiError, description = "Bad target directory, or a read-only disk"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Not running, checkpoints, a migration or another move runs, or the target exists"),
        (status = 501, body = ApiError, description = "The worker cannot move disks"),
    ))]
fn move_disk() {}

#[utoipa::path(get, path = "/v1/vms/{vm}/disks/{disk}/move", tag = "disks",
    params(("vm" = String, Path, description = "VM name or id"),
        ("disk" = String, Path, description = "Disk name or id (or its index in the VM's disk order)")),
    responses(
        (status = 200, body = DiskMove),
        (status = 404, body = ApiError, description = "No such VM or disk, or no move of this disk"),
    ))]
fn get_disk_move() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/disks/{disk}/move/cancel", tag = "disks",
    params(("vm" = String, Path, description = "VM name or id"),
        ("disk" = String, Path, description = "Disk name or id (or its index in the VM's disk order)")),
    responses(
        (status = 200, body = DiskMove, description = "Cancelling; the VM stays on the old image"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "No move of this disk runs"),
    ))]
fn cancel_disk_move() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/migrate", tag = "migration",
    request_body = StartMigration,
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 202, body = Migration, description = "Started; poll `/v1/migrations/{id}`"),
        (status = 400, body = ApiError),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Not running, or the VM has checkpoints"),
        (status = 501, body = ApiError, description = "The worker cannot migrate yet"),
        (status = 502, body = ApiError, description = "The destination daemon refused or cannot be reached"),
    ))]
fn migrate_vm() {}

#[utoipa::path(get, path = "/v1/migrations", tag = "migration",
    responses((status = 200, body = MigrationList)))]
fn list_migrations() {}

#[utoipa::path(post, path = "/v1/migrations/incoming", tag = "migration",
    request_body = IncomingMigration,
    responses(
        (status = 201, body = IncomingReady, description = "A worker waits for the VM at `endpoint`"),
        (status = 400, body = ApiError),
        (status = 409, body = ApiError, description = "A VM with this name or id exists here"),
        (status = 501, body = ApiError, description = "The worker cannot receive migrations yet"),
    ))]
fn incoming_migration() {}

#[utoipa::path(get, path = "/v1/migrations/{migration}", tag = "migration",
    params(("migration" = String, Path, description = "Migration id")),
    responses((status = 200, body = Migration), (status = 404, body = ApiError)))]
fn get_migration() {}

#[utoipa::path(post, path = "/v1/migrations/{migration}/cancel", tag = "migration",
    params(("migration" = String, Path, description = "Migration id")),
    responses(
        (status = 200, body = Migration, description = "Cancelled; the source VM runs on \
            (the migration stays listed, state `cancelled`)"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Already finished"),
    ))]
fn cancel_migration() {}

#[utoipa::path(get, path = "/v1/disks", tag = "disks",
    responses((status = 200, body = DiskList)))]
fn list_disks() {}

#[utoipa::path(post, path = "/v1/disks", tag = "disks", request_body = CreateDisk,
    responses(
        (status = 201, body = Disk),
        (status = 400, body = ApiError, description = "Invalid size, or a path outside the allowed directories"),
        (status = 409, body = ApiError, description = "The name or file is taken"),
        (status = 501, body = ApiError, description = "Disk images cannot be created yet"),
    ))]
fn create_disk() {}

#[utoipa::path(get, path = "/v1/disks/{disk}", tag = "disks",
    params(("disk" = String, Path, description = "Disk name or id")),
    responses((status = 200, body = Disk), (status = 404, body = ApiError)))]
fn get_disk() {}

#[utoipa::path(delete, path = "/v1/disks/{disk}", tag = "disks",
    params(("disk" = String, Path, description = "Disk name or id")),
    responses(
        (status = 204, description = "Deleted with its file"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Attached to a VM"),
    ))]
fn delete_disk() {}

#[utoipa::path(post, path = "/v1/disks/{disk}/resize", tag = "disks", request_body = ResizeDisk,
    params(("disk" = String, Path, description = "Disk name or id")),
    responses(
        (status = 200, body = Disk),
        (status = 400, body = ApiError),
        (status = 404, body = ApiError),
        (status = 501, body = ApiError, description = "Resize is not implemented yet"),
    ))]
fn resize_disk() {}

#[utoipa::path(put, path = "/v1/disks/{disk}/qos", tag = "disks", request_body = DiskQos,
    params(("disk" = String, Path, description = "Disk name or id")),
    responses(
        (status = 200, body = Disk),
        (status = 400, body = ApiError),
        (status = 404, body = ApiError),
    ))]
fn set_disk_qos() {}

#[utoipa::path(get, path = "/v1/events", tag = "host",
    params(
        ("since" = Option<i64>, Query, minimum = 0, maximum = 9223372036854775807_i64,
            description = "Only events after this sequence number (default 0)"),
        ("vm" = Option<String>, Query,
            description = "Only events of this VM (name or id; a deleted VM's too)"),
        ("wait" = Option<u32>, Query, minimum = 0, maximum = 60,
            description = "Seconds to wait for a new event (long poll; default 0)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000,
            description = "At most this many (default 1000)"),
    ),
    responses(
        (status = 200, body = EventList),
        (status = 400, body = ApiError, description = "An unknown parameter or a value out of range"),
        (status = 404, body = ApiError, description = "No VM of this name or id, now or before"),
    ))]
fn list_events() {}

#[utoipa::path(get, path = "/metrics", tag = "host",
    responses((status = 200, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body = String,
        description = "The host's VMs, workers, disks and migrations for Prometheus \
            (OpenMetrics text; the names are listed in docs/metrics.md)")))]
fn metrics() {}

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterInfo),
        (status = 404, description = "This daemon is not in a cluster", body = ApiError)))]
fn cluster_info() {}

#[utoipa::path(get, path = "/v1/cluster/nodes", tag = "cluster",
    responses((status = 200, body = ClusterNodeList),
        (status = 404, description = "This daemon is not in a cluster", body = ApiError)))]
fn cluster_nodes() {}

#[utoipa::path(get, path = "/v1/cluster/vms", tag = "cluster",
    responses((status = 200, body = ClusterVmList),
        (status = 404, description = "This daemon is not in a cluster", body = ApiError),
        (status = 503, description = "etcd does not answer", body = ApiError)))]
fn list_cluster_vms() {}

#[utoipa::path(post, path = "/v1/cluster/vms", tag = "cluster", request_body = AddClusterVm,
    responses((status = 200, body = ClusterVm),
        (status = 400, body = ApiError,
            description = "A disk not on shared storage, an unknown node, a bad name"),
        (status = 404, description = "Not in a cluster, or no such VM on this node", body = ApiError),
        (status = 409, description = "The VM runs here but another node owns it", body = ApiError),
        (status = 503, description = "etcd does not answer", body = ApiError)))]
fn add_cluster_vm() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed copy must match the document; regenerate it with
    /// `TERN_UPDATE_OPENAPI=1 cargo test -p tern-api`.
    #[test]
    fn committed_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let now = document();
        if std::env::var_os("TERN_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &now).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == now,
            "{path} is out of date: run TERN_UPDATE_OPENAPI=1 cargo test -p tern-api and commit it"
        );
    }

    #[test]
    fn event_query_bounds_are_the_limits() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let params = doc["paths"]["/v1/events"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let bound = |name: &str, key: &str| {
            params.iter().find(|p| p["name"] == name).unwrap()["schema"][key].as_i64()
        };
        assert_eq!(bound("since", "minimum"), Some(0));
        assert_eq!(bound("wait", "minimum"), Some(0));
        assert_eq!(
            bound("wait", "maximum"),
            Some(crate::limits::MAX_EVENT_WAIT)
        );
        assert_eq!(bound("limit", "minimum"), Some(1));
        assert_eq!(
            bound("limit", "maximum"),
            Some(crate::limits::MAX_EVENT_LIMIT)
        );
    }

    #[test]
    fn links_name_operations_and_their_parameters() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let mut ops = std::collections::HashMap::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                ops.insert(op["operationId"].as_str().unwrap().to_string(), op);
            }
        }
        let mut links = 0;
        for op in ops.values() {
            for r in op["responses"].as_object().unwrap().values() {
                let Some(l) = r.get("links") else { continue };
                for link in l.as_object().unwrap().values() {
                    links += 1;
                    let target = link["operationId"].as_str().expect("operationId");
                    let target = ops.get(target).unwrap_or_else(|| panic!("no {target}"));
                    for name in link["parameters"].as_object().unwrap().keys() {
                        assert!(
                            target["parameters"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .any(|p| p["name"] == name.as_str()),
                            "{}: no parameter {name}",
                            target["operationId"]
                        );
                    }
                }
            }
        }
        assert!(links >= 20, "only {links} links");
    }

    #[test]
    fn every_operation_documents_its_errors() {
        let doc = ApiDoc::openapi();
        for (path, item) in &doc.paths.paths {
            for op in [&item.get, &item.post, &item.put, &item.delete]
                .into_iter()
                .flatten()
            {
                assert!(!op.responses.responses.is_empty(), "{path}: no responses");
                if path.contains('{') {
                    assert!(
                        op.responses.responses.contains_key("404"),
                        "{path}: a path with a parameter must document 404"
                    );
                }
            }
        }
    }
}

#[utoipa::path(get, path = "/v1/switches", tag = "switches",
    responses((status = 200, body = SwitchList)))]
fn list_switches() {}

#[utoipa::path(post, path = "/v1/switches", tag = "switches", request_body = CreateSwitch,
    responses(
        (status = 201, body = Switch, description = "Created: its bridge exists and is up"),
        (status = 400, body = ApiError, description = "Bad name, type options or address; \
            or the uplink does not exist"),
        (status = 409, body = ApiError, description = "The name is taken"),
        (status = 500, body = ApiError, description = "The bridge could not be made"),
    ))]
fn create_switch() {}

#[utoipa::path(get, path = "/v1/switches/{switch}", tag = "switches",
    params(("switch" = String, Path, description = "Switch name or id")),
    responses((status = 200, body = Switch), (status = 404, body = ApiError)))]
fn get_switch() {}

#[utoipa::path(delete, path = "/v1/switches/{switch}", tag = "switches",
    params(("switch" = String, Path, description = "Switch name or id")),
    responses(
        (status = 204, description = "Deleted with its bridge"),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "NICs are attached to it"),
    ))]
fn delete_switch() {}

#[utoipa::path(get, path = "/v1/vms/{vm}/nics", tag = "switches",
    params(("vm" = String, Path, description = "VM name or id")),
    responses((status = 200, body = NicList), (status = 404, body = ApiError)))]
fn list_nics() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/nics", tag = "switches", request_body = CreateNic,
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 201, body = Nic, description = "Added; the port is made at each start"),
        (status = 400, body = ApiError, description = "Bad MAC, bandwidth or mirror port"),
        (status = 404, body = ApiError, description = "No such VM or switch"),
        (status = 409, body = ApiError, description = "The VM runs"),
    ))]
fn add_nic() {}
