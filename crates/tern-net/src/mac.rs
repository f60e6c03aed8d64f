//! Ethernet MAC addresses: parsing, formatting, and stable generation.

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// Why a MAC address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six `:`-separated hex bytes.
    #[error("'{0}' is not a MAC address (expected six hex bytes like 52:54:00:12:34:56)")]
    Syntax(String),
    /// A multicast address cannot be a NIC's own.
    #[error("'{0}' is a multicast address (the low bit of the first byte is set)")]
    Multicast(String),
}

impl Mac {
    /// A locally administered unicast address derived from `seed` (a VM id
    /// and NIC index, say): the same seed gives the same address on every
    /// host, so a NIC keeps its MAC across restarts and migrations.
    pub fn from_seed(seed: &[u8]) -> Mac {
        // FNV-1a, 64 bits: stable across Rust versions (unlike the std
        // hasher), and good enough to spread seeds over 46 bits.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in seed {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = h.to_le_bytes();
        let mut m = [b[0], b[1], b[2], b[3], b[4], b[5]];
        // Locally administered (bit 1), unicast (bit 0 clear).
        m[0] = (m[0] | 0x02) & !0x01;
        Mac(m)
    }

    /// The six bytes.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// Whether the address is multicast (or broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = MacError;

    /// Parses `aa:bb:cc:dd:ee:ff` (or with `-`); refuses multicast.
    fn from_str(s: &str) -> Result<Mac, MacError> {
        let bad = || MacError::Syntax(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let mac = Mac(out);
        if mac.is_multicast() {
            return Err(MacError::Multicast(s.to_string()));
        }
        Ok(mac)
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_formats_and_refuses() {
        let m: Mac = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<Mac>().unwrap(), m);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(
                matches!(bad.parse::<Mac>(), Err(MacError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<Mac>(),
            Err(MacError::Multicast(_))
        ));
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"52:54:00:ab:cd:0f\"");
        assert_eq!(serde_json::from_str::<Mac>(&j).unwrap(), m);
        assert!(serde_json::from_str::<Mac>("\"nope\"").is_err());
    }

    #[test]
    fn seeded_addresses_are_stable_local_unicast() {
        let a = Mac::from_seed(b"vm-1/nic0");
        assert_eq!(a, Mac::from_seed(b"vm-1/nic0"));
        assert_ne!(a, Mac::from_seed(b"vm-1/nic1"));
        for seed in [&b""[..], b"x", b"vm-2/nic0"] {
            let m = Mac::from_seed(seed);
            assert_eq!(m.0[0] & 0x03, 0x02, "{m}");
        }
        // Pinned: a change here would change every generated MAC.
        assert_eq!(Mac::from_seed(b"tern").to_string(), "ea:e0:79:19:ef:da");
    }
}
