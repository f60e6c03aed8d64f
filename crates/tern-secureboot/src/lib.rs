//! Tern's UEFI Secure Boot check for what it direct-boots.
//!
//! A PE/COFF image (a Linux kernel's EFI stub, a unified kernel image, a
//! boot loader) is judged as UEFI firmware judges it before running it:
//! its Authenticode SHA-256 ([`image`]), the PKCS#7 signatures in its
//! certificate table ([`pkcs7`]), chains to `db` and denials by `dbx`
//! ([`verify`]), with `db`/`dbx` held as EFI_SIGNATURE_LISTs
//! ([`siglist`], [`database`]) or built from a [`template`]. The result
//! is a typed [`verdict::Report`] naming the rule that decided.
//!
//! Parsing is by the `object` and `authenticode` crates, cryptography by
//! RustCrypto (`cms`, `x509-cert`, `rsa`, `sha2`); the trust policy is
//! Tern's own. Malformed input of any kind yields a verdict or a typed
//! error, never a panic ([`fuzzing`]).

pub mod crypto;
pub mod database;
pub mod fuzzing;
pub mod guid;
pub mod image;
pub mod pkcs7;
pub mod sbat;
pub mod siglist;
pub mod template;
pub mod verdict;
pub mod verify;

pub use database::Database;
pub use template::Template;
pub use verdict::{Report, Verdict};
pub use verify::{verify, Policy};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error and its sources, joined by ": ".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
