//! Secure Boot for a direct-booted kernel (not for a restore or an
//! incoming migration: that VM already booted): the check runs before the
//! VM is built, so a refused kernel runs no guest instruction.

use std::path::Path;

use tern_secureboot::Report;
use tern_vmm::boot::secure_boot::{check_kernel, policy, SecureBootError};
use tern_worker_proto::launch::{GuestSpec, SecureBootSpec, SecureBootTemplate};
use tern_worker_proto::LaunchSpec;

use crate::exit_code;

/// Judges the spec's kernel when it asks for Secure Boot. The verdict and
/// its rule are printed (and logged); a refusal returns DATA_ERR.
pub fn check(spec: &LaunchSpec) -> Result<(), i32> {
    let (Some(sb), Some(GuestSpec::Linux { kernel, .. }), None, None) = (
        &spec.secure_boot,
        &spec.guest,
        &spec.restore,
        &spec.incoming,
    ) else {
        return Ok(());
    };
    match judge(sb, kernel) {
        Ok(report) => {
            eprintln!("tern: secure boot: {}", report.verdict);
            Ok(())
        }
        Err(e) => {
            eprintln!("tern: error: {}", crate::error_chain(&e));
            Err(exit_code::DATA_ERR)
        }
    }
}

/// Judges `image` by the spec's policy: the report when it would boot.
pub fn judge(sb: &SecureBootSpec, image: &Path) -> Result<Report, SecureBootError> {
    let template = match sb.template {
        SecureBootTemplate::Debian => tern_secureboot::Template::Debian,
        SecureBootTemplate::MicrosoftUefiCa => tern_secureboot::Template::MicrosoftUefiCa,
        SecureBootTemplate::Custom => tern_secureboot::Template::Custom,
    };
    policy(template, &sb.db, &sb.dbx).and_then(|p| check_kernel(image, &p))
}
