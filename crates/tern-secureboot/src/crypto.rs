//! RSA PKCS#1 v1.5 signature checks by digest algorithm OID: the
//! signatures of certificates and of PKCS#7 signers.

use const_oid::db::rfc5912 as oids;
use const_oid::ObjectIdentifier;
use der::Encode;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::RsaPublicKey;
use signature::Verifier;
use x509_cert::Certificate;

/// Why a signature does not check.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The key is not an RSA key Tern can read.
    #[error("public key is not a usable RSA key")]
    Key,
    /// A digest or signature algorithm Tern does not support.
    #[error("unsupported algorithm {0}")]
    Algorithm(ObjectIdentifier),
    /// The signature is wrong.
    #[error("RSA signature does not verify")]
    Mismatch,
    /// A structure could not be re-encoded to DER.
    #[error("cannot DER-encode {0}")]
    Encode(&'static str),
}

/// The digest an algorithm identifier names, in signatures or alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1 (old signatures only).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Hash {
    /// The digest for a digest OID or an `...WithRSAEncryption` OID.
    pub fn from_oid(oid: ObjectIdentifier) -> Result<Hash, CryptoError> {
        Ok(match oid {
            oids::ID_SHA_1 | oids::SHA_1_WITH_RSA_ENCRYPTION => Hash::Sha1,
            oids::ID_SHA_256 | oids::SHA_256_WITH_RSA_ENCRYPTION => Hash::Sha256,
            oids::ID_SHA_384 | oids::SHA_384_WITH_RSA_ENCRYPTION => Hash::Sha384,
            oids::ID_SHA_512 | oids::SHA_512_WITH_RSA_ENCRYPTION => Hash::Sha512,
            other => return Err(CryptoError::Algorithm(other)),
        })
    }

    /// Hashes `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// Checks an RSA PKCS#1 v1.5 signature over `msg` by the key of `signer`.
pub fn verify_rsa(
    signer: &Certificate,
    hash: Hash,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), CryptoError> {
    let spki = signer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| CryptoError::Encode("subject public key info"))?;
    let key = RsaPublicKey::from_public_key_der(&spki).map_err(|_| CryptoError::Key)?;
    let sig = Signature::try_from(sig).map_err(|_| CryptoError::Mismatch)?;
    let ok = match hash {
        Hash::Sha1 => VerifyingKey::<sha1::Sha1>::new(key).verify(msg, &sig),
        Hash::Sha256 => VerifyingKey::<sha2::Sha256>::new(key).verify(msg, &sig),
        Hash::Sha384 => VerifyingKey::<sha2::Sha384>::new(key).verify(msg, &sig),
        Hash::Sha512 => VerifyingKey::<sha2::Sha512>::new(key).verify(msg, &sig),
    };
    ok.map_err(|_| CryptoError::Mismatch)
}

/// Checks that `issuer`'s key signed `child`.
pub fn issued_by(child: &Certificate, issuer: &Certificate) -> Result<(), CryptoError> {
    if child.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(CryptoError::Mismatch);
    }
    let hash = Hash::from_oid(child.signature_algorithm.oid)?;
    let tbs = child
        .tbs_certificate
        .to_der()
        .map_err(|_| CryptoError::Encode("TBSCertificate"))?;
    let sig = child
        .signature
        .as_bytes()
        .ok_or(CryptoError::Encode("certificate signature bit string"))?;
    verify_rsa(issuer, hash, &tbs, sig)
}
