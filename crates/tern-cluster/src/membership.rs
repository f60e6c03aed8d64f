//! Membership: each node holds one etcd lease, kept alive while its daemon
//! runs. Its `alive/NODE` key is bound to that lease, so etcd itself declares
//! the node down (deletes the key) when renewals stop for a TTL. Everyone else
//! learns it from a watch.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream, Watcher,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{etcd, retry, ClusterError, Result};
use crate::keys;
use crate::wire::{self, AliveDoc, MemberDoc};

/// The default lease TTL (the anchor: WSFC's 10 missed 1 s heartbeats).
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Connects to etcd and proves an endpoint answers, so a daemon that cannot
/// reach it fails at start with nothing registered.
pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Client> {
    let unreachable = |source| ClusterError::Unreachable {
        endpoints: endpoints.join(","),
        source,
    };
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(1), timeout);
    let client = Client::connect(endpoints, Some(options))
        .await
        .map_err(unreachable)?;
    // Retried like any request: the balancer may first pick a member that
    // is down while another answers.
    retry("connect", || {
        let mut c = client.clone();
        async move {
            c.get(keys::ROOT, Some(GetOptions::new().with_count_only()))
                .await
        }
    })
    .await
    .map_err(|e| match e {
        ClusterError::Etcd { source, .. } => unreachable(source),
        other => other,
    })?;
    Ok(client)
}

/// What a node offers to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's name (one key segment).
    pub name: String,
    /// Where its REST API answers, if over TCP.
    pub api_url: Option<String>,
    /// Memory offered to VMs, in bytes.
    pub memory: u64,
    /// vCPUs offered to VMs.
    pub vcpus: u32,
}

/// A node's state as the cluster sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Alive and taking VMs.
    Up,
    /// Alive, draining: takes no VMs.
    Paused,
    /// Its lease expired (or it left).
    Down,
    /// Kept out of the cluster by an operator or the quarantine rule.
    Quarantined,
}

impl NodeState {
    /// The lower-case name used by the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Paused => "paused",
            NodeState::Down => "down",
            NodeState::Quarantined => "quarantined",
        }
    }
}

/// A node as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// What it offers.
    pub spec: NodeSpec,
    /// Its state.
    pub state: NodeState,
    /// Its lease, while up or paused.
    pub lease: Option<i64>,
}

/// The latest renewal of a node's lease that etcd confirmed.
#[derive(Debug, Clone, Copy)]
pub struct Renewal {
    /// When the confirmed keepalive was *sent* (a lower bound on when etcd
    /// renewed it: the lease lives at least until this + `ttl`).
    pub sent_at: Instant,
    /// The TTL etcd granted on that renewal.
    pub ttl: Duration,
    /// The fencing-relevant end: set once etcd says the lease is gone.
    pub lost: bool,
}

impl Renewal {
    /// The earliest instant at which the lease may expire after this renewal.
    pub fn earliest_expiry(&self) -> Instant {
        self.sent_at + self.ttl
    }
}

/// A node's membership: its lease, kept alive by a background task until
/// [`Membership::leave`] or drop.
pub struct Membership {
    client: Client,
    spec: NodeSpec,
    lease: i64,
    ttl: Duration,
    renewals: watch::Receiver<Renewal>,
    keeper: JoinHandle<()>,
}

