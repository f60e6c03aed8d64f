//! Membership, ownership and fencing tokens against three real etcd members.

use std::time::{Duration, Instant};

use tern_cluster::testing::EtcdCluster;
use tern_cluster::{
    membership, ownership, vm, ClusterError, ClusterVm, Membership, NodeEvent, NodeEvents,
    NodeSpec, NodeState, Priority,
};

const TTL: Duration = Duration::from_secs(2);

fn spec(name: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        api_url: None,
        memory: 4 << 30,
        vcpus: 4,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn lease_expiry_hands_ownership_over_with_a_larger_token() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut etcd) = EtcdCluster::start(
        "lease_expiry_hands_ownership_over_with_a_larger_token",
        dir.path(),
        3,
    ) else {
        return;
    };
    let endpoints = etcd.endpoints();
    runtime().block_on(async {
        let client = tern_cluster::connect(&endpoints, Duration::from_secs(2))
            .await
            .unwrap();
        let n1 = Membership::join(&client, spec("n1"), TTL).await.unwrap();
        let n2 = Membership::join(&client, spec("n2"), TTL).await.unwrap();
        // A second daemon under a live name is refused, leaving nothing.
        let dup = Membership::join(&client, spec("n1"), TTL).await;
        assert!(
            matches!(dup, Err(ClusterError::NodeAlreadyUp(ref n)) if n == "n1"),
            "{:?}",
            dup.err()
        );
        assert!(matches!(
            membership::node(&client, "nope").await,
            Err(ClusterError::UnknownNode(_))
        ));

        let web = ClusterVm {
            name: "web".into(),
            vcpus: 1,
            memory: 256 << 20,
            guest: "probe:hello".into(),
            disks: vec![vm::ClusterDisk {
                path: "/shared/web.vhdx".into(),
                format: vm::DiskFormat::Vhdx,
                size: 1 << 30,
            }],
            priority: Priority::High,
            preferred_owners: vec!["n1".into()],
            anti_affinity: None,
        };
        vm::put_vm(&client, &web, None).await.unwrap();
        assert_eq!(vm::get_vm(&client, "web").await.unwrap(), web);
        // An unconfigured VM cannot be owned.
        assert!(ownership::claim(&client, "ghost", "n1", n1.lease())
            .await
            .is_err());

        let first = ownership::claim(&client, "web", "n1", n1.lease())
            .await
            .unwrap();
        match ownership::claim(&client, "web", "n2", n2.lease()).await {
            Err(ClusterError::Owned { owner, token, .. }) => {
                assert_eq!(owner, "n1");
                assert_eq!(token, first.token);
            }
            other => panic!("second claim while n1 lives: {other:?}"),
        }
        assert!(matches!(
            vm::delete_vm(&client, "web").await,
            Err(ClusterError::Owned { .. })
        ));

        // n1 stops renewing (its daemon died): etcd deletes its keys after
        // the TTL, the watch says so, and only then can n2 claim.
        let mut events = NodeEvents::start(&client, 0).await.unwrap();
        let n1_renewals = n1.renewals();
        let last = n1_renewals.borrow().earliest_expiry();
        drop(n1);
        let down = tokio::time::timeout(TTL * 3, async {
            loop {
                match events.next().await.unwrap() {
                    Some(NodeEvent::Down { node }) if node == "n1" => return Instant::now(),
                    Some(_) => {}
                    None => panic!("watch closed"),
                }
            }
        })
        .await
        .expect("n1 declared down within 3 TTLs");
        assert!(
            down >= last,
            "etcd expired n1's lease before its last renewal + TTL"
        );
        let nodes = membership::nodes(&client).await.unwrap();
        let state = |n: &str| nodes.iter().find(|s| s.spec.name == n).unwrap().state;
        assert_eq!(state("n1"), NodeState::Down);
        assert_eq!(state("n2"), NodeState::Up);
        assert!(ownership::owner(&client, "web").await.unwrap().is_none());
        let second = ownership::claim(&client, "web", "n2", n2.lease())
            .await
            .unwrap();
        assert!(second.token > first.token, "{second:?} after {first:?}");
        // The stale owner cannot release the new owner's claim.
        assert!(matches!(
            ownership::release(&client, &first, false).await,
            Err(ClusterError::NotOwner { .. })
        ));

        // One etcd member of three gone: renewals go on.
        etcd.kill(0);
        let mut renewals = n2.renewals();
        let before = renewals.borrow().sent_at;
        tokio::time::timeout(TTL * 3, async {
            loop {
                renewals.changed().await.unwrap();
                let r = *renewals.borrow();
                assert!(!r.lost, "n2 lost its lease with 2 of 3 etcd members up");
                if r.sent_at > before + TTL {
                    return;
                }
            }
        })
        .await
        .expect("renewals go on with one etcd member down");
        n2.set_paused(true).await.unwrap();
        assert_eq!(
            membership::node(&client, "n2").await.unwrap().state,
            NodeState::Paused
        );
        ownership::release(&client, &second, true).await.unwrap();
        n2.leave().await.unwrap();
        assert_eq!(
            membership::node(&client, "n2").await.unwrap().state,
            NodeState::Down
        );
    });
}

#[test]
fn unreachable_etcd_is_a_clear_error() {
    let rt = runtime();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoints = vec![format!("http://127.0.0.1:{port}")];
    let started = Instant::now();
    let err = rt
        .block_on(tern_cluster::connect(&endpoints, Duration::from_secs(1)))
        .err()
        .expect("nothing listens there");
    assert!(matches!(err, ClusterError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&endpoints[0]), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
