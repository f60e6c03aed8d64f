//! The documents stored in etcd: serde types with a version number, apart
//! from the runtime types (`membership`, `vm`) so the stored form can evolve
//! on its own. Every document is JSON `{"version": N, ...}`.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{ClusterError, Result};

/// The version of every document this build writes and reads.
pub const VERSION: u32 = 1;

/// `members/NODE`: a node's permanent record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberDoc {
    /// [`VERSION`].
    pub version: u32,
    /// Where the node's REST API answers (`http://HOST:PORT`), if it serves TCP.
    pub api_url: Option<String>,
    /// Memory the node offers to VMs, in bytes.
    pub memory: u64,
    /// vCPUs the node offers to VMs.
    pub vcpus: u32,
    /// Set by an operator or by the quarantine rule.
    pub quarantined: bool,
}

/// `alive/NODE`: present while the node's lease lives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AliveDoc {
    /// [`VERSION`].
    pub version: u32,
    /// `true` while paused (draining): no VM is placed there.
    pub paused: bool,
    /// The lease's id (for an operator's `etcdctl lease timetolive`).
    pub lease: i64,
}

/// Start priority of a clustered VM.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum PriorityDoc {
    /// Started first.
    High,
    /// The default.
    Medium,
    /// Started last.
    Low,
    /// Never started by the cluster.
    NoAutoStart,
}

/// A disk image's format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormatDoc {
    /// A raw image.
    Raw,
    /// A VHDX image.
    Vhdx,
}

/// A disk of a clustered VM: a path on storage every node reaches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskDoc {
    /// Absolute path of the image on shared storage.
    pub path: String,
    /// Its format (as the creating node's registry recorded it).
    pub format: DiskFormatDoc,
    /// Its virtual size in bytes.
    pub size: u64,
}

/// `vms/VM/config`: a clustered VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmConfigDoc {
    /// [`VERSION`].
    pub version: u32,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory: u64,
    /// The guest (`probe:WORKLOAD`).
    pub guest: String,
    /// The disks, on shared storage.
    pub disks: Vec<DiskDoc>,
    /// Start priority.
    pub priority: PriorityDoc,
    /// Nodes to prefer, best first.
    pub preferred_owners: Vec<String>,
    /// VMs of one class are kept on different nodes while room allows.
    pub anti_affinity: Option<String>,
}

/// `vms/VM/owner`: who runs the VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OwnerDoc {
    /// [`VERSION`].
    pub version: u32,
    /// The owning node.
    pub node: String,
}

/// `vms/VM/stopped`: the VM was stopped on purpose (or never started); no
/// node restarts it. Written when an owner releases the VM cleanly, deleted
/// by the next claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoppedDoc {
    /// [`VERSION`].
    pub version: u32,
    /// The node that stopped it (or registered it stopped).
    pub node: String,
}

/// `IMAGE.owner`, beside a clustered VM's disk image: the fencing token of
/// the last owner that started the VM on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenDoc {
    /// [`VERSION`].
    pub version: u32,
    /// The owner's fencing token (the owner key's etcd revision).
    pub token: i64,
    /// The node that held it.
    pub node: String,
}

/// A document that carries its version.
pub trait Versioned {
    /// The document's version field.
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(
        impl Versioned for $t {
            fn version(&self) -> u32 {
                self.version
            }
        }
    )*};
}
versioned!(
    MemberDoc,
    AliveDoc,
    VmConfigDoc,
    OwnerDoc,
    StoppedDoc,
    TokenDoc
);

/// Encodes a document.
pub fn encode<T: Serialize>(doc: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(doc).expect("cluster documents serialize")
}

/// Decodes the document at `key`, checking its version.
pub fn decode<T: DeserializeOwned + Versioned>(key: &[u8], value: &[u8]) -> Result<T> {
    let key = String::from_utf8_lossy(key).into_owned();
    // Read the version first, so a newer document is reported as such and
    // not as an unknown field.
    #[derive(Deserialize)]
    struct Probe {
        version: u32,
    }
    let probe: Probe =
        serde_json::from_slice(value).map_err(|source| ClusterError::BadDocument {
            key: key.clone(),
            source,
        })?;
    if probe.version != VERSION {
        return Err(ClusterError::DocumentVersion {
            key,
            found: probe.version,
            expected: VERSION,
        });
    }
    let doc: T = serde_json::from_slice(value)
        .map_err(|source| ClusterError::BadDocument { key, source })?;
    debug_assert_eq!(doc.version(), VERSION);
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip_and_versions_are_checked() {
        let doc = OwnerDoc {
            version: VERSION,
            node: "n1".into(),
        };
        let bytes = encode(&doc);
        assert_eq!(decode::<OwnerDoc>(b"k", &bytes).unwrap(), doc);
        let newer = br#"{"version":2,"node":"n1","extra":1}"#;
        assert!(matches!(
            decode::<OwnerDoc>(b"k", newer),
            Err(ClusterError::DocumentVersion { found: 2, .. })
        ));
        assert!(matches!(
            decode::<OwnerDoc>(b"k", b"not json"),
            Err(ClusterError::BadDocument { .. })
        ));
    }
}
