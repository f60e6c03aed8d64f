//! Built-in `db` templates.
//!
//! - `debian`: Debian's Secure Boot CA ("Debian Secure Boot CA", the
//!   certificate Debian's shim embeds as its vendor certificate). The DER
//!   in `certs/debian-uefi-ca.der` is a copy of
//!   `/usr/share/shim/debian-uefi-ca.der` from Debian's `shim-unsigned`
//!   package (15.8-1 on bookworm); it is a public certificate.
//! - `microsoft-uefi-ca`: "Microsoft Corporation UEFI CA 2011", the
//!   third-party CA that signs shim. Tern ships no Microsoft certificate:
//!   it reads it at run time from the `db` in OVMF's Microsoft-enrolled
//!   variable store (Debian's `ovmf` package); without that package, give
//!   the certificate with `--db FILE`.
//! - `custom`: empty; the user's `--db`/`--dbx` files are the policy.

use std::path::{Path, PathBuf};

use x509_cert::Certificate;

use crate::database::Database;
use crate::guid::EFI_CERT_X509;
use crate::siglist::{self, SignatureData};

/// Debian's Secure Boot CA (from shim-unsigned's `debian-uefi-ca.der`).
pub const DEBIAN_UEFI_CA: &[u8] = include_bytes!("../certs/debian-uefi-ca.der");

/// OVMF variable stores with Microsoft's keys enrolled, first found wins.
pub const OVMF_MS_VARSTORES: &[&str] = &[
    "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
    "/usr/share/OVMF/OVMF_VARS.ms.fd",
];

/// The subject common name of the `microsoft-uefi-ca` template's certificate.
pub const MICROSOFT_UEFI_CA_CN: &str = "Microsoft Corporation UEFI CA 2011";

/// A built-in starting point for `db`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Template {
    /// Debian's Secure Boot CA.
    Debian,
    /// Microsoft's third-party UEFI CA (read from OVMF's variable store).
    MicrosoftUefiCa,
    /// Nothing built in.
    Custom,
}

/// A template that cannot be built here.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Not a template name.
    #[error("unknown Secure Boot template {0:?} (debian, microsoft-uefi-ca, custom)")]
    Unknown(String),
    /// The Microsoft certificate is not on this machine.
    #[error("template microsoft-uefi-ca: no OVMF Microsoft variable store ({}) holds \"{MICROSOFT_UEFI_CA_CN}\"; install Debian's ovmf package or give the certificate with --db FILE", OVMF_MS_VARSTORES.join(", "))]
    MicrosoftCaMissing,
}

impl std::str::FromStr for Template {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Template, TemplateError> {
        match s {
            "debian" => Ok(Template::Debian),
            "microsoft-uefi-ca" => Ok(Template::MicrosoftUefiCa),
            "custom" => Ok(Template::Custom),
            other => Err(TemplateError::Unknown(other.to_string())),
        }
    }
}

impl Template {
    /// The template's name.
    pub fn name(self) -> &'static str {
        match self {
            Template::Debian => "debian",
            Template::MicrosoftUefiCa => "microsoft-uefi-ca",
            Template::Custom => "custom",
        }
    }

    /// Adds the template's entries to `db`.
    pub fn add_to(self, db: &mut Database) -> Result<(), TemplateError> {
        let source = format!("template:{}", self.name());
        match self {
            Template::Debian => {
                db.push(
                    &source,
                    0,
                    0,
                    crate::database::NO_OWNER,
                    SignatureData::X509(DEBIAN_UEFI_CA.to_vec()),
                );
            }
            Template::MicrosoftUefiCa => {
                let (path, der) = OVMF_MS_VARSTORES
                    .iter()
                    .map(PathBuf::from)
                    .find_map(|p| microsoft_ca_from_varstore(&p).map(|d| (p, d)))
                    .ok_or(TemplateError::MicrosoftCaMissing)?;
                let source = format!("{source} ({})", path.display());
                db.push(
                    &source,
                    0,
                    0,
                    crate::database::NO_OWNER,
                    SignatureData::X509(der),
                );
            }
            Template::Custom => {}
        }
        Ok(())
    }
}

/// Finds the Microsoft UEFI CA among the X.509 signature lists in an
/// OVMF variable store. The store's variable headers are not parsed: each
/// place the EFI_CERT_X509_GUID appears is tried as the start of one
/// signature list, and only a list that parses completely and holds a
/// certificate with the right subject counts.
fn microsoft_ca_from_varstore(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    let mut at = 0;
    while let Some(pos) = bytes[at..].windows(16).position(|w| w == EFI_CERT_X509.0) {
        let start = at + pos;
        at = start + 1;
        let Some(size) = bytes.get(start + 16..start + 20) else {
            break;
        };
        let size = u32::from_le_bytes(size.try_into().ok()?) as usize;
        let Some(list) = bytes.get(start..start.saturating_add(size)) else {
            continue;
        };
        let Ok(entries) = siglist::parse(list) else {
            continue;
        };
        for e in entries {
            if let SignatureData::X509(der) = e.data {
                let Ok(cert) = <Certificate as der::Decode>::from_der(&der) else {
                    continue;
                };
                if cert
                    .tbs_certificate
                    .subject
                    .to_string()
                    .contains(MICROSOFT_UEFI_CA_CN)
                {
                    return Some(der);
                }
            }
        }
    }
    None
}
