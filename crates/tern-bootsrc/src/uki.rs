//! Unified kernel images (UAPI group's UKI): one signed PE carrying the
//! kernel (`.linux`), initrd (`.initrd`) and command line (`.cmdline`).
//! The firmware verifies the whole PE; Tern boots what is inside it.

use object::read::pe::PeFile64;
use object::{Object, ObjectSection};

/// Why a UKI cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// Not a 64-bit PE image.
    #[error("not a PE32+ image")]
    NotPe(#[source] object::Error),
    /// It has no `.linux` section.
    #[error("no .linux section")]
    NoKernel,
    /// A section's data lies outside the file.
    #[error("section {0} is damaged")]
    Section(&'static str),
}

/// What a UKI carries.
#[derive(Debug, PartialEq, Eq)]
pub struct Uki {
    /// The kernel.
    pub kernel: Vec<u8>,
    /// The initrd, if any.
    pub initrd: Option<Vec<u8>>,
    /// The command line, if any.
    pub cmdline: Option<String>,
}

/// The bytes of section `name`, cut to its virtual size (the raw size is
/// padded to the file alignment).
fn section(pe: &PeFile64<'_>, name: &'static str) -> Result<Option<Vec<u8>>, UkiError> {
    let Some(s) = pe.section_by_name(name) else {
        return Ok(None);
    };
    let data = s.data().map_err(|_| UkiError::Section(name))?;
    let n = (s.size() as usize).min(data.len());
    Ok(Some(data[..n].to_vec()))
}

/// Takes a UKI apart.
pub fn parse(image: &[u8]) -> Result<Uki, UkiError> {
    let pe = PeFile64::parse(image).map_err(UkiError::NotPe)?;
    let kernel = section(&pe, ".linux")?.ok_or(UkiError::NoKernel)?;
    let initrd = section(&pe, ".initrd")?;
    let cmdline = section(&pe, ".cmdline")?.map(|c| {
        String::from_utf8_lossy(&c)
            .trim_end_matches(['\0', '\n', ' '])
            .to_string()
    });
    Ok(Uki {
        kernel,
        initrd,
        cmdline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_pe_input_is_refused() {
        assert!(matches!(parse(b"MZ not really"), Err(UkiError::NotPe(_))));
        assert!(matches!(parse(&[]), Err(UkiError::NotPe(_))));
    }
}
