//! The PE/COFF image: its Authenticode SHA-256 digest and the signatures
//! in its certificate table (parsing by the `object` and `authenticode`
//! crates; this module turns their failures into named errors).

use authenticode::{AttributeCertificateIterator, AuthenticodeSignature, PeTrait};
use object::read::pe::{PeFile32, PeFile64};
use sha2::{Digest, Sha256};

/// A PE image Tern cannot judge.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a PE32/PE32+ file, or its headers are inconsistent.
    #[error("not a valid PE/COFF image: {0}")]
    NotPe(#[source] object::Error),
    /// Headers or sections point outside the file.
    #[error("PE headers or section table point outside the file")]
    Offsets,
    /// The certificate table directory is out of bounds or its entries'
    /// sizes do not add up.
    #[error("malformed certificate table: {0}")]
    CertificateTable(#[source] authenticode::AttributeCertificateError),
}

/// One WIN_CERTIFICATE entry of the certificate table.
#[derive(Debug)]
pub enum TableEntry {
    /// A WIN_CERT_TYPE_PKCS_SIGNED_DATA Authenticode signature.
    Signature(Box<AuthenticodeSignature>),
    /// An entry that is not a usable Authenticode signature (wrong
    /// revision or type, or PKCS#7 that does not parse), with why.
    Unusable(String),
}

/// What Tern reads from a PE image to judge it.
#[derive(Debug)]
pub struct Image {
    /// The Authenticode SHA-256 digest.
    pub sha256: [u8; 32],
    /// The certificate table's entries, in order (dual signatures are
    /// several entries).
    pub entries: Vec<TableEntry>,
    /// The `.sbat` section's bytes, if the image has one.
    pub sbat: Option<Vec<u8>>,
}

impl Image {
    /// Parses a PE32 or PE32+ image.
    pub fn parse(data: &[u8]) -> Result<Image, ImageError> {
        match PeFile64::parse(data) {
            Ok(pe) => Self::from_pe(&pe, sbat_of(pe.section_table(), data)),
            Err(e64) => match PeFile32::parse(data) {
                Ok(pe) => Self::from_pe(&pe, sbat_of(pe.section_table(), data)),
                Err(_) => Err(ImageError::NotPe(e64)),
            },
        }
    }

    fn from_pe(pe: &dyn PeTrait, sbat: Option<Vec<u8>>) -> Result<Image, ImageError> {
        let mut h = Sha256::new();
        authenticode::authenticode_digest(pe, &mut h).map_err(|_| ImageError::Offsets)?;
        let sha256 = h.finalize().into();
        let mut entries = Vec::new();
        if let Some(iter) =
            AttributeCertificateIterator::new(pe).map_err(ImageError::CertificateTable)?
        {
            for cert in iter {
                let cert = cert.map_err(ImageError::CertificateTable)?;
                entries.push(match cert.get_authenticode_signature() {
                    Ok(s) => TableEntry::Signature(Box::new(s)),
                    Err(e) => TableEntry::Unusable(e.to_string()),
                });
            }
        }
        Ok(Image {
            sha256,
            entries,
            sbat,
        })
    }
}

fn sbat_of(sections: object::read::pe::SectionTable<'_>, data: &[u8]) -> Option<Vec<u8>> {
    let s = sections.iter().find(|s| &s.name == b".sbat\0\0\0")?;
    let start = s.pointer_to_raw_data.get(object::LittleEndian) as usize;
    let len = s.size_of_raw_data.get(object::LittleEndian) as usize;
    let bytes = data.get(start..start.checked_add(len)?)?;
    Some(bytes.to_vec())
}
