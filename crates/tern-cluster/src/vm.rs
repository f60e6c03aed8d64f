//! Clustered VMs: their configuration lives in etcd, so any node can start
//! them. Runtime types here; the stored form is [`crate::wire::VmConfigDoc`].

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use crate::error::{retry, ClusterError, Result};
use crate::keys;
use crate::wire::{self, DiskDoc, DiskFormatDoc, PriorityDoc, StoppedDoc, VmConfigDoc};

/// Start priority: the order in which a lost node's VMs are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Started first.
    High,
    /// The default.
    Medium,
    /// Started last.
    Low,
    /// Never started by the cluster (an operator starts it).
    NoAutoStart,
}

impl Priority {
    /// Parses `high`, `medium`, `low` or `no-auto-start`.
    pub fn parse(text: &str) -> Option<Priority> {
        Some(match text {
            "high" => Priority::High,
            "medium" => Priority::Medium,
            "low" => Priority::Low,
            "no-auto-start" => Priority::NoAutoStart,
            _ => return None,
        })
    }

    /// The name [`Priority::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
            Priority::NoAutoStart => "no-auto-start",
        }
    }
}

/// A disk image's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image.
    Raw,
    /// A VHDX image.
    Vhdx,
}

/// A disk of a clustered VM, on storage every node reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDisk {
    /// Absolute path of the image.
    pub path: String,
    /// Its format.
    pub format: DiskFormat,
    /// Its virtual size in bytes.
    pub size: u64,
}

/// A clustered VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterVm {
    /// The VM's name (one key segment).
    pub name: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory: u64,
    /// The guest (`probe:WORKLOAD`).
    pub guest: String,
    /// Disk images on shared storage, in attach order.
    pub disks: Vec<ClusterDisk>,
    /// Start priority.
    pub priority: Priority,
    /// Nodes to prefer, best first.
    pub preferred_owners: Vec<String>,
    /// VMs of one class are kept apart while room allows.
    pub anti_affinity: Option<String>,
}

impl ClusterVm {
    fn to_doc(&self) -> VmConfigDoc {
        VmConfigDoc {
            version: wire::VERSION,
            vcpus: self.vcpus,
            memory: self.memory,
            guest: self.guest.clone(),
            disks: self
                .disks
                .iter()
                .map(|d| DiskDoc {
                    path: d.path.clone(),
                    format: match d.format {
                        DiskFormat::Raw => DiskFormatDoc::Raw,
                        DiskFormat::Vhdx => DiskFormatDoc::Vhdx,
                    },
                    size: d.size,
                })
                .collect(),
            priority: match self.priority {
                Priority::High => PriorityDoc::High,
                Priority::Medium => PriorityDoc::Medium,
                Priority::Low => PriorityDoc::Low,
                Priority::NoAutoStart => PriorityDoc::NoAutoStart,
            },
            preferred_owners: self.preferred_owners.clone(),
            anti_affinity: self.anti_affinity.clone(),
        }
    }

    fn from_doc(name: String, doc: VmConfigDoc) -> ClusterVm {
        ClusterVm {
            name,
            vcpus: doc.vcpus,
            memory: doc.memory,
            guest: doc.guest,
            disks: doc
                .disks
                .into_iter()
                .map(|d| ClusterDisk {
                    path: d.path,
                    format: match d.format {
                        DiskFormatDoc::Raw => DiskFormat::Raw,
                        DiskFormatDoc::Vhdx => DiskFormat::Vhdx,
                    },
                    size: d.size,
                })
                .collect(),
            priority: match doc.priority {
                PriorityDoc::High => Priority::High,
                PriorityDoc::Medium => Priority::Medium,
                PriorityDoc::Low => Priority::Low,
                PriorityDoc::NoAutoStart => Priority::NoAutoStart,
            },
            preferred_owners: doc.preferred_owners,
            anti_affinity: doc.anti_affinity,
        }
    }

    fn check(&self) -> Result<()> {
        keys::check_name("vm", &self.name)?;
        for n in &self.preferred_owners {
            keys::check_name("node", n)?;
        }
        if self.disks.iter().any(|d| !d.path.starts_with('/')) {
            return Err(ClusterError::BadSetting(
                "a clustered VM's disks must be absolute paths on shared storage",
            ));
        }
        Ok(())
    }
}

