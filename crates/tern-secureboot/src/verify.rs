//! The decision, in UEFI's order (as EDK2's DxeImageVerificationLib
//! makes it): `dbx` first (image hash, then each signature's
//! certificates and their TBS hashes), then `db` (a signature whose chain
//! reaches a `db` certificate, else the image hash in `db`).
//!
//! Certificate validity periods are not checked: UEFI firmware has no
//! trusted time and ignores expiry, and so does Tern.

use der::Encode;
use x509_cert::Certificate;

use crate::crypto::{self, Hash};
use crate::database::{Database, Entry};
use crate::image::{Image, TableEntry};
use crate::pkcs7;
use crate::siglist::SignatureData;
use crate::verdict::{
    AllowRule, CertSummary, DenyRule, Report, SignatureFailure, SignatureProblem, SignatureSummary,
    Verdict, REPORT_VERSION,
};

/// The most issuers Tern walks up from a signer (real chains have 1-3).
const MAX_CHAIN: usize = 8;

/// The `db` and `dbx` an image is judged against.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Allowed signers and hashes.
    pub db: Database,
    /// Forbidden signers and hashes (checked first).
    pub dbx: Database,
}

/// Judges a PE image (its bytes) against `policy`.
pub fn verify(data: &[u8], policy: &Policy) -> Report {
    let image = match Image::parse(data) {
        Ok(i) => i,
        Err(e) => {
            return Report {
                version: REPORT_VERSION,
                sha256: None,
                signatures: Vec::new(),
                verdict: Verdict::Denied {
                    rule: DenyRule::Malformed {
                        reason: crate::error_chain(&e),
                    },
                },
            }
        }
    };
    let signatures = summaries(&image);
    let verdict = decide(&image, policy);
    Report {
        version: REPORT_VERSION,
        sha256: Some(crate::hex(&image.sha256)),
        signatures,
        verdict,
    }
}

fn summaries(image: &Image) -> Vec<SignatureSummary> {
    image
        .entries
        .iter()
        .enumerate()
        .map(|(index, e)| SignatureSummary {
            index,
            signer: match e {
                TableEntry::Signature(s) => pkcs7::check(s, &image.sha256).ok().map(summary),
                TableEntry::Unusable(_) => None,
            },
        })
        .collect()
}

fn decide(image: &Image, policy: &Policy) -> Verdict {
    if let Some(e) = find_hash(&policy.dbx, &image.sha256) {
        return Verdict::Denied {
            rule: DenyRule::DbxImageHash {
                dbx_entry: e.origin.clone(),
            },
        };
    }
    let mut allowed = None;
    let mut failures = Vec::new();
    for (i, entry) in image.entries.iter().enumerate() {
        let sig = match entry {
            TableEntry::Signature(s) => s,
            TableEntry::Unusable(reason) => {
                failures.push(SignatureFailure {
                    signature: i,
                    problem: SignatureProblem::Malformed {
                        reason: reason.clone(),
                    },
                });
                continue;
            }
        };
        let signer = match pkcs7::check(sig, &image.sha256) {
            Ok(s) => s,
            Err(pkcs7::SignatureError::DigestMismatch { signed, .. }) => {
                failures.push(SignatureFailure {
                    signature: i,
                    problem: SignatureProblem::DigestMismatch { signed },
                });
                continue;
            }
            Err(e) => {
                failures.push(SignatureFailure {
                    signature: i,
                    problem: SignatureProblem::BadSignature {
                        reason: crate::error_chain(&e),
                    },
                });
                continue;
            }
        };
        let embedded: Vec<&Certificate> = sig.certificates().collect();
        let chain = build_chain(signer, &embedded, &policy.db);
        // dbx: the signer, every embedded certificate, and the anchor.
        let mut judged: Vec<&Certificate> = vec![signer];
        judged.extend(embedded.iter().copied());
        if let Chain::Trusted { anchor, .. } = &chain {
            if let Some(c) = &anchor.cert {
                judged.push(c);
            }
        }
        for cert in judged {
            if let Some(v) = forbidden(cert, &policy.dbx, i) {
                return v;
            }
        }
        match chain {
            Chain::Trusted { anchor } => {
                if allowed.is_none() {
                    allowed = Some(AllowRule::Certificate {
                        db_entry: anchor.origin.clone(),
                        anchor: anchor
                            .cert
                            .as_ref()
                            .map(summary)
                            .unwrap_or_else(|| summary(signer)),
                        signer: summary(signer),
                        signature: i,
                    });
                }
            }
            Chain::Untrusted { top } => failures.push(SignatureFailure {
                signature: i,
                problem: SignatureProblem::Untrusted {
                    signer: summary(signer),
                    top: summary(top),
                },
            }),
        }
    }
    if let Some(rule) = allowed {
        return Verdict::Allowed { rule };
    }
    if let Some(e) = find_hash(&policy.db, &image.sha256) {
        return Verdict::Allowed {
            rule: AllowRule::ImageHash {
                db_entry: e.origin.clone(),
            },
        };
    }
    Verdict::Denied {
        rule: if image.entries.is_empty() {
            DenyRule::NoSignature
        } else {
            DenyRule::NoTrustedSignature {
                signatures: failures,
            }
        },
    }
}

