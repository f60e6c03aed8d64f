//! EFI_SIGNATURE_LIST (UEFI 2.10, 32.4.1): the format of the `db` and `dbx`
//! variables and of the `.esl` files efitools' `cert-to-efi-sig-list`,
//! `hash-to-efi-sig-list` and sbsigntool's `sbsiglist` make. A file is a
//! sequence of lists; each list holds signatures of one type and one size.

use crate::guid::{
    Guid, EFI_CERT_SHA256, EFI_CERT_X509, EFI_CERT_X509_SHA256, EFI_CERT_X509_SHA384,
    EFI_CERT_X509_SHA512,
};

/// Bytes of a list header: SignatureType, SignatureListSize,
/// SignatureHeaderSize, SignatureSize.
const LIST_HEADER: usize = 16 + 4 + 4 + 4;
/// Bytes of SignatureOwner before each signature's data.
const OWNER: usize = 16;
/// EFI_TIME, the revocation time after a TBS-certificate hash.
const EFI_TIME: usize = 16;

/// A malformed signature list, naming what and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigListError {
    /// Fewer bytes left than a list header needs.
    #[error("signature list at byte {offset}: truncated header ({left} bytes left, 28 needed)")]
    TruncatedHeader {
        /// Where the list starts.
        offset: usize,
        /// Bytes left in the file.
        left: usize,
    },
    /// SignatureListSize is smaller than its header or past the end.
    #[error(
        "signature list at byte {offset}: SignatureListSize {size} is invalid ({left} bytes left)"
    )]
    BadListSize {
        /// Where the list starts.
        offset: usize,
        /// The size it claims.
        size: u32,
        /// Bytes left in the file.
        left: usize,
    },
    /// SignatureSize cannot hold an owner GUID, or does not divide the body.
    #[error(
        "signature list at byte {offset}: SignatureSize {size} does not fit a body of {body} bytes"
    )]
    BadSignatureSize {
        /// Where the list starts.
        offset: usize,
        /// The size it claims.
        size: u32,
        /// Bytes of signatures in the list.
        body: usize,
    },
    /// A signature of a known type has the wrong length.
    #[error(
        "signature list at byte {offset}: a {kind} signature of {len} bytes (expected {expected})"
    )]
    BadEntryLength {
        /// Where the list starts.
        offset: usize,
        /// Which type.
        kind: &'static str,
        /// Data bytes per signature (without the owner).
        len: usize,
        /// What that type needs.
        expected: usize,
    },
    /// The file holds no list at all.
    #[error("empty signature list file")]
    Empty,
}

/// What one signature in a list is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureData {
    /// EFI_CERT_SHA256_GUID: an Authenticode SHA-256 image hash.
    Sha256([u8; 32]),
    /// EFI_CERT_X509_GUID: a DER certificate.
    X509(Vec<u8>),
    /// EFI_CERT_X509_SHA256/384/512_GUID: the hash of a TBSCertificate
    /// (and the revocation time, which Tern does not use: such a
    /// certificate is treated as revoked for all time, as EDK2 does for
    /// images without a timestamp).
    TbsHash {
        /// 32, 48 or 64 bytes.
        hash: Vec<u8>,
        /// The EFI_TIME bytes, kept so that a list writes back unchanged.
        revocation_time: [u8; EFI_TIME],
    },
    /// A type Tern does not judge by (e.g. SHA-1, RSA-2048): kept, ignored.
    Other {
        /// The list's SignatureType.
        kind: Guid,
        /// The data after the owner.
        data: Vec<u8>,
    },
}

impl SignatureData {
    /// The EFI_SIGNATURE_LIST SignatureType of this entry.
    pub fn kind(&self) -> Guid {
        match self {
            SignatureData::Sha256(_) => EFI_CERT_SHA256,
            SignatureData::X509(_) => EFI_CERT_X509,
            SignatureData::TbsHash { hash, .. } => match hash.len() {
                48 => EFI_CERT_X509_SHA384,
                64 => EFI_CERT_X509_SHA512,
                _ => EFI_CERT_X509_SHA256,
            },
            SignatureData::Other { kind, .. } => *kind,
        }
    }

    /// The bytes after the owner GUID.
    fn data(&self) -> Vec<u8> {
        match self {
            SignatureData::Sha256(h) => h.to_vec(),
            SignatureData::X509(d) => d.clone(),
            SignatureData::TbsHash {
                hash,
                revocation_time,
            } => [hash.as_slice(), revocation_time].concat(),
            SignatureData::Other { data, .. } => data.clone(),
        }
    }
}

/// One signature (EFI_SIGNATURE_DATA) with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    /// SignatureOwner.
    pub owner: Guid,
    /// The signature itself.
    pub data: SignatureData,
    /// Which list of its file (0-based).
    pub list: usize,
    /// Which signature of that list (0-based).
    pub index: usize,
}

