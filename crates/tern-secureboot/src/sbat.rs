//! The `.sbat` section (shim's Secure Boot Advanced Targeting): CSV lines
//! `component,generation,vendor,package,version,url`. Tern reports them;
//! it has no SBAT revocation level to compare generations with yet.

use serde::{Deserialize, Serialize};

/// One SBAT line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbatEntry {
    /// Component name (`sbat`, `shim`, `linux`, ...).
    pub component: String,
    /// Its security generation.
    pub generation: u32,
    /// The remaining fields (vendor, package, version, url), as given.
    pub rest: Vec<String>,
}

/// A malformed `.sbat` section.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SbatError {
    /// Not UTF-8 text.
    #[error(".sbat section is not UTF-8 text")]
    NotText,
    /// A line without a numeric generation.
    #[error(".sbat line {line}: generation is not a number")]
    Generation {
        /// 1-based line number.
        line: usize,
    },
}

/// Parses a `.sbat` section (trailing NUL padding ignored).
pub fn parse(bytes: &[u8]) -> Result<Vec<SbatEntry>, SbatError> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| SbatError::NotText)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split(',').map(str::to_string);
        let component = fields.next().unwrap_or_default();
        let generation = fields
            .next()
            .and_then(|g| g.trim().parse().ok())
            .ok_or(SbatError::Generation { line: i + 1 })?;
        out.push(SbatEntry {
            component,
            generation,
            rest: fields.collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shim_style_lines_and_names_bad_ones() {
        let s = b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\nlinux,1,Debian,linux,6.1,https://x\n\0\0";
        let e = parse(s).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].component, "linux");
        assert_eq!(e[1].generation, 1);
        assert_eq!(e[1].rest[0], "Debian");
        assert_eq!(parse(b"a,b\n"), Err(SbatError::Generation { line: 1 }));
        assert_eq!(parse(&[0xff, 0xfe]), Err(SbatError::NotText));
    }
}
