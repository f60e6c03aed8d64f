//! The OpenAPI document of the REST API.
//!
//! Each operation is declared here, apart from the daemon's handlers, so that
//! the daemon's tests can check the document against what the router really
//! serves (every documented route exists, every route is documented) and a
//! committed copy (`crates/tern-api/openapi.json`) shows every change.

// The functions below only carry `#[utoipa::path]` attributes; the daemon
// implements the operations.
#![allow(dead_code)]

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::types::*;

/// The API document; `ApiDoc::openapi()` builds it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tern host daemon (ternd)",
        description = "Manage VMs, disks, checkpoints and migrations on one host. \
            Served on a UNIX socket without authentication (file permissions \
            guard it) and, when asked, on TCP where every request needs \
            `Authorization: Bearer TOKEN`. Errors are `ApiError` objects.",
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
    ),
    components(schemas(
        ApiError, VmState, Size, CreateVm, Vm, VmList, Event, EventList, DiskFormat,
        CreateDisk, DiskQos, Disk, DiskList, ResizeDisk, AttachDisk, CreateCheckpoint,
        Checkpoint, CheckpointList, StartMigration, MigrationState, Migration,
        MigrationList, IncomingMigration, IncomingDisk, IncomingReady, Features, HostInfo
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "vms", description = "VM lifecycle"),
        (name = "disks", description = "Virtual disks"),
        (name = "checkpoints", description = "Checkpoints of a VM"),
        (name = "migration", description = "Live migration between hosts"),
        (name = "host", description = "The host and its events"),
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

/// The document as pretty JSON (what `/openapi.json` serves).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
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
        (status = 200, body = Vm, description = "The worker runs the guest"),
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
            (recent output first) and keyboard input"),
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
        (status = 501, body = ApiError, description = "Checkpoints are not implemented yet"),
    ))]
fn create_checkpoint() {}

#[utoipa::path(delete, path = "/v1/vms/{vm}/checkpoints/{checkpoint}", tag = "checkpoints",
    params(("vm" = String, Path, description = "VM name or id"),
        ("checkpoint" = String, Path, description = "Checkpoint name or id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ApiError),
        (status = 501, body = ApiError, description = "Checkpoints are not implemented yet"),
    ))]
fn delete_checkpoint() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/checkpoints/{checkpoint}/apply", tag = "checkpoints",
    params(("vm" = String, Path, description = "VM name or id"),
        ("checkpoint" = String, Path, description = "Checkpoint name or id")),
    responses(
        (status = 200, body = Vm),
        (status = 404, body = ApiError),
        (status = 501, body = ApiError, description = "Checkpoints are not implemented yet"),
    ))]
fn apply_checkpoint() {}

#[utoipa::path(post, path = "/v1/vms/{vm}/migrate", tag = "migration",
    request_body = StartMigration,
    params(("vm" = String, Path, description = "VM name or id")),
    responses(
        (status = 202, body = Migration, description = "Started; poll `/v1/migrations/{id}`"),
        (status = 400, body = ApiError),
        (status = 404, body = ApiError),
        (status = 409, body = ApiError, description = "Not running"),
        (status = 501, body = ApiError, description = "The worker cannot migrate yet"),
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

#[utoipa::path(delete, path = "/v1/migrations/{migration}", tag = "migration",
    params(("migration" = String, Path, description = "Migration id")),
    responses(
        (status = 200, body = Migration, description = "Cancelled; the source VM runs on"),
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
        ("since" = Option<i64>, Query, description = "Only events after this sequence number"),
        ("vm" = Option<String>, Query, description = "Only events of this VM (name or id)"),
        ("wait" = Option<u32>, Query, description = "Seconds to wait for a new event (long poll, at most 60)"),
        ("limit" = Option<u32>, Query, description = "At most this many (default 1000)"),
    ),
    responses((status = 200, body = EventList), (status = 400, body = ApiError)))]
fn list_events() {}

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
