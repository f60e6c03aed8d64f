//! This daemon as a node of a failover cluster on etcd (`ternd --cluster
//! URLS --node NAME`): it joins at start (or fails with nothing registered),
//! keeps its lease alive, and answers `/v1/cluster` for the whole cluster.
//! What it does with clustered VMs (ownership, renewals, failover) is in
//! [`crate::failover`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tern_api::{
    AddClusterVm, ClusterInfo, ClusterNode, ClusterNodeList, ClusterNodeState, ClusterVmList,
};
use tern_cluster::{
    membership, ownership, vm, Claim, ClusterError, Membership, NodeSpec, NodeState,
};

use crate::api::ApiErr;
use crate::daemon::Daemon;
use crate::error::chain;

/// How long joining waits for etcd before it gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `--cluster` and its companions.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// This node's name.
    pub node: String,
    /// The node lease's TTL.
    pub ttl: Duration,
}

/// Joining the cluster failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot join the cluster as node '{node}'")]
pub struct JoinError {
    /// The node name.
    pub node: String,
    /// Why.
    #[source]
    pub source: ClusterError,
}

/// This daemon's place in the cluster, once joined.
pub struct Joined {
    pub(crate) settings: ClusterSettings,
    pub(crate) membership: Membership,
    /// The clustered VMs this node owns, by VM name.
    pub(crate) claims: Mutex<HashMap<String, Claim>>,
    /// VMs the last placement round could not place, with why.
    pub(crate) unplaced: Mutex<BTreeMap<String, String>>,
}

/// What this host offers: its memory and CPUs.
fn capacity() -> (u64, u32) {
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    let vcpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    (memory, vcpus)
}

/// Joins the cluster named by `settings`; on success the daemon answers
/// `/v1/cluster`. `api_url` is where this node's API answers on TCP.
pub async fn join(
    d: &Arc<Daemon>,
    settings: ClusterSettings,
    api_url: Option<String>,
) -> Result<(), JoinError> {
    let err = |source| JoinError {
        node: settings.node.clone(),
        source,
    };
    let client = tern_cluster::connect(&settings.endpoints, CONNECT_TIMEOUT)
        .await
        .map_err(err)?;
    let (memory, vcpus) = capacity();
    let spec = NodeSpec {
        name: settings.node.clone(),
        api_url,
        memory,
        vcpus,
    };
    let membership = Membership::join(&client, spec, settings.ttl)
        .await
        .map_err(err)?;
    tracing::info!(
        "cluster: joined as node '{}' (lease {:x}, TTL {:?})",
        settings.node,
        membership.lease(),
        settings.ttl
    );
    let mut renewals = membership.renewals();
    let node = settings.node.clone();
    tokio::spawn(async move {
        while renewals.changed().await.is_ok() {
            if renewals.borrow().lost {
                tracing::error!(
                    "cluster: node '{node}' lost its lease; it is down for the cluster"
                );
                return;
            }
        }
    });
    let joined = Arc::new(Joined {
        settings,
        membership,
        claims: Default::default(),
        unplaced: Default::default(),
    });
    let _ = d.cluster.set(joined.clone());
    crate::failover::spawn(d.clone(), joined);
    Ok(())
}

fn joined(d: &Daemon) -> Result<Arc<Joined>, ApiErr> {
    d.cluster.get().cloned().ok_or_else(|| {
        ApiErr(
            StatusCode::NOT_FOUND,
            "not_found",
            "this daemon is not in a cluster (start ternd with --cluster URLS --node NAME)".into(),
        )
    })
}

fn unavailable(e: ClusterError) -> ApiErr {
    ApiErr(
        StatusCode::SERVICE_UNAVAILABLE,
        "cluster_unavailable",
        chain(&e),
    )
}

fn api_node(n: membership::NodeStatus) -> ClusterNode {
    ClusterNode {
        name: n.spec.name,
        state: match n.state {
            NodeState::Up => ClusterNodeState::Up,
            NodeState::Paused => ClusterNodeState::Paused,
            NodeState::Down => ClusterNodeState::Down,
            NodeState::Quarantined => ClusterNodeState::Quarantined,
        },
        api_url: n.spec.api_url,
        memory: n.spec.memory,
        vcpus: n.spec.vcpus,
    }
}

/// `GET /v1/cluster/nodes`.
pub async fn list_nodes(State(d): State<Arc<Daemon>>) -> Result<Json<ClusterNodeList>, ApiErr> {
    let c = joined(&d)?;
    let nodes = membership::nodes(c.membership.client())
        .await
        .map_err(unavailable)?;
    Ok(Json(ClusterNodeList {
        nodes: nodes.into_iter().map(api_node).collect(),
    }))
}

/// `GET /v1/cluster`.
pub async fn info(State(d): State<Arc<Daemon>>) -> Result<Json<ClusterInfo>, ApiErr> {
    let c = joined(&d)?;
    let client = c.membership.client();
    let nodes = membership::nodes(client).await.map_err(unavailable)?;
    let vms = vm::list_vms(client).await.map_err(unavailable)?;
    let owners = ownership::owners(client).await.map_err(unavailable)?;
    let up = nodes
        .iter()
        .filter(|n| matches!(n.state, NodeState::Up | NodeState::Paused))
        .count();
    Ok(Json(ClusterInfo {
        node: c.settings.node.clone(),
        endpoints: c.settings.endpoints.clone(),
        ttl_s: c.settings.ttl.as_secs(),
        nodes_up: up as u32,
        nodes_total: nodes.len() as u32,
        vms: vms.len() as u32,
        vms_owned: owners.len() as u32,
    }))
}

/// `GET /v1/cluster/vms`: every clustered VM with its owner.
pub async fn list_vms(State(d): State<Arc<Daemon>>) -> Result<Json<ClusterVmList>, ApiErr> {
    let c = joined(&d)?;
    Ok(Json(ClusterVmList {
        vms: crate::failover::list(&c).await?,
    }))
}

/// `POST /v1/cluster/vms`: makes a VM of this node clustered.
pub async fn add_vm(
    State(d): State<Arc<Daemon>>,
    crate::api::Body(req): crate::api::Body<AddClusterVm>,
) -> Result<Json<tern_api::ClusterVm>, ApiErr> {
    let c = joined(&d)?;
    Ok(Json(crate::failover::add_vm(&d, &c, &req).await?))
}
