//! Initiators: the I_T nexus a command arrives on (SAM-5 4.7), named by a
//! transport id.

use serde::{Deserialize, Serialize};

/// Who sent a command. Registrations, reservations, unit attentions and
/// medium-removal prevention are kept per nexus. A target has one port, so
/// the initiator's id names the nexus.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NexusId {
    /// A virtio-scsi controller of a VM (`vm`: the VM's stable id).
    Virtio {
        /// The VM.
        vm: String,
        /// The controller within it.
        controller: u32,
    },
    /// An iSCSI session's initiator port: its IQN and ISID (RFC 7143 10.12.5).
    Iscsi {
        /// Initiator name.
        iqn: String,
        /// Initiator session id.
        isid: [u8; 6],
    },
}

impl NexusId {
    /// The SPC-4 TransportID (7.6.4) of the initiator port, as READ FULL
    /// STATUS returns it. iSCSI uses its own format (protocol 5, format
    /// 01b: "name,i,0x<isid>"); a virtio initiator has no SCSI transport,
    /// so it is given a SAS-style TransportID (protocol 6) with a stable
    /// 8-byte address hashed from its name (NAA 3, locally assigned).
    pub fn transport_id(&self) -> Vec<u8> {
        match self {
            NexusId::Iscsi { iqn, isid } => {
                let mut name = format!("{iqn},i,0x");
                for b in isid {
                    name.push_str(&format!("{b:02x}"));
                }
                let mut bytes = name.into_bytes();
                bytes.push(0);
                // The name is padded to a multiple of 4 bytes.
                while bytes.len() % 4 != 0 {
                    bytes.push(0);
                }
                let mut t = vec![0x40 | 0x05, 0];
                t.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                t.extend_from_slice(&bytes);
                t
            }
            NexusId::Virtio { vm, controller } => {
                let h = fnv1a(format!("virtio:{vm}:{controller}").as_bytes());
                let addr = (3u64 << 60) | (h & 0x0FFF_FFFF_FFFF_FFFF);
                let mut t = vec![0x06, 0, 0, 0];
                t.extend_from_slice(&addr.to_be_bytes());
                t.resize(24, 0);
                t
            }
        }
    }
}

/// FNV-1a, 64 bits: stable across builds and hosts (unlike `std`'s hasher),
/// which ids on shared disks need.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_ids() {
        let i = NexusId::Iscsi {
            iqn: "iqn.2026-01.x:a".into(),
            isid: [0x80, 0, 0, 0, 0, 1],
        };
        let t = i.transport_id();
        assert_eq!(t[0], 0x45);
        let len = u16::from_be_bytes([t[2], t[3]]) as usize;
        assert_eq!(len % 4, 0);
        assert_eq!(t.len(), 4 + len);
        assert!(t[4..].starts_with(b"iqn.2026-01.x:a,i,0x800000000001\0"));
        let v = NexusId::Virtio {
            vm: "vm1".into(),
            controller: 0,
        };
        assert_eq!(v.transport_id().len(), 24);
        assert_eq!(v.transport_id(), v.transport_id());
        assert_ne!(
            v.transport_id(),
            NexusId::Virtio {
                vm: "vm2".into(),
                controller: 0
            }
            .transport_id()
        );
    }
}
