//! The verdict and the report Tern prints and logs: typed, serde, with a
//! version number (the `--json` document of `tern boot verify` and what
//! the worker reports).

use serde::{Deserialize, Serialize};

use crate::database::EntryOrigin;

/// The version of [`Report`]'s serialized form.
pub const REPORT_VERSION: u32 = 1;

/// A certificate, as a verdict names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    /// The subject distinguished name (RFC 4514 form).
    pub subject: String,
    /// The issuer distinguished name.
    pub issuer: String,
    /// The serial number, hex.
    pub serial: String,
}

/// Why an image would boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum AllowRule {
    /// A signature chains to a certificate in `db`.
    Certificate {
        /// The `db` entry.
        db_entry: EntryOrigin,
        /// That entry's certificate (the signer or one of its issuers).
        anchor: CertSummary,
        /// The signer of the signature that chained.
        signer: CertSummary,
        /// Which signature of the certificate table (0-based).
        signature: usize,
    },
    /// The image's Authenticode SHA-256 is in `db`.
    ImageHash {
        /// The `db` entry.
        db_entry: EntryOrigin,
    },
}

/// Why a signature of the image does not make it bootable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum SignatureProblem {
    /// The WIN_CERTIFICATE entry is not a parseable Authenticode PKCS#7.
    Malformed {
        /// The parser's reason.
        reason: String,
    },
    /// The signature is for other bytes than these.
    DigestMismatch {
        /// Hex digest the signature carries.
        signed: String,
    },
    /// The PKCS#7 does not verify (signer signature, message-digest,
    /// missing signer certificate, unsupported algorithm).
    BadSignature {
        /// What failed.
        reason: String,
    },
    /// The signature is sound but no certificate on its chain is in `db`.
    Untrusted {
        /// The signer.
        signer: CertSummary,
        /// The last certificate reached going up the embedded chain.
        top: CertSummary,
    },
}

/// One signature and what stands against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureFailure {
    /// Which signature of the certificate table (0-based).
    pub signature: usize,
    /// What is wrong.
    #[serde(flatten)]
    pub problem: SignatureProblem,
}

/// Why an image would not boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum DenyRule {
    /// The image's Authenticode SHA-256 is in `dbx`.
    DbxImageHash {
        /// The `dbx` entry.
        dbx_entry: EntryOrigin,
    },
    /// A certificate of a signature (signer, embedded, or the `db` anchor)
    /// is in `dbx`.
    DbxCertificate {
        /// The `dbx` entry.
        dbx_entry: EntryOrigin,
        /// The certificate.
        certificate: CertSummary,
        /// Which signature.
        signature: usize,
    },
    /// The hash of a certificate's TBSCertificate is in `dbx`.
    DbxTbsHash {
        /// The `dbx` entry.
        dbx_entry: EntryOrigin,
        /// The certificate.
        certificate: CertSummary,
        /// Which signature.
        signature: usize,
    },
    /// Unsigned and its hash not in `db`.
    NoSignature,
    /// Signed, but no signature is both sound and trusted by `db`.
    NoTrustedSignature {
        /// Each signature's failure.
        signatures: Vec<SignatureFailure>,
    },
    /// The file is not a PE image Tern can judge.
    Malformed {
        /// What is wrong.
        reason: String,
    },
}

/// Would the image boot?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// It would boot, by this rule.
    Allowed {
        /// The deciding rule.
        rule: AllowRule,
    },
    /// It would not, by this rule.
    Denied {
        /// The deciding rule.
        rule: DenyRule,
    },
}

impl Verdict {
    /// True when the image would boot.
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allowed { .. })
    }
}

/// A signature as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureSummary {
    /// Its index in the certificate table.
    pub index: usize,
    /// The signer, when the PKCS#7 names one Tern found.
    pub signer: Option<CertSummary>,
}

/// The full result of checking one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// The Authenticode SHA-256 (hex), when the image parsed.
    pub sha256: Option<String>,
    /// The image's signatures.
    pub signatures: Vec<SignatureSummary>,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl std::fmt::Display for CertSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\" (issuer \"{}\")", self.subject, self.issuer)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Allowed { rule: AllowRule::Certificate { db_entry, anchor, signer, signature } } => write!(
                f,
                "allowed: signature {signature} by {signer} chains to db certificate {anchor} ({db_entry})"
            ),
            Verdict::Allowed { rule: AllowRule::ImageHash { db_entry } } => {
                write!(f, "allowed: image hash is in db ({db_entry})")
            }
            Verdict::Denied { rule } => match rule {
                DenyRule::DbxImageHash { dbx_entry } => write!(f, "denied: image hash is in dbx ({dbx_entry})"),
                DenyRule::DbxCertificate { dbx_entry, certificate, signature } => write!(
                    f,
                    "denied: certificate {certificate} of signature {signature} is in dbx ({dbx_entry})"
                ),
                DenyRule::DbxTbsHash { dbx_entry, certificate, signature } => write!(
                    f,
                    "denied: TBS hash of certificate {certificate} of signature {signature} is in dbx ({dbx_entry})"
                ),
                DenyRule::NoSignature => write!(f, "denied: image is not signed and its hash is not in db"),
                DenyRule::NoTrustedSignature { signatures } => {
                    write!(f, "denied: no signature is trusted by db")?;
                    for s in signatures {
                        write!(f, "; signature {}: ", s.signature)?;
                        match &s.problem {
                            SignatureProblem::Malformed { reason } => write!(f, "malformed ({reason})")?,
                            SignatureProblem::DigestMismatch { signed } => {
                                write!(f, "digest mismatch (signed {signed})")?
                            }
                            SignatureProblem::BadSignature { reason } => write!(f, "bad signature ({reason})")?,
                            SignatureProblem::Untrusted { signer, top } => {
                                write!(f, "signer {signer} is untrusted (chain ends at {top}, not in db)")?
                            }
                        }
                    }
                    Ok(())
                }
                DenyRule::Malformed { reason } => write!(f, "denied: malformed image ({reason})"),
            },
        }
    }
}