impl Membership {
    /// Joins the cluster as `spec.name` with a lease of `ttl` (whole seconds,
    /// at least 2). Fails, leaving nothing behind, when a live daemon already
    /// holds the name or etcd does not answer.
    pub async fn join(client: &Client, spec: NodeSpec, ttl: Duration) -> Result<Membership> {
        keys::check_name("node", &spec.name)?;
        if ttl < Duration::from_secs(2) || ttl.subsec_nanos() != 0 {
            return Err(ClusterError::BadSetting(
                "lease TTL must be a whole number of seconds, at least 2",
            ));
        }
        let mut client = client.clone();
        let granted = retry("lease grant", || {
            let mut c = client.clone();
            async move { c.lease_grant(ttl.as_secs() as i64, None).await }
        })
        .await?;
        let lease = granted.id();
        let sent_at = Instant::now();
        match register(&mut client, &spec, lease).await {
            Ok(()) => {}
            Err(e) => {
                // Nothing half-registered: the lease goes (and with it
                // anything bound to it) before the error is reported.
                let _ = client.lease_revoke(lease).await;
                return Err(e);
            }
        }
        let (tx, renewals) = watch::channel(Renewal {
            sent_at,
            ttl: Duration::from_secs(granted.ttl().max(0) as u64),
            lost: false,
        });
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            spec.name.clone(),
            lease,
            ttl,
            tx,
        ));
        Ok(Membership {
            client,
            spec,
            lease,
            ttl,
            renewals,
            keeper,
        })
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.spec.name
    }

    /// The node's lease id.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The lease TTL asked for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The etcd client this membership uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Confirmed renewals, newest last; `lost` once the lease is gone.
    pub fn renewals(&self) -> watch::Receiver<Renewal> {
        self.renewals.clone()
    }

    /// Marks the node paused (draining; takes no VMs) or up again.
    pub async fn set_paused(&self, paused: bool) -> Result<()> {
        let key = keys::alive(&self.spec.name);
        let doc = AliveDoc {
            version: wire::VERSION,
            paused,
            lease: self.lease,
        };
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, self.lease)])
            .and_then([TxnOp::put(
                key,
                wire::encode(&doc),
                Some(PutOptions::new().with_lease(self.lease)),
            )]);
        let done = retry("pause", || {
            let (mut c, t) = (self.client.clone(), txn.clone());
            async move { c.txn(t).await }
        })
        .await?;
        if done.succeeded() {
            Ok(())
        } else {
            Err(ClusterError::LeaseLost(self.spec.name.clone()))
        }
    }

    /// Leaves the cluster: revokes the lease, so the node is down at once and
    /// every VM it owned may be claimed by another.
    pub async fn leave(self) -> Result<()> {
        self.keeper.abort();
        let lease = self.lease;
        retry("lease revoke", || {
            let mut c = self.client.clone();
            async move { c.lease_revoke(lease).await }
        })
        .await?;
        Ok(())
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // Without renewals the lease expires within a TTL: the cluster sees
        // the node go down as if it had crashed.
        self.keeper.abort();
    }
}

