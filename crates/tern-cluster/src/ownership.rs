//! Ownership: which node runs a clustered VM. The owner key is created only
//! if absent, bound to the owner's lease, in one etcd transaction; so a new
//! owner can claim only after etcd deleted the old owner's key (its lease
//! expired or was revoked). The key's mod revision is the claim's fencing
//! token: it only grows, and the disk hand-over refuses an older one.

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

use crate::error::{retry, ClusterError, Result};
use crate::keys;
use crate::wire::{self, OwnerDoc, StoppedDoc};

/// A held (or observed) ownership of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The VM.
    pub vm: String,
    /// The owning node.
    pub node: String,
    /// The fencing token: the owner key's mod revision.
    pub token: i64,
    /// The lease the key is bound to.
    pub lease: i64,
}

/// Claims VM `vm` for `node` under its `lease`. Fails with
/// [`ClusterError::Owned`] while any owner key exists (a live owner's lease).
pub async fn claim(client: &Client, vm: &str, node: &str, lease: i64) -> Result<Claim> {
    keys::check_name("vm", vm)?;
    keys::check_name("node", node)?;
    let key = keys::vm_owner(vm);
    let doc = OwnerDoc {
        version: wire::VERSION,
        node: node.to_owned(),
    };
    let txn = Txn::new()
        .when([
            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            // Only a configured VM can be owned.
            Compare::create_revision(keys::vm_config(vm), CompareOp::Greater, 0),
        ])
        .and_then([
            TxnOp::put(
                key.clone(),
                wire::encode(&doc),
                Some(PutOptions::new().with_lease(lease)),
            ),
            // Claimed: meant to run again.
            TxnOp::delete(keys::vm_stopped(vm), None),
        ])
        .or_else([TxnOp::get(key, None)]);
    let done = retry("claim", || {
        let (mut c, t) = (client.clone(), txn.clone());
        async move { c.txn(t).await }
    })
    .await?;
    if done.succeeded() {
        // One revision for the whole transaction: the put's mod revision
        // is the header's.
        let token = done
            .header()
            .map(|h| h.revision())
            .ok_or(ClusterError::BadSetting("etcd sent no response header"))?;
        return Ok(Claim {
            vm: vm.to_owned(),
            node: node.to_owned(),
            token,
            lease,
        });
    }
    for reply in done.op_responses() {
        if let TxnOpResponse::Get(got) = reply {
            if let Some(kv) = got.kvs().first() {
                let doc: OwnerDoc = wire::decode(kv.key(), kv.value())?;
                return Err(ClusterError::Owned {
                    vm: vm.to_owned(),
                    owner: doc.node,
                    token: kv.mod_revision(),
                });
            }
        }
    }
    Err(ClusterError::UnknownVm(vm.to_owned()))
}

/// Who owns `vm` now, if anyone.
pub async fn owner(client: &Client, vm: &str) -> Result<Option<Claim>> {
    keys::check_name("vm", vm)?;
    let key = keys::vm_owner(vm);
    let got = retry("get owner", || {
        let (mut c, k) = (client.clone(), key.clone());
        async move { c.get(k, None).await }
    })
    .await?;
    match got.kvs().first() {
        Some(kv) => {
            let doc: OwnerDoc = wire::decode(kv.key(), kv.value())?;
            Ok(Some(Claim {
                vm: vm.to_owned(),
                node: doc.node,
                token: kv.mod_revision(),
                lease: kv.lease(),
            }))
        }
        None => Ok(None),
    }
}

/// Every current claim.
pub async fn owners(client: &Client) -> Result<Vec<Claim>> {
    let got = crate::membership::get_prefix(client, "list owners", keys::VMS).await?;
    let mut out = Vec::new();
    for kv in got.kvs() {
        let Ok(key) = std::str::from_utf8(kv.key()) else {
            continue;
        };
        if let Some(keys::VmKey::Owner(vm)) = keys::parse_vm_key(key) {
            let doc: OwnerDoc = wire::decode(kv.key(), kv.value())?;
            out.push(Claim {
                vm: vm.to_owned(),
                node: doc.node,
                token: kv.mod_revision(),
                lease: kv.lease(),
            });
        }
    }
    Ok(out)
}

/// Gives up a claim; refused with [`ClusterError::NotOwner`] when the key
/// is no longer this claim's. `stopped`: the VM was stopped on purpose, so
/// it is marked stopped in the same transaction and no node restarts it;
/// otherwise any node may place it again.
pub async fn release(client: &Client, claim: &Claim, stopped: bool) -> Result<()> {
    let key = keys::vm_owner(&claim.vm);
    let mut ops = vec![TxnOp::delete(key.clone(), None)];
    if stopped {
        let doc = StoppedDoc {
            version: wire::VERSION,
            node: claim.node.clone(),
        };
        ops.push(TxnOp::put(
            keys::vm_stopped(&claim.vm),
            wire::encode(&doc),
            None,
        ));
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            claim.token,
        )])
        .and_then(ops);
    let done = retry("release", || {
        let (mut c, t) = (client.clone(), txn.clone());
        async move { c.txn(t).await }
    })
    .await?;
    if done.succeeded() {
        Ok(())
    } else {
        Err(ClusterError::NotOwner {
            vm: claim.vm.clone(),
            token: claim.token,
        })
    }
}
