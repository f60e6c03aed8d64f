//! One Authenticode PKCS#7 SignedData: that it signs this image (the
//! SpcIndirectDataContent digest), and that its signer signed it (the
//! signed attributes' message-digest and the RSA signature over them).

use authenticode::AuthenticodeSignature;
use cms::signed_data::SignerIdentifier;
use const_oid::db::rfc5911::ID_MESSAGE_DIGEST;
use der::asn1::OctetStringRef;
use der::{Decode, Encode};
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::Certificate;

use crate::crypto::{self, CryptoError, Hash};

/// Why a signature does not vouch for the image.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The SpcIndirectDataContent digest uses an algorithm Tern does not
    /// compute for images (only SHA-256, what UEFI signers use).
    #[error("image digest algorithm {0} is not supported (only SHA-256)")]
    ImageDigestAlgorithm(String),
    /// The signed digest is not the image's.
    #[error("signed image digest {signed} differs from the image's {actual}")]
    DigestMismatch {
        /// Hex of the digest in the signature.
        signed: String,
        /// Hex of the image's Authenticode SHA-256.
        actual: String,
    },
    /// No embedded certificate matches the SignerInfo's identifier.
    #[error("the signer's certificate is not in the signature")]
    SignerCertificateMissing,
    /// The signed attributes lack message-digest or it is malformed.
    #[error("signed attributes have no usable message-digest")]
    MessageDigestMissing,
    /// message-digest is not the hash of the SpcIndirectDataContent.
    #[error("signed attributes' message-digest does not match the signed content")]
    MessageDigestMismatch,
    /// The encapsulated content is missing.
    #[error("signature has no encapsulated content")]
    NoContent,
    /// The signer's RSA signature, or an algorithm, is wrong.
    #[error("signer signature: {0}")]
    Signer(#[source] CryptoError),
}

/// Checks `sig` against the image's Authenticode SHA-256 and its signer's
/// signature; returns the signer's certificate.
pub fn check<'s>(
    sig: &'s AuthenticodeSignature,
    image_sha256: &[u8; 32],
) -> Result<&'s Certificate, SignatureError> {
    let alg = sig.digest_algorithm().oid;
    if alg != const_oid::db::rfc5912::ID_SHA_256 {
        return Err(SignatureError::ImageDigestAlgorithm(alg.to_string()));
    }
    if sig.digest() != image_sha256 {
        return Err(SignatureError::DigestMismatch {
            signed: crate::hex(sig.digest()),
            actual: crate::hex(image_sha256),
        });
    }
    let info = sig.signer_info();
    let signer = find_signer(sig, &info.sid).ok_or(SignatureError::SignerCertificateMissing)?;
    let hash = Hash::from_oid(info.digest_alg.oid).map_err(SignatureError::Signer)?;
    let content = sig
        .encapsulated_content()
        .ok_or(SignatureError::NoContent)?;
    let content_hash = hash.digest(content);
    let signed_bytes = match &info.signed_attrs {
        Some(attrs) => {
            let md = attrs
                .iter()
                .find(|a| a.oid == ID_MESSAGE_DIGEST)
                .and_then(|a| a.values.get(0))
                .and_then(|v| v.decode_as::<OctetStringRef<'_>>().ok())
                .ok_or(SignatureError::MessageDigestMissing)?;
            if md.as_bytes() != content_hash.as_slice() {
                return Err(SignatureError::MessageDigestMismatch);
            }
            // The signature covers the attributes encoded as a SET OF
            // (RFC 5652 5.4), not as the [0] IMPLICIT field they sit in.
            attrs
                .to_der()
                .map_err(|_| SignatureError::Signer(CryptoError::Encode("signed attributes")))?
        }
        None => content.to_vec(),
    };
    crypto::verify_rsa(signer, hash, &signed_bytes, info.signature.as_bytes())
        .map_err(SignatureError::Signer)?;
    Ok(signer)
}

fn find_signer<'s>(
    sig: &'s AuthenticodeSignature,
    sid: &SignerIdentifier,
) -> Option<&'s Certificate> {
    sig.certificates().find(|c| match sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => {
            c.tbs_certificate.issuer == ias.issuer
                && c.tbs_certificate.serial_number == ias.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => subject_key_id(c).is_some_and(|k| k == *ski),
    })
}

fn subject_key_id(c: &Certificate) -> Option<SubjectKeyIdentifier> {
    let ext = c
        .tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)?;
    SubjectKeyIdentifier::from_der(ext.extn_value.as_bytes()).ok()
}
