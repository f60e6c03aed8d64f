//! Round trips of every request and reply, the wire's legacy shapes,
//! error codes, versions, and both clients against a scripted worker.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::hello::SUPPORTED_PROTOCOLS;
use crate::launch::{GuestSpec, MemoryFileSpec, RestoreMode, RestoreSpec, SerialSpec};
use crate::migration::*;
use crate::requests::*;
use crate::wire::{decode_reply, encode_reply};
use crate::*;

/// Checks one request/reply pair both ways; returns the request's name.
fn round_trip<R>(req: R, reply: R::Reply) -> &'static str
where
    R: Call + Clone,
    R::Reply: PartialEq + Debug + Clone,
{
    let r: Request = req.into();
    let line = r.encode();
    assert!(!line.contains('\n'), "{line}");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["cmd"], r.name(), "{line}");
    assert_eq!(Request::decode(&line).unwrap(), r, "{line}");

    let out = encode_reply(&Ok(reply.clone()));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true, "{out}");
    let back: R::Reply = decode_reply::<R::Reply>(&out).unwrap().unwrap();
    assert_eq!(back, reply, "{out}");
    r.name()
}

fn disk_status() -> DiskStatus {
    DiskStatus {
        path: "/d/a b,c=d.vhdx".into(),
        format: DiskFormat::Vhdx,
        read_only: true,
        capacity: 1 << 30,
        qos: QosLimits {
            max_iops: 900,
            min_iops: 10,
            max_bw: 1 << 20,
        },
        requests: 5,
        errors: 1,
        throttled: 2,
        read_bytes: 4096,
        write_bytes: 8192,
    }
}

fn checkpoint(id: u64) -> CheckpointInfo {
    CheckpointInfo {
        id,
        name: format!("c{id}"),
        parent: id - 1,
        created_unix_ms: 1_700_000_000_000,
        memory: true,
        disks: vec!["/d/a.avhdx".into()],
        current: id == 2,
    }
}

fn scsi_lun_status() -> ScsiLunStatus {
    ScsiLunStatus {
        lun: 1,
        kind: crate::launch::ScsiLunKind::Dvd,
        path: Some("/i/x.iso".into()),
        read_only: true,
        shared: false,
        capacity: 2048 * 16,
        medium_present: true,
    }
}

