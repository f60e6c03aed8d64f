//! The API without VMs running: the OpenAPI document against the router,
//! and bad input (each a 4xx with a clear message, the registry unchanged).

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tern_api::{Client, Endpoint};
use tower::ServiceExt;

async fn send(router: &axum::Router, method: &str, path: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Every documented operation is routed, every route is documented, and no
/// other method is answered on a documented path.
#[tokio::test]
async fn openapi_document_matches_the_router() {
    let t = common::start("/nonexistent/tern".into()).await;
    let router = tern_daemon::api::router(t.daemon.clone());
    let documented = tern_api::openapi::operations();
    let (_, routed) = tern_daemon::api::routes();
    assert_eq!(
        routed, documented,
        "the router's routes (left) and the OpenAPI document (right) differ"
    );
    let concrete = |p: &str| {
        p.split('/')
            .map(|s| if s.starts_with('{') { "zz-none" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    };
    let paths: std::collections::BTreeSet<_> = documented.iter().map(|(_, p)| p.clone()).collect();
    for path in &paths {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let is_doc = documented.contains(&(method.to_string(), path.clone()));
            let (status, body) = send(&router, method, &concrete(path)).await;
            let unrouted = body["code"] == "no_route" || status == StatusCode::METHOD_NOT_ALLOWED;
            if is_doc {
                assert!(
                    !unrouted,
                    "{method} {path} is documented but not routed ({status} {body})"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is routed but not documented ({body})"
                );
            }
        }
    }
    // The check can fail: an unknown path is reported as unrouted.
    let (status, body) = send(&router, "GET", "/v1/nothing").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_route"))
    );

    let (status, _) = send(&router, "GET", "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let served = t
        .client
        .raw(Method::GET, "/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&served.1),
        tern_api::openapi::document()
    );
}

/// Sends `body` and expects `status`, an `ApiError` whose message contains
/// `needle`, and an unchanged registry.
async fn refused(
    t: &common::TestDaemon,
    method: Method,
    path: &str,
    body: Option<&str>,
    status: u16,
    needle: &str,
) {
    let before = common::snapshot(&t.daemon);
    let (st, bytes) = t
        .client
        .raw(method.clone(), path, body.map(|b| b.as_bytes().to_vec()))
        .await
        .unwrap();
    let err: tern_api::ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{method} {path}: not an ApiError: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(st.as_u16(), status, "{method} {path} {body:?}: {err:?}");
    assert!(
        err.message.contains(needle),
        "{method} {path}: message {:?} lacks {needle:?}",
        err.message
    );
    assert_eq!(
        common::snapshot(&t.daemon),
        before,
        "{method} {path} changed the registry"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_clear_messages_and_changes_nothing() {
    let t = common::start("/nonexistent/tern".into()).await;
    // One valid VM so that some requests reach a real row.
    let vm = t
        .client
        .create_vm(&tern_api::CreateVm {
            name: "web1".into(),
            vcpus: None,
            memory: Some(tern_api::Size(64 << 20)),
            guest: "probe:hello".into(),
            disks: vec![],
        })
        .await
        .unwrap();
    assert_eq!(vm.state, tern_api::VmState::Stopped);

    // Unknown VMs.
    for (m, p) in [
        (Method::GET, "/v1/vms/nope"),
        (Method::POST, "/v1/vms/nope/start"),
        (Method::POST, "/v1/vms/nope/stop"),
        (Method::POST, "/v1/vms/nope/pause"),
        (Method::DELETE, "/v1/vms/nope"),
        (Method::GET, "/v1/vms/nope/checkpoints"),
    ] {
        refused(&t, m, p, None, 404, "no VM named 'nope'").await;
    }
    refused(&t, Method::GET, "/v1/vms/nope/console", None, 404, "no VM").await;
    refused(&t, Method::GET, "/v1/events?vm=nope", None, 404, "no VM").await;

    // Invalid sizes and settings.
    let create = |body: &'static str| (Method::POST, "/v1/vms", Some(body));
    for (body, needle) in [
        (
            r#"{"name":"a","guest":"probe:hello","memory":"12X"}"#,
            "unknown suffix",
        ),
        (
            r#"{"name":"a","guest":"probe:hello","memory":"1M"}"#,
            "invalid memory size",
        ),
        (
            r#"{"name":"a","guest":"probe:hello","memory":"3M"}"#,
            "multiple of 2 MiB",
        ),
        (
            r#"{"name":"a","guest":"probe:hello","memory":-5}"#,
            "expected a size",
        ),
        (
            r#"{"name":"a","guest":"probe:hello","memory":"99999999999T"}"#,
            "too large",
        ),
        (
            r#"{"name":"a","guest":"probe:hello","vcpus":0}"#,
            "invalid vcpus 0",
        ),
        (
            r#"{"name":"a","guest":"probe:hello","vcpus":1000}"#,
            "invalid vcpus",
        ),
        (r#"{"name":"a b","guest":"probe:hello"}"#, "invalid VM name"),
        (r#"{"name":"","guest":"probe:hello"}"#, "invalid VM name"),
        (r#"{"name":"a","guest":"linux"}"#, "expected probe:WORKLOAD"),
        (r#"{"name":"a","guest":"probe:explode"}"#, "invalid guest"),
        (
            r#"{"name":"a","guest":"probe:hello","cpus":2}"#,
            "unknown field `cpus`",
        ),
        (r#"{"guest":"probe:hello"}"#, "missing field `name`"),
    ] {
        let (m, p, b) = create(body);
        refused(&t, m, p, b, 400, needle).await;
    }
    // Malformed JSON.
    for body in ["{", "not json", "[1,2]", "", "{\"name\": 5}"] {
        refused(&t, Method::POST, "/v1/vms", Some(body), 400, "").await;
    }
    refused(
        &t,
        Method::POST,
        "/v1/vms",
        Some("{"),
        400,
        "invalid JSON body",
    )
    .await;
    refused(
        &t,
        Method::POST,
        "/v1/vms",
        None,
        400,
        "a JSON body is required",
    )
    .await;
    // A taken name.
    refused(
        &t,
        Method::POST,
        "/v1/vms",
        Some(r#"{"name":"web1","guest":"probe:hello"}"#),
        409,
        "already taken",
    )
    .await;
    // Wrong state.
    refused(
        &t,
        Method::POST,
        "/v1/vms/web1/stop",
        None,
        409,
        "is stopped: cannot stop it",
    )
    .await;
    refused(
        &t,
        Method::POST,
        "/v1/vms/web1/pause",
        None,
        409,
        "cannot pause",
    )
    .await;

    // Disks: sizes and paths outside the allowed directories.
    let disk_dir = t.dir.path().join("state/disks");
    let files_before = std::fs::read_dir(&disk_dir).unwrap().count();
    let inside = format!("{}/ok.vhdx", disk_dir.display());
    let escaped = format!("{}/../escape.vhdx", disk_dir.display());
    for (body, status, needle) in [
        (
            r#"{"name":"d","size":"0"}"#.to_string(),
            400,
            "invalid disk size",
        ),
        (
            r#"{"name":"d","size":"1000"}"#.to_string(),
            400,
            "multiple of 1 MiB",
        ),
        (
            r#"{"name":"d","size":"65T"}"#.to_string(),
            400,
            "invalid disk size",
        ),
        (
            r#"{"name":"d","size":"1G","path":"/etc/evil.vhdx"}"#.to_string(),
            400,
            "outside the allowed directories",
        ),
        (
            r#"{"name":"d","size":"1G","path":"/tmp/evil.vhdx"}"#.to_string(),
            400,
            "outside the allowed directories",
        ),
        (
            format!(r#"{{"name":"d","size":"1G","path":"{escaped}"}}"#),
            400,
            "without '..'",
        ),
        (
            r#"{"name":"d","size":"1G","path":"rel.vhdx"}"#.to_string(),
            400,
            "must be absolute",
        ),
        (
            format!(r#"{{"name":"d","size":"1G","path":"{inside}","format":"qcow2"}}"#),
            400,
            "unknown variant",
        ),
    ] {
        refused(&t, Method::POST, "/v1/disks", Some(&body), status, needle).await;
    }
    assert_eq!(
        std::fs::read_dir(&disk_dir).unwrap().count(),
        files_before,
        "a refused disk left a file behind"
    );
    refused(
        &t,
        Method::POST,
        "/v1/disks/none/resize",
        Some(r#"{"size":"1G"}"#),
        404,
        "no disk",
    )
    .await;
    refused(
        &t,
        Method::PUT,
        "/v1/disks/none/qos",
        Some(r#"{"max_iops":5}"#),
        404,
        "no disk",
    )
    .await;
    refused(
        &t,
        Method::GET,
        "/v1/events?since=abc",
        None,
        400,
        "invalid since",
    )
    .await;
    refused(
        &t,
        Method::GET,
        "/v1/events?bogus=1",
        None,
        400,
        "unknown query parameter",
    )
    .await;
    refused(
        &t,
        Method::GET,
        "/v1/nothing",
        None,
        404,
        "no such endpoint",
    )
    .await;
    refused(&t, Method::PATCH, "/v1/vms", None, 405, "not allowed").await;

    // Not implemented yet: a clear 501, never a fake success.
    refused(
        &t,
        Method::POST,
        "/v1/vms/web1/save",
        None,
        501,
        "not implemented yet",
    )
    .await;
    refused(
        &t,
        Method::POST,
        "/v1/vms/web1/migrate",
        Some(r#"{"to":"unix:/tmp/x.sock"}"#),
        501,
        "not implemented yet",
    )
    .await;
    refused(
        &t,
        Method::POST,
        "/v1/vms/web1/migrate",
        Some(r#"{"to":"ftp://x"}"#),
        400,
        "bad daemon address",
    )
    .await;
}

#[tokio::test]
async fn disks_are_created_resized_and_deleted_in_allowed_directories() {
    let t = common::start("/nonexistent/tern".into()).await;
    let disk = t
        .client
        .create_disk(&tern_api::CreateDisk {
            name: "data".into(),
            size: tern_api::Size(64 << 20),
            format: None,
            path: None,
        })
        .await
        .unwrap();
    assert!(disk.path.ends_with("/disks/data.vhdx"), "{}", disk.path);
    let info = vhdx::Disk::open(&disk.path, false).unwrap();
    assert_eq!(info.virtual_size(), 64 << 20);
    drop(info);
    let disk = t.client.resize_disk("data", 128 << 20).await.unwrap();
    assert_eq!(disk.size, 128 << 20);
    assert_eq!(
        vhdx::Disk::open(&disk.path, false).unwrap().virtual_size(),
        128 << 20
    );
    let disk = t
        .client
        .set_disk_qos(
            "data",
            &tern_api::DiskQos {
                max_iops: Some(500),
                min_iops: Some(100),
                max_bw: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(disk.qos.max_iops, Some(500));
    let e = t
        .client
        .set_disk_qos(
            "data",
            &tern_api::DiskQos {
                max_iops: Some(5),
                min_iops: Some(100),
                max_bw: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    // A second disk with the same name is refused before any file is made.
    let e = t
        .client
        .create_disk(&tern_api::CreateDisk {
            name: "data".into(),
            size: tern_api::Size(1 << 20),
            format: Some(tern_api::DiskFormat::Raw),
            path: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(!t.dir.path().join("state/disks/data.raw").exists());
    t.client.delete_disk("data").await.unwrap();
    assert!(!std::path::Path::new(&disk.path).exists());
    assert!(t.client.list_disks().await.unwrap().is_empty());
}

#[tokio::test]
async fn tcp_requires_the_bearer_token() {
    let t = common::start("/nonexistent/tern".into()).await;
    let app = tern_daemon::api::router_with_token(t.daemon.clone(), "s3cret".into());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await });
    let before = common::snapshot(&t.daemon);
    let body = br#"{"name":"x","guest":"probe:hello"}"#.to_vec();
    for token in [None, Some("wrong".to_string()), Some("s3cret0".to_string())] {
        let c = Client::new(Endpoint::Tcp {
            addr: addr.clone(),
            token: token.clone(),
        });
        for (m, p) in [
            (Method::GET, "/v1/vms"),
            (Method::GET, "/openapi.json"),
            (Method::POST, "/v1/vms"),
            (Method::GET, "/v1/nothing"),
        ] {
            let (st, bytes) = c.raw(m.clone(), p, Some(body.clone())).await.unwrap();
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{m} {p} with {token:?}");
            let e: tern_api::ApiError = serde_json::from_slice(&bytes).unwrap();
            assert!(e.message.contains("token"), "{}", e.message);
        }
    }
    assert_eq!(common::snapshot(&t.daemon), before);
    let c = Client::new(Endpoint::Tcp {
        addr,
        token: Some("s3cret".into()),
    });
    assert!(c.list_vms().await.unwrap().is_empty());
    let vm = c
        .create_vm(&tern_api::CreateVm {
            name: "x".into(),
            vcpus: None,
            memory: None,
            guest: "probe:hello".into(),
            disks: vec![],
        })
        .await
        .unwrap();
    assert_eq!(vm.memory, 512 << 20);
}

#[test]
fn ternd_refuses_tcp_without_a_token() {
    use clap::Parser;
    let e =
        tern_daemon::server::Args::try_parse_from(["ternd", "--tcp", "127.0.0.1:0"]).unwrap_err();
    assert!(e.to_string().contains("--token-file"), "{e}");
}
