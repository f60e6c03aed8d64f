//! EFI_GUID: the 16 bytes UEFI stores (first three fields little-endian)
//! and their usual text form.

use std::fmt;

/// An EFI_GUID as stored in signature lists (on-disk byte order).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Builds a GUID from its text-form fields (as the UEFI spec writes them).
    pub const fn new(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub fn parse(s: &str) -> Option<Guid> {
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 5
            || [8, 4, 4, 4, 12]
                != [
                    parts[0].len(),
                    parts[1].len(),
                    parts[2].len(),
                    parts[3].len(),
                    parts[4].len(),
                ]
        {
            return None;
        }
        let a = u32::from_str_radix(parts[0], 16).ok()?;
        let b = u16::from_str_radix(parts[1], 16).ok()?;
        let c = u16::from_str_radix(parts[2], 16).ok()?;
        let tail = format!("{}{}", parts[3], parts[4]);
        let mut d = [0u8; 8];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = u8::from_str_radix(tail.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid::new(a, b, c, d))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9],
            g[10],
            g[11],
            g[12],
            g[13],
            g[14],
            g[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Guid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Guid, D::Error> {
        let s = String::deserialize(d)?;
        Guid::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not a GUID: {s:?}")))
    }
}

/// EFI_CERT_SHA256_GUID: a SHA-256 image hash.
pub const EFI_CERT_SHA256: Guid = Guid::new(
    0xc1c4_1626,
    0x504c,
    0x4092,
    [0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28],
);
/// EFI_CERT_X509_GUID: a DER X.509 certificate.
pub const EFI_CERT_X509: Guid = Guid::new(
    0xa5c0_59a1,
    0x94e4,
    0x4aa7,
    [0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72],
);
/// EFI_CERT_X509_SHA256_GUID: SHA-256 of a TBSCertificate plus revocation time.
pub const EFI_CERT_X509_SHA256: Guid = Guid::new(
    0x3bd2_a492,
    0x96c0,
    0x4079,
    [0xb4, 0x20, 0xfc, 0xf9, 0x8e, 0xf1, 0x03, 0xed],
);
/// EFI_CERT_X509_SHA384_GUID: SHA-384 of a TBSCertificate plus revocation time.
pub const EFI_CERT_X509_SHA384: Guid = Guid::new(
    0x7076_876e,
    0x80c2,
    0x4ee6,
    [0xaa, 0xd2, 0x28, 0xb3, 0x49, 0xa6, 0x86, 0x5b],
);
/// EFI_CERT_X509_SHA512_GUID: SHA-512 of a TBSCertificate plus revocation time.
pub const EFI_CERT_X509_SHA512: Guid = Guid::new(
    0x446d_bf63,
    0x2502,
    0x4cda,
    [0xbc, 0xfa, 0x24, 0x65, 0xd2, 0xb0, 0xfe, 0x9d],
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_matches_the_spec_bytes() {
        let s = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
        assert_eq!(Guid::parse(s), Some(EFI_CERT_X509));
        assert_eq!(EFI_CERT_X509.to_string(), s);
        // The first field is little-endian on disk.
        assert_eq!(&EFI_CERT_X509.0[..4], &[0xa1, 0x59, 0xc0, 0xa5]);
        assert_eq!(Guid::parse("a5c059a1-94e4-4aa7-87b5-ab155c2bf07"), None);
        assert_eq!(Guid::parse("g5c059a1-94e4-4aa7-87b5-ab155c2bf072"), None);
    }
}