#[test]
fn every_request_and_reply_round_trips() {
    let state = |state| StateReply { state };
    let mut seen = BTreeSet::new();
    let mut add = |name| assert!(seen.insert(name), "{name} twice");
    add(round_trip(
        Hello {},
        HelloReply::new("0.1.0", vec![Capability::Migration, Capability::Vhdx]),
    ));
    add(round_trip(
        Status {},
        StatusReply {
            state: VmState::Running,
            vcpus: 2,
            memory: 512 << 20,
            pid: 42,
            disks: vec![disk_status()],
            scsi: vec![scsi_lun_status()],
            probe: Some(ProbeStatus {
                started: true,
                phase: 3,
                step: 1,
                generation: 7,
                cursor: 9,
                pages: 100,
                touch_rounds: 2,
                command_ack: 1,
                checked_in: 2,
                blk_capacity: 1 << 20,
                blk_capacity_changes: 1,
                blk_in_use_end: 4096,
            }),
        },
    ));
    add(round_trip(Pause {}, state(VmState::Paused)));
    add(round_trip(Resume {}, state(VmState::Running)));
    add(round_trip(Shutdown {}, state(VmState::Stopping)));
    add(round_trip(PowerButton {}, state(VmState::Running)));
    add(round_trip(
        Reports {},
        ReportsReply {
            reports: vec!["hello".into(), "done".into()],
        },
    ));
    add(round_trip(ProbeStop {}, state(VmState::Running)));
    add(round_trip(ProbeTouch { round: 3 }, state(VmState::Running)));
    add(round_trip(
        DiskQos {
            disk: 1,
            max_iops: Some(900),
            min_iops: None,
            max_bw: Some(0),
        },
        DiskQosReply {
            disk: 1,
            qos: QosLimits {
                max_iops: 900,
                min_iops: 0,
                max_bw: 0,
            },
        },
    ));
    add(round_trip(
        DiskResize {
            disk: 0,
            size: 1 << 20,
        },
        DiskResizeReply {
            disk: 0,
            capacity: 1 << 20,
        },
    ));
    add(round_trip(
        Events {},
        EventsReply {
            events: vec![DiskEvent {
                seq: 1,
                time_ms: 20,
                disk: 0,
                event: QosEventKind::MinIopsNotMet,
                min_iops: 100,
                measured_iops: 12,
            }],
        },
    ));
    add(round_trip(
        ConsoleInput {
            bytes: b"ls\n".to_vec(),
        },
        ConsoleInputReply { accepted: 3 },
    ));
    add(round_trip(
        Save {
            dir: "/s/vm 1".into(),
        },
        SaveReply {
            state: VmState::Saved,
            dir: "/s/vm 1".into(),
            memory: 64 << 20,
            memory_written: 1 << 20,
            pause_ms: 0.5,
            save_ms: 12.25,
        },
    ));
    add(round_trip(
        CheckpointCreate {
            name: "before upgrade".into(),
            memory: false,
        },
        CheckpointCreateReply {
            checkpoint: checkpoint(1),
        },
    ));
    add(round_trip(
        CheckpointList {},
        CheckpointListReply {
            current: 2,
            checkpoints: vec![checkpoint(1), checkpoint(2)],
        },
    ));
    add(round_trip(
        CheckpointRevert { id: 1 },
        CheckpointRevertReply {
            current: 1,
            state: VmState::Stopped,
            note: Some("no memory".into()),
        },
    ));
    add(round_trip(
        CheckpointDelete { id: 1 },
        CheckpointDeleteReply {
            deleted: 1,
            merged_disks: 1,
        },
    ));
    add(round_trip(
        Export { dir: "/e".into() },
        ExportReply {
            dir: "/e".into(),
            files: 4,
            bytes: 1 << 20,
        },
    ));
    add(round_trip(
        Migrate {
            channels: 4,
            compression: Some(Compression::Zstd),
            downtime_ms: Some(20),
            bandwidth: Some(1 << 30),
            timeout_s: Some(60),
            timeout_action: Some(TimeoutAction::Switchover),
            auto_converge: Some(false),
            with_storage: true,
            ..Migrate::to("tcp:10.0.0.2:4000".parse().unwrap())
        },
        MigrateReply {
            phase: MigrationPhase::Setup,
        },
    ));
    add(round_trip(
        MigrateStatus {},
        MigrationStatus {
            phase: MigrationPhase::Failed,
            outcome: Some(MigrationOutcome::Unconfirmed),
            paused_here: true,
            memory_bytes: 1 << 30,
            bytes_sent: 12345,
            pages_sent: 300,
            zero_pages: 100,
            rounds: 3,
            dirty_rate: 1.5e6,
            bandwidth: 1.25e8,
            remaining_bytes: 4096,
            estimated_remaining_ms: 0.25,
            expected_downtime_ms: 9.5,
            compression: "lz4".into(),
            channels: 2,
            throttle_percent: 30,
            elapsed_ms: 1234.5,
            downtime_ms: None,
            zero_copy: false,
            protocol: 4,
            disk_total: 1 << 24,
            disk_sent: 1 << 23,
            disk_remaining: 65536,
            error: Some("the switchover was committed but ...".into()),
        },
    ));
    add(round_trip(MigrateCancel {}, Ack {}));
    let scsi = || ScsiReply {
        initiator: "node-a".into(),
        luns: vec![scsi_lun_status()],
    };
    add(round_trip(
        ScsiAdd {
            lun: crate::launch::ScsiLunSpec {
                kind: crate::launch::ScsiLunKind::Disk,
                lun: Some(2),
                path: Some("/d/x.vhdx".into()),
                format: None,
                read_only: false,
                shared: false,
            },
        },
        scsi(),
    ));
    add(round_trip(ScsiRemove { lun: 2 }, scsi()));
    add(round_trip(
        DvdInsert {
            lun: 1,
            path: "/i/x.iso".into(),
        },
        scsi(),
    ));
    add(round_trip(
        DvdEject {
            lun: 1,
            force: true,
        },
        scsi(),
    ));
    add(round_trip(
        ScsiResize {
            lun: 0,
            size: 2 << 20,
        },
        scsi(),
    ));
    add(round_trip(
        OwnershipRenew {
            token: 42,
            deadline_ms: 7000,
        },
        OwnershipRenewReply {
            token: 42,
            deadline_ms: 7000,
        },
    ));
    add(round_trip(
        crate::storage_move::StorageMove {
            disk: 1,
            to_dir: "/new dir".into(),
            format: Some(DiskFormat::Vhdx),
            bandwidth: Some(1 << 20),
        },
        crate::storage_move::StorageMoveReply {
            target: "/new dir/d.vhdx".into(),
            phase: crate::storage_move::StorageMovePhase::Setup,
        },
    ));
    add(round_trip(
        crate::storage_move::StorageMoveStatus {},
        crate::storage_move::StorageMoveProgress {
            phase: crate::storage_move::StorageMovePhase::Dirty,
            disk: 1,
            source: "/d/d.img".into(),
            target: "/new dir/d.vhdx".into(),
            format: Some(DiskFormat::Vhdx),
            total_bytes: 1 << 30,
            copied_bytes: 1 << 29,
            rounds: 2,
            dirty_bytes: 4096,
            elapsed_ms: 12.5,
            held_ms: None,
            old_removed: false,
            error: None,
        },
    ));
    add(round_trip(
        crate::storage_move::StorageMoveCancel {},
        Ack {},
    ));
    let all: BTreeSet<_> = Request::NAMES.iter().copied().collect();
    assert_eq!(seen, all, "every request is round-tripped");
    assert_eq!(all.len(), Request::NAMES.len(), "names are unique");
}

