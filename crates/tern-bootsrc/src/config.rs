//! What every boot loader configuration yields: entries naming a kernel,
//! initrds and a command line, and which one is the default.

/// One boot entry of a configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The title or label shown in the menu.
    pub title: String,
    /// The kernel's path (absolute within the file system it is on).
    pub linux: String,
    /// Initrds, loaded one after the other (Linux accepts concatenated
    /// cpio archives, as GRUB loads several).
    pub initrds: Vec<String>,
    /// The command line.
    pub options: String,
}

/// Why a configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// It includes itself, directly or not, or nests too deep.
    #[error("{file}: includes nest deeper than {MAX_DEPTH} (a loop?)")]
    Loop {
        /// The file whose include went too deep.
        file: String,
    },
    /// It names no bootable entry.
    #[error("{file}: no boot entry with a kernel")]
    NoEntry {
        /// The file.
        file: String,
    },
}

/// How deep includes (`configfile`, `source`, `INCLUDE`) may nest.
pub const MAX_DEPTH: usize = 8;

/// Splits a line into words: whitespace-separated, with '…' and "…"
/// quoting and `\` escapes, as GRUB's script reader does for the commands
/// used here.
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                have = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                have = true;
            }
            (_, c) => {
                cur.push(c);
                have = true;
            }
        }
    }
    if have {
        out.push(cur);
    }
    out
}

/// Joins `rel` to directory `dir` unless it is absolute; `.` and `..`
/// are resolved, and never climb above the root.
pub fn resolve(dir: &str, rel: &str) -> String {
    let joined = if rel.starts_with('/') {
        rel.to_string()
    } else {
        format!("{}/{rel}", dir.trim_end_matches('/'))
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The directory part of `path`.
pub fn dir_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Orders names as versions, newest first: digit runs compare as numbers
/// (`vmlinuz-6.10` after `vmlinuz-6.9`), the rest as text.
pub fn newest_first(names: &mut [String]) {
    names.sort_by(|a, b| version_cmp(b, a));
}

fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (trim_zeros(&a[..na]), trim_zeros(&b[..nb]));
                let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
                if o.is_ne() {
                    return o;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n.min(d.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_quotes_and_escapes() {
        assert_eq!(
            words(r#"menuentry 'Debian GNU/Linux' --class debian "a b" c\ d {"#),
            [
                "menuentry",
                "Debian GNU/Linux",
                "--class",
                "debian",
                "a b",
                "c d",
                "{"
            ]
        );
        assert_eq!(words("  "), Vec::<String>::new());
        assert_eq!(words("x ''"), ["x", ""]);
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        assert_eq!(resolve("/isolinux", "vmlinuz"), "/isolinux/vmlinuz");
        assert_eq!(
            resolve("/isolinux", "/install.amd/vmlinuz"),
            "/install.amd/vmlinuz"
        );
        assert_eq!(resolve("/a", "../../../etc/x"), "/etc/x");
        assert_eq!(dir_of("/boot/grub/grub.cfg"), "/boot/grub");
        assert_eq!(dir_of("/grub.cfg"), "/");
    }

    #[test]
    fn versions_sort_newest_first() {
        let mut v: Vec<String> = ["linux-6.9.efi", "linux-6.10.efi", "linux-6.1.efi", "a.efi"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        newest_first(&mut v);
        assert_eq!(
            v,
            ["linux-6.10.efi", "linux-6.9.efi", "linux-6.1.efi", "a.efi"]
        );
    }
}