/// Stores (creates or replaces) a clustered VM's configuration. With
/// `stopped_by`, the VM is also marked stopped (by that node) in the same
/// transaction, so no node restarts it before someone starts it.
pub async fn put_vm(client: &Client, vm: &ClusterVm, stopped_by: Option<&str>) -> Result<()> {
    vm.check()?;
    let mut ops = vec![TxnOp::put(
        keys::vm_config(&vm.name),
        wire::encode(&vm.to_doc()),
        None,
    )];
    if let Some(node) = stopped_by {
        keys::check_name("node", node)?;
        let doc = StoppedDoc {
            version: wire::VERSION,
            node: node.to_owned(),
        };
        ops.push(TxnOp::put(
            keys::vm_stopped(&vm.name),
            wire::encode(&doc),
            None,
        ));
    }
    let txn = Txn::new().and_then(ops);
    retry("put vm config", || {
        let (mut c, t) = (client.clone(), txn.clone());
        async move { c.txn(t).await }
    })
    .await?;
    Ok(())
}

/// The VMs marked stopped (no node restarts them).
pub async fn stopped_vms(client: &Client) -> Result<std::collections::BTreeSet<String>> {
    let got = crate::membership::get_prefix(client, "list stopped vms", keys::VMS).await?;
    let mut out = std::collections::BTreeSet::new();
    for kv in got.kvs() {
        let Ok(key) = std::str::from_utf8(kv.key()) else {
            continue;
        };
        if let Some(keys::VmKey::Stopped(name)) = keys::parse_vm_key(key) {
            out.insert(name.to_owned());
        }
    }
    Ok(out)
}

/// One clustered VM, or [`ClusterError::UnknownVm`].
pub async fn get_vm(client: &Client, name: &str) -> Result<ClusterVm> {
    keys::check_name("vm", name)?;
    let key = keys::vm_config(name);
    let got = retry("get vm config", || {
        let (mut c, k) = (client.clone(), key.clone());
        async move { c.get(k, None).await }
    })
    .await?;
    let kv = got
        .kvs()
        .first()
        .ok_or_else(|| ClusterError::UnknownVm(name.to_owned()))?;
    Ok(ClusterVm::from_doc(
        name.to_owned(),
        wire::decode(kv.key(), kv.value())?,
    ))
}

/// Every clustered VM, by name.
pub async fn list_vms(client: &Client) -> Result<Vec<ClusterVm>> {
    let got = crate::membership::get_prefix(client, "list vms", keys::VMS).await?;
    let mut out = Vec::new();
    for kv in got.kvs() {
        let Ok(key) = std::str::from_utf8(kv.key()) else {
            continue;
        };
        if let Some(keys::VmKey::Config(name)) = keys::parse_vm_key(key) {
            out.push(ClusterVm::from_doc(
                name.to_owned(),
                wire::decode(kv.key(), kv.value())?,
            ));
        }
    }
    Ok(out)
}

/// Removes a clustered VM's configuration; refused while a node owns it.
pub async fn delete_vm(client: &Client, name: &str) -> Result<()> {
    keys::check_name("vm", name)?;
    let owner_key = keys::vm_owner(name);
    let txn = Txn::new()
        .when([Compare::create_revision(
            owner_key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then([
            TxnOp::delete(keys::vm_config(name), None),
            TxnOp::delete(keys::vm_stopped(name), None),
        ])
        .or_else([TxnOp::get(owner_key, None)]);
    let done = retry("delete vm", || {
        let (mut c, t) = (client.clone(), txn.clone());
        async move { c.txn(t).await }
    })
    .await?;
    if done.succeeded() {
        return Ok(());
    }
    match crate::ownership::owner(client, name).await? {
        Some(claim) => Err(ClusterError::Owned {
            vm: name.to_owned(),
            owner: claim.node,
            token: claim.token,
        }),
        None => Err(ClusterError::UnknownVm(name.to_owned())),
    }
}
