//! Secure Boot for direct boot: the kernel file is judged
//! (tern-secureboot) before any of it is loaded, so a refused kernel never
//! runs a guest instruction. The verdict is logged with the rule that
//! decided.

use std::path::{Path, PathBuf};

use tern_secureboot::{Policy, Report, Template};

/// Why a kernel may not boot.
#[derive(Debug, thiserror::Error)]
pub enum SecureBootError {
    /// The policy could not be built (template missing, bad db/dbx file).
    #[error("secure boot policy")]
    Policy(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The kernel file could not be read.
    #[error("cannot read kernel {path} for the secure boot check")]
    Read {
        /// The kernel.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The policy refuses the kernel.
    #[error("secure boot refuses kernel {path}: {}", report.verdict)]
    Refused {
        /// The kernel.
        path: PathBuf,
        /// The full report.
        report: Box<Report>,
    },
}

/// Builds the policy of `template` plus `db` and `dbx` files.
pub fn policy(
    template: Template,
    db: &[PathBuf],
    dbx: &[PathBuf],
) -> Result<Policy, SecureBootError> {
    let mut p = Policy::default();
    template
        .add_to(&mut p.db)
        .map_err(|e| SecureBootError::Policy(Box::new(e)))?;
    for f in db {
        p.db.add_file(f)
            .map_err(|e| SecureBootError::Policy(Box::new(e)))?;
    }
    for f in dbx {
        p.dbx
            .add_file(f)
            .map_err(|e| SecureBootError::Policy(Box::new(e)))?;
    }
    Ok(p)
}

/// Judges `kernel` by `policy`; `Ok` (with the report) only when it may boot.
pub fn check_kernel(kernel: &Path, policy: &Policy) -> Result<Report, SecureBootError> {
    let data = std::fs::read(kernel).map_err(|source| SecureBootError::Read {
        path: kernel.to_path_buf(),
        source,
    })?;
    let report = tern_secureboot::verify(&data, policy);
    if report.verdict.allowed() {
        tracing::info!(kernel = %kernel.display(), "secure boot: {}", report.verdict);
        Ok(report)
    } else {
        tracing::warn!(kernel = %kernel.display(), "secure boot: {}", report.verdict);
        Err(SecureBootError::Refused {
            path: kernel.to_path_buf(),
            report: Box::new(report),
        })
    }
}