#[test]
fn lines_of_the_untyped_protocol_still_parse() {
    // What scripts, socat users and the tests send today.
    for (line, want) in [
        (r#"{"cmd":"status"}"#, Request::Status(Status {})),
        (
            r#"{"cmd":"probe-touch","round":3}"#,
            Request::ProbeTouch(ProbeTouch { round: 3 }),
        ),
        (
            r#"{"cmd":"disk-qos","disk":1,"max_iops":900}"#,
            Request::DiskQos(DiskQos {
                disk: 1,
                max_iops: Some(900),
                ..DiskQos::default()
            }),
        ),
        (
            r#"{"cmd":"checkpoint-create","name":"a"}"#,
            Request::CheckpointCreate(CheckpointCreate {
                name: "a".into(),
                memory: true,
            }),
        ),
        (
            r#"{"cmd":"migrate","to":"unix:/tmp/m.sock","compression":"none"}"#,
            Request::Migrate(Migrate {
                compression: Some(Compression::Off),
                ..Migrate::to(Endpoint::Unix("/tmp/m.sock".into()))
            }),
        ),
    ] {
        assert_eq!(Request::decode(line).unwrap(), want, "{line}");
    }
    // Replies: the old shapes read as the typed ones.
    let none: MigrationStatus = decode_reply(r#"{"ok":true,"phase":"none"}"#)
        .unwrap()
        .unwrap();
    assert_eq!(none.phase, MigrationPhase::None);
    assert!(none.outcome.is_none());
    let old: WorkerError = decode_reply::<Ack>(r#"{"ok":false,"error":"no migration is running"}"#)
        .unwrap()
        .unwrap_err();
    assert_eq!(old.code, ErrorCode::Failed);
    assert_eq!(old.message, "no migration is running");
    // The success encoding is flat.
    let line = encode_reply(&Ok(StateReply {
        state: VmState::Paused,
    }));
    assert_eq!(line, r#"{"ok":true,"state":"paused"}"#);
    let line = encode_reply(&Ok(Ack {}));
    assert_eq!(line, r#"{"ok":true}"#);
}

#[test]
fn malformed_requests_are_bad_requests() {
    for line in [
        "not json",
        r#"{"cmd":"explode"}"#,
        r#"{"cmd":"disk-resize","disk":0}"#,
        r#"{"cmd":"probe-touch","round":"three"}"#,
        r#"{"cmd":"migrate","to":"ftp:x"}"#,
        r#"{"cmd":"migrate","to":"tcp:h:1","compression":"brotli"}"#,
        r#"{"round":1}"#,
    ] {
        let e = Request::decode(line).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{line}");
        assert!(e.message.starts_with("bad request: "), "{line}: {e}");
    }
}

#[test]
fn error_codes_travel_and_unknown_ones_read_as_unknown() {
    for code in [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::Busy,
        ErrorCode::Conflict,
        ErrorCode::Unsupported,
        ErrorCode::Timeout,
        ErrorCode::Failed,
    ] {
        let line = encode_reply::<Ack>(&Err(WorkerError::new(code, "why")));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({"ok": false, "error": "why", "code": code.as_str()})
        );
        let e = decode_reply::<Ack>(&line).unwrap().unwrap_err();
        assert_eq!(e, WorkerError::new(code, "why"));
    }
    let e = decode_reply::<Ack>(r#"{"ok":false,"error":"x","code":"on-fire"}"#)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unknown);
    // Not replies at all.
    assert!(decode_reply::<Ack>("[]").is_err());
    assert!(decode_reply::<Ack>(r#"{"state":"running"}"#).is_err());
    assert!(decode_reply::<StateReply>(r#"{"ok":true}"#).is_err());
}

#[test]
fn unknown_protocol_versions_are_refused() {
    let mut hello = HelloReply::new("9.9.9", vec![]);
    assert!(hello.check().is_ok());
    hello.protocol = SUPPORTED_PROTOCOLS.end() + 1;
    let e = hello.check().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("protocol version {}", hello.protocol)) && msg.contains("9.9.9"),
        "{msg}"
    );
    hello.protocol = 0;
    assert!(hello.check().is_err());
    // Capabilities a newer worker adds do not break an older client.
    let h: HelloReply = serde_json::from_value(json!({
        "protocol": 1, "product": "x", "launch_spec": 1,
        "capabilities": ["migration", "teleport"]
    }))
    .unwrap();
    assert!(h.has(Capability::Migration));
    assert!(!h.has(Capability::Vhdx));
    assert_eq!(h.capabilities[1], Capability::Unknown);
}

#[test]
fn launch_spec_round_trips_and_checks() {
    let mut spec = LaunchSpec::new(
        2,
        256 << 20,
        GuestSpec::Probe {
            workload: "dirty,mib=64".into(),
            image: Some("/x/probe-guest".into()),
        },
    );
    spec.disks = vec![
        DiskSpec {
            format: Some(DiskFormat::Vhdx),
            read_only: true,
            qos: QosLimits {
                max_iops: 500,
                min_iops: 10,
                max_bw: 1 << 20,
            },
            poll: true,
            ..DiskSpec::new("/v/a.raw,readonly,path=/etc/passwd x.img")
        },
        DiskSpec::new("/v/b.img"),
    ];
    spec.serial = SerialSpec::File {
        path: "/run/s.fifo".into(),
    };
    spec.control = Some("/run/c.sock".into());
    spec.memfd = true;
    spec.prealloc = true;
    spec.paused = true;
    spec.checkpoint_dir = Some("/cp".into());
    spec.incoming = Some("tcp:0.0.0.0:0".parse().unwrap());
    spec.memory_file = Some(MemoryFileSpec {
        path: "/m.img".into(),
        lazy: true,
    });
    spec.kvm = Some("/dev/kvm".into());
    let text = spec.to_json();
    assert_eq!(LaunchSpec::parse(&text).unwrap(), spec);

    let restore = LaunchSpec::restoring(RestoreSpec {
        dir: "/saved".into(),
        mode: RestoreMode::Eager,
    });
    assert_eq!(LaunchSpec::parse(&restore.to_json()).unwrap(), restore);

    let linux = LaunchSpec::new(
        1,
        1 << 30,
        GuestSpec::Linux {
            kernel: "/k".into(),
            initrd: None,
            cmdline: Some("console=ttyS0".into()),
        },
    );
    assert_eq!(LaunchSpec::parse(&linux.to_json()).unwrap(), linux);
}

#[test]
fn launch_spec_version_1_documents_read_with_their_defaults() {
    // The smallest version 1 documents: every later field has a default.
    let spec = LaunchSpec::parse(
        r#"{"version":1,"guest":{"kind":"probe","workload":"hello"},
            "disks":[{"path":"/d/a.img"}]}"#,
    )
    .unwrap();
    assert_eq!(spec.version, LAUNCH_SPEC_VERSION);
    assert_eq!((spec.vcpus, spec.memory), (1, 512 << 20));
    assert_eq!(spec.serial, SerialSpec::Stdout);
    assert_eq!(spec.disks, vec![DiskSpec::new("/d/a.img")]);
    let r = LaunchSpec::parse(r#"{"version":1,"restore":{"dir":"/s"}}"#).unwrap();
    assert_eq!(r.restore.unwrap().mode, RestoreMode::Lazy); // The CPU model came later: absent is host, and it is written only
                                                            // when it is not host, so older workers read specs of host VMs.
    assert_eq!(spec.cpu_model, crate::launch::CpuModelSpec::Host);
    assert!(!spec.to_json().contains("cpu_model"));
    let compat = LaunchSpec::parse(
        r#"{"version":1,"guest":{"kind":"probe","workload":"hello"},"cpu_model":"compat"}"#,
    )
    .unwrap();
    assert_eq!(compat.cpu_model, crate::launch::CpuModelSpec::Compat);
    assert_eq!(LaunchSpec::parse(&compat.to_json()).unwrap(), compat);
    assert!(LaunchSpec::parse(
        r#"{"version":1,"guest":{"kind":"probe","workload":"hello"},"cpu_model":"486"}"#
    )
    .is_err());
}

#[test]
fn bad_launch_specs_are_refused_clearly() {
    let probe = r#""guest":{"kind":"probe","workload":"hello"}"#;
    let cases: Vec<(String, &str)> = vec![
        ("{}".into(), "no \"version\""),
        (format!(r#"{{"version":"1",{probe}}}"#), "no \"version\""),
        (
            format!(r#"{{"version":2,{probe}}}"#),
            "version 2 is not one",
        ),
        (
            format!(r#"{{"version":0,{probe}}}"#),
            "version 0 is not one",
        ),
        (
            r#"{"version":1}"#.into(),
            "neither \"guest\" nor \"restore\"",
        ),
        (
            format!(r#"{{"version":1,{probe},"restore":{{"dir":"/s"}}}}"#),
            "\"restore\" and \"guest\"",
        ),
        (
            r#"{"version":1,"restore":{"dir":"/s"},"disks":[{"path":"/a"}]}"#.into(),
            "\"restore\" and \"disks\"",
        ),
        (
            format!(r#"{{"version":1,{probe},"vcpus":0}}"#),
            "at least 1 vCPU",
        ),
        (
            format!(r#"{{"version":1,{probe},"memory":4096}}"#),
            "at least 1 MiB",
        ),
        (
            format!(r#"{{"version":1,{probe},"disks":[{{"path":""}}]}}"#),
            "disk 0 has an empty",
        ),
        (
            format!(
                r#"{{"version":1,{probe},"disks":[{{"path":"/a","qos":{{"max_iops":10,"min_iops":20}}}}]}}"#
            ),
            "min_iops 20 is above max_iops 10",
        ),
        ("not json".into(), "bad launch spec"),
    ];
    for (doc, says) in &cases {
        let e = LaunchSpec::parse(doc).unwrap_err();
        assert!(e.to_string().contains(says), "{doc}: {e}");
    }
    // Typos and unknown formats are errors, not ignored.
    for doc in [
        format!(r#"{{"version":1,{probe},"memfdd":true}}"#),
        format!(r#"{{"version":1,{probe},"disks":[{{"path":"/a","read_ony":true}}]}}"#),
        format!(r#"{{"version":1,{probe},"disks":[{{"path":"/a","format":"qcow2"}}]}}"#),
        r#"{"version":1,"guest":{"kind":"windows"}}"#.to_string(),
    ] {
        assert!(
            matches!(LaunchSpec::parse(&doc), Err(LaunchSpecError::Json(_))),
            "{doc}"
        );
    }
}

/// A scripted worker: answers each request line with the next of
/// `replies`, then closes. Returns the socket and the request lines seen.
fn scripted_worker(
    replies: Vec<String>,
) -> (
    tempfile::TempDir,
    PathBuf,
    std::thread::JoinHandle<Vec<String>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for reply in replies {
            let (s, _) = listener.accept().unwrap();
            let mut out = s.try_clone().unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            seen.push(line.trim_end().to_string());
            if !reply.is_empty() {
                out.write_all(format!("{reply}\n").as_bytes()).unwrap();
            }
        }
        seen
    });
    (dir, path, t)
}

#[test]
fn blocking_client_returns_typed_replies_and_errors() {
    let future_hello = json!({"ok": true, "protocol": 99, "product": "99.0",
        "launch_spec": 5, "capabilities": []});
    let (_dir, path, worker) = scripted_worker(vec![
        encode_reply(&Ok(StateReply {
            state: VmState::Paused,
        })),
        encode_reply::<Ack>(&Err(WorkerError::conflict("no migration is running"))),
        future_hello.to_string(),
        "garbage".into(),
        String::new(),
    ]);
    let c = Client::new(&path).with_timeout(Duration::from_secs(5));
    assert_eq!(c.call(Pause {}).unwrap().state, VmState::Paused);
    let e = c.call(MigrateCancel {}).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Conflict));
    assert!(!e.is_transport());
    assert_eq!(e.to_string(), "no migration is running");
    let e = c.hello().unwrap_err();
    assert!(matches!(e, ClientError::Version(_)), "{e}");
    assert!(e.to_string().contains("protocol version 99"), "{e}");
    let e = c.call(Status {}).unwrap_err();
    assert!(matches!(e, ClientError::BadReply { .. }), "{e}");
    assert!(e.is_transport());
    let e = c.call(Status {}).unwrap_err();
    assert!(matches!(e, ClientError::Closed { .. }), "{e}");
    assert_eq!(
        worker.join().unwrap(),
        vec![
            r#"{"cmd":"pause"}"#,
            r#"{"cmd":"migrate-cancel"}"#,
            r#"{"cmd":"hello"}"#,
            r#"{"cmd":"status"}"#,
            r#"{"cmd":"status"}"#,
        ]
    );
    drop(_dir);
    let e = Client::new(&path).call(Status {}).unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
}

#[tokio::test(flavor = "current_thread")]
#[cfg(feature = "async")]
async fn async_client_returns_typed_replies_and_times_out() {
    let (_dir, path, worker) = scripted_worker(vec![
        encode_reply(&Ok(HelloReply::new("0.1.0", vec![Capability::LaunchSpec]))),
        encode_reply::<DiskQosReply>(&Err(WorkerError::not_found("no disk 3"))),
    ]);
    let c = AsyncClient::new(&path).with_timeout(Duration::from_secs(5));
    assert!(c.hello().await.unwrap().has(Capability::LaunchSpec));
    let e = c
        .call(DiskQos {
            disk: 3,
            ..DiskQos::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    worker.join().unwrap();
    // A worker that accepts and never answers.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mute.sock");
    let _listener = UnixListener::bind(&p).unwrap();
    let e = AsyncClient::new(&p)
        .call_timeout(Status {}, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
}