fn find_hash<'d>(db: &'d Database, sha256: &[u8; 32]) -> Option<&'d Entry> {
    db.entries
        .iter()
        .find(|e| matches!(&e.data, SignatureData::Sha256(h) if h == sha256))
}

/// A certificate `dbx` forbids, by its bytes or its TBS hash.
fn forbidden(cert: &Certificate, dbx: &Database, signature: usize) -> Option<Verdict> {
    let der = cert.to_der().ok()?;
    let tbs = cert.tbs_certificate.to_der().ok()?;
    for e in &dbx.entries {
        match &e.data {
            SignatureData::X509(d) if *d == der => {
                return Some(Verdict::Denied {
                    rule: DenyRule::DbxCertificate {
                        dbx_entry: e.origin.clone(),
                        certificate: summary(cert),
                        signature,
                    },
                })
            }
            SignatureData::TbsHash { hash, .. } => {
                let h = match hash.len() {
                    32 => Hash::Sha256,
                    48 => Hash::Sha384,
                    _ => Hash::Sha512,
                };
                if h.digest(&tbs) == *hash {
                    return Some(Verdict::Denied {
                        rule: DenyRule::DbxTbsHash {
                            dbx_entry: e.origin.clone(),
                            certificate: summary(cert),
                            signature,
                        },
                    });
                }
            }
            _ => {}
        }
    }
    None
}

enum Chain<'a> {
    Trusted { anchor: &'a Entry },
    Untrusted { top: &'a Certificate },
}

/// Walks from the signer up through the embedded certificates until one
/// is in `db` or is issued (signature checked) by a `db` certificate.
fn build_chain<'a>(
    signer: &'a Certificate,
    embedded: &[&'a Certificate],
    db: &'a Database,
) -> Chain<'a> {
    let mut current = signer;
    for _ in 0..MAX_CHAIN {
        let der = current.to_der().ok();
        for e in &db.entries {
            if let (SignatureData::X509(d), Some(der)) = (&e.data, &der) {
                if d == der {
                    return Chain::Trusted { anchor: e };
                }
            }
        }
        for e in &db.entries {
            if let Some(anchor) = &e.cert {
                if crypto::issued_by(current, anchor).is_ok() {
                    return Chain::Trusted { anchor: e };
                }
            }
        }
        let next = embedded.iter().copied().find(|c| {
            c.tbs_certificate.subject != current.tbs_certificate.subject
                && crypto::issued_by(current, c).is_ok()
        });
        match next {
            Some(n) => current = n,
            None => break,
        }
    }
    Chain::Untrusted { top: current }
}

/// How a verdict names a certificate.
pub fn summary(c: &Certificate) -> CertSummary {
    CertSummary {
        subject: c.tbs_certificate.subject.to_string(),
        issuer: c.tbs_certificate.issuer.to_string(),
        serial: crate::hex(c.tbs_certificate.serial_number.as_bytes()),
    }
}