/// Writes the member record and the leased alive key in one transaction,
/// only if no live daemon holds the name.
async fn register(client: &mut Client, spec: &NodeSpec, lease: i64) -> Result<()> {
    let member_key = keys::member(&spec.name);
    // A quarantine survives a restart of the daemon.
    let got = retry("get member", || {
        let (mut c, k) = (client.clone(), member_key.clone());
        async move { c.get(k, None).await }
    })
    .await?;
    let quarantined = match got.kvs().first() {
        Some(kv) => wire::decode::<MemberDoc>(kv.key(), kv.value())?.quarantined,
        None => false,
    };
    let member = MemberDoc {
        version: wire::VERSION,
        api_url: spec.api_url.clone(),
        memory: spec.memory,
        vcpus: spec.vcpus,
        quarantined,
    };
    let alive = AliveDoc {
        version: wire::VERSION,
        paused: false,
        lease,
    };
    let alive_key = keys::alive(&spec.name);
    let txn = Txn::new()
        .when([Compare::create_revision(
            alive_key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then([
            TxnOp::put(member_key, wire::encode(&member), None),
            TxnOp::put(
                alive_key,
                wire::encode(&alive),
                Some(PutOptions::new().with_lease(lease)),
            ),
        ]);
    let done = retry("join", || {
        let (mut c, t) = (client.clone(), txn.clone());
        async move { c.txn(t).await }
    })
    .await?;
    if done.succeeded() {
        Ok(())
    } else {
        Err(ClusterError::NodeAlreadyUp(spec.name.clone()))
    }
}

/// Renews the lease every third of its TTL, publishing each confirmed
/// renewal; reconnects the keepalive stream after errors. Ends when etcd
/// reports the lease gone.
async fn keep_alive(
    mut client: Client,
    node: String,
    lease: i64,
    ttl: Duration,
    tx: watch::Sender<Renewal>,
) {
    let period = ttl / 3;
    let mut stream = None;
    loop {
        if stream.is_none() {
            match client.lease_keep_alive(lease).await {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    tracing::warn!(node, error = %e, "cluster: lease keepalive stream failed");
                    tokio::time::sleep(period / 3).await;
                    continue;
                }
            }
        }
        let (keeper, replies) = stream.as_mut().expect("stream set above");
        let sent_at = Instant::now();
        let answered = match keeper.keep_alive().await {
            Ok(()) => tokio::time::timeout(period, replies.message()).await,
            Err(e) => Ok(Err(e)),
        };
        match answered {
            Ok(Ok(Some(reply))) if reply.ttl() > 0 => {
                let _ = tx.send(Renewal {
                    sent_at,
                    ttl: Duration::from_secs(reply.ttl() as u64),
                    lost: false,
                });
            }
            Ok(Ok(Some(_))) => {
                tracing::error!(node, "cluster: lease expired; this node is down");
                tx.send_modify(|r| r.lost = true);
                return;
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                tracing::warn!(node, "cluster: lease renewal not confirmed; retrying");
                stream = None;
                continue;
            }
        }
        tokio::time::sleep(period.saturating_sub(sent_at.elapsed())).await;
    }
}

/// Every member, with its state.
pub async fn nodes(client: &Client) -> Result<Vec<NodeStatus>> {
    let members = get_prefix(client, "list members", keys::MEMBERS).await?;
    let alive = get_prefix(client, "list alive nodes", keys::ALIVE).await?;
    let mut live = std::collections::HashMap::new();
    for kv in alive.kvs() {
        let name = String::from_utf8_lossy(&kv.key()[keys::ALIVE.len()..]).into_owned();
        live.insert(name, wire::decode::<AliveDoc>(kv.key(), kv.value())?);
    }
    let mut out = Vec::new();
    for kv in members.kvs() {
        let name = String::from_utf8_lossy(&kv.key()[keys::MEMBERS.len()..]).into_owned();
        let doc: MemberDoc = wire::decode(kv.key(), kv.value())?;
        let alive = live.get(&name);
        let state = match (doc.quarantined, alive) {
            (true, _) => NodeState::Quarantined,
            (false, Some(a)) if a.paused => NodeState::Paused,
            (false, Some(_)) => NodeState::Up,
            (false, None) => NodeState::Down,
        };
        out.push(NodeStatus {
            spec: NodeSpec {
                name,
                api_url: doc.api_url,
                memory: doc.memory,
                vcpus: doc.vcpus,
            },
            state,
            lease: alive.map(|a| a.lease),
        });
    }
    Ok(out)
}

/// One member, or [`ClusterError::UnknownNode`].
pub async fn node(client: &Client, name: &str) -> Result<NodeStatus> {
    keys::check_name("node", name)?;
    nodes(client)
        .await?
        .into_iter()
        .find(|n| n.spec.name == name)
        .ok_or_else(|| ClusterError::UnknownNode(name.to_owned()))
}

/// A change of a node's liveness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// The node joined (or its alive record changed); `paused` as now.
    Up {
        /// The node.
        node: String,
        /// Whether it is paused.
        paused: bool,
    },
    /// etcd deleted the node's alive key: its lease expired or was revoked.
    Down {
        /// The node.
        node: String,
    },
}

/// A watch over the nodes' alive keys.
pub struct NodeEvents {
    _watcher: Watcher,
    stream: WatchStream,
    pending: std::collections::VecDeque<NodeEvent>,
}

impl NodeEvents {
    /// Starts watching from etcd revision `from` (0: from now).
    pub async fn start(client: &Client, from: i64) -> Result<NodeEvents> {
        let mut options = WatchOptions::new().with_prefix();
        if from > 0 {
            options = options.with_start_revision(from);
        }
        let (watcher, stream) = retry("watch nodes", || {
            let (mut c, o) = (client.clone(), options.clone());
            async move { c.watch(keys::ALIVE, Some(o)).await }
        })
        .await?;
        Ok(NodeEvents {
            _watcher: watcher,
            stream,
            pending: Default::default(),
        })
    }

    /// The next event; `None` when etcd closed the watch.
    pub async fn next(&mut self) -> Result<Option<NodeEvent>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            let Some(reply) = self.stream.message().await.map_err(etcd("watch nodes"))? else {
                return Ok(None);
            };
            if reply.canceled() {
                return Ok(None);
            }
            for event in reply.events() {
                let Some(kv) = event.kv() else { continue };
                let Some(name) = kv.key().strip_prefix(keys::ALIVE.as_bytes()) else {
                    continue;
                };
                let node = String::from_utf8_lossy(name).into_owned();
                match event.event_type() {
                    EventType::Put => {
                        let doc: AliveDoc = wire::decode(kv.key(), kv.value())?;
                        self.pending.push_back(NodeEvent::Up {
                            node,
                            paused: doc.paused,
                        });
                    }
                    EventType::Delete => self.pending.push_back(NodeEvent::Down { node }),
                }
            }
        }
    }
}

/// Every key under `prefix`.
pub(crate) async fn get_prefix(
    client: &Client,
    what: &'static str,
    prefix: &'static str,
) -> Result<etcd_client::GetResponse> {
    retry(what, || {
        let mut c = client.clone();
        async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
    })
    .await
}