/// Parses a file of concatenated EFI_SIGNATURE_LISTs.
pub fn parse(bytes: &[u8]) -> Result<Vec<SignatureEntry>, SigListError> {
    if bytes.is_empty() {
        return Err(SigListError::Empty);
    }
    let mut entries = Vec::new();
    let mut offset = 0usize;
    let mut list = 0usize;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < LIST_HEADER {
            return Err(SigListError::TruncatedHeader {
                offset,
                left: rest.len(),
            });
        }
        let kind = Guid(rest[..16].try_into().expect("16 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
        let list_size = u32_at(16);
        let header_size = u32_at(20);
        let sig_size = u32_at(24);
        let size = list_size as usize;
        if size < LIST_HEADER || size > rest.len() {
            return Err(SigListError::BadListSize {
                offset,
                size: list_size,
                left: rest.len(),
            });
        }
        let body_start = LIST_HEADER
            .checked_add(header_size as usize)
            .filter(|&s| s <= size)
            .ok_or(SigListError::BadListSize {
                offset,
                size: list_size,
                left: rest.len(),
            })?;
        let body = &rest[body_start..size];
        let sig = sig_size as usize;
        if sig <= OWNER || !body.len().is_multiple_of(sig) {
            return Err(SigListError::BadSignatureSize {
                offset,
                size: sig_size,
                body: body.len(),
            });
        }
        for (index, chunk) in body.chunks_exact(sig).enumerate() {
            let owner = Guid(chunk[..OWNER].try_into().expect("16 bytes"));
            let data = decode(kind, &chunk[OWNER..], offset)?;
            entries.push(SignatureEntry {
                owner,
                data,
                list,
                index,
            });
        }
        offset += size;
        list += 1;
    }
    Ok(entries)
}

fn decode(kind: Guid, d: &[u8], offset: usize) -> Result<SignatureData, SigListError> {
    let want = |kind: &'static str, expected: usize| {
        if d.len() == expected {
            Ok(())
        } else {
            Err(SigListError::BadEntryLength {
                offset,
                kind,
                len: d.len(),
                expected,
            })
        }
    };
    let tbs = |name: &'static str, n: usize| -> Result<SignatureData, SigListError> {
        want(name, n + EFI_TIME)?;
        Ok(SignatureData::TbsHash {
            hash: d[..n].to_vec(),
            revocation_time: d[n..].try_into().expect("EFI_TIME"),
        })
    };
    Ok(match kind {
        EFI_CERT_SHA256 => {
            want("SHA-256", 32)?;
            SignatureData::Sha256(d.try_into().expect("32 bytes"))
        }
        EFI_CERT_X509 => SignatureData::X509(d.to_vec()),
        EFI_CERT_X509_SHA256 => tbs("X509-SHA256", 32)?,
        EFI_CERT_X509_SHA384 => tbs("X509-SHA384", 48)?,
        EFI_CERT_X509_SHA512 => tbs("X509-SHA512", 64)?,
        _ => SignatureData::Other {
            kind,
            data: d.to_vec(),
        },
    })
}

/// Writes signatures as EFI_SIGNATURE_LISTs: consecutive entries of one
/// type and size share a list (certificates of different sizes get a
/// list each, as `cert-to-efi-sig-list` does).
pub fn write(entries: &[(Guid, SignatureData)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let kind = entries[i].1.kind();
        let len = entries[i].1.data().len();
        let mut j = i;
        while j < entries.len() && entries[j].1.kind() == kind && entries[j].1.data().len() == len {
            j += 1;
        }
        let sig_size = OWNER + len;
        let list_size = LIST_HEADER + sig_size * (j - i);
        out.extend_from_slice(&kind.0);
        out.extend_from_slice(&(list_size as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(sig_size as u32).to_le_bytes());
        for (owner, data) in &entries[i..j] {
            out.extend_from_slice(&owner.0);
            out.extend_from_slice(&data.data());
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER_A: Guid = Guid::new(1, 2, 3, [4; 8]);

    #[test]
    fn write_then_parse_round_trips_mixed_lists() {
        let entries = vec![
            (OWNER_A, SignatureData::Sha256([7; 32])),
            (OWNER_A, SignatureData::Sha256([8; 32])),
            (OWNER_A, SignatureData::X509(vec![0x30, 1, 2])),
            (
                OWNER_A,
                SignatureData::TbsHash {
                    hash: vec![9; 48],
                    revocation_time: [0; 16],
                },
            ),
        ];
        let bytes = write(&entries);
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed[1].list, 0);
        assert_eq!(parsed[1].index, 1);
        assert_eq!(parsed[2].list, 1);
        assert_eq!(parsed[3].data.kind(), EFI_CERT_X509_SHA384);
        let back: Vec<_> = parsed.into_iter().map(|e| (e.owner, e.data)).collect();
        assert_eq!(back, entries);
    }

    #[test]
    fn malformed_lists_are_named_errors() {
        assert_eq!(parse(&[]), Err(SigListError::Empty));
        assert!(matches!(
            parse(&[0; 10]),
            Err(SigListError::TruncatedHeader { .. })
        ));
        let mut good = write(&[(OWNER_A, SignatureData::Sha256([1; 32]))]);
        let mut big = good.clone();
        big[16] = 0xff;
        assert!(matches!(parse(&big), Err(SigListError::BadListSize { .. })));
        let mut zero_sig = good.clone();
        zero_sig[24..28].copy_from_slice(&16u32.to_le_bytes());
        assert!(matches!(
            parse(&zero_sig),
            Err(SigListError::BadSignatureSize { .. })
        ));
        // A SHA-256 list whose signatures are 33 bytes.
        good[24..28].copy_from_slice(&(16u32 + 33).to_le_bytes());
        good[16..20].copy_from_slice(&(28u32 + 49).to_le_bytes());
        good.push(0);
        assert!(matches!(
            parse(&good),
            Err(SigListError::BadEntryLength { .. })
        ));
    }
}
