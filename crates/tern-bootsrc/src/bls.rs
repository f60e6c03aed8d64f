//! Boot Loader Specification type #1 entries (`/loader/entries/*.conf`)
//! and `loader.conf`'s `default`, as systemd-boot reads them.

use crate::config::{newest_first, Entry};

/// Parses one entry file; `None` when it names no `linux` kernel (an
/// `efi` entry, or one for another architecture).
pub fn parse_entry(text: &str, file_name: &str) -> Option<Entry> {
    let mut e = Entry {
        title: file_name.trim_end_matches(".conf").to_string(),
        ..Entry::default()
    };
    let mut options = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let value = value.trim();
        match key {
            "title" => e.title = value.to_string(),
            "linux" => e.linux = value.to_string(),
            "initrd" => e.initrds.push(value.to_string()),
            "options" => options.push(value.to_string()),
            "architecture" if !value.eq_ignore_ascii_case("x64") => return None,
            _ => {}
        }
    }
    e.options = options.join(" ");
    (!e.linux.is_empty()).then_some(e)
}

/// `loader.conf`'s `default` pattern (`*` matches any run of characters).
pub fn default_pattern(loader_conf: &str) -> Option<String> {
    loader_conf.lines().find_map(|l| {
        let l = l.trim();
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == "default").then(|| v.trim().to_string())
    })
}

/// Matches `name` against a `*` glob.
pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else if let Some(at) = rest.find(p) {
            rest = &rest[at + p.len()..];
        } else {
            return false;
        }
    }
    true
}

/// The order entry files are tried in: the `default` match first, then
/// newest version first (systemd-boot's order without sort keys).
pub fn order(mut names: Vec<String>, default: Option<&str>) -> Vec<String> {
    names.retain(|n| n.ends_with(".conf"));
    newest_first(&mut names);
    if let Some(d) = default {
        if let Some(i) = names
            .iter()
            .position(|n| glob(d, n) || glob(d, n.trim_end_matches(".conf")))
        {
            let first = names.remove(i);
            names.insert(0, first);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_defaults() {
        let e = parse_entry(
            "title Debian\nversion 6.1\nlinux /vmlinuz-6.1\ninitrd /initrd-6.1\noptions root=/dev/vda2\noptions quiet\n",
            "debian-6.1.conf",
        )
        .unwrap();
        assert_eq!(e.linux, "/vmlinuz-6.1");
        assert_eq!(e.initrds, ["/initrd-6.1"]);
        assert_eq!(e.options, "root=/dev/vda2 quiet");
        assert!(parse_entry("efi /EFI/x.efi\n", "x.conf").is_none());
        assert!(parse_entry("linux /k\narchitecture aa64\n", "x.conf").is_none());
        assert_eq!(
            default_pattern("timeout 3\ndefault  debian-*\n").as_deref(),
            Some("debian-*")
        );
        let names = ["a-6.1.conf", "a-6.10.conf", "old.conf", "notes.txt"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            order(names.clone(), None),
            ["old.conf", "a-6.10.conf", "a-6.1.conf"]
        );
        assert_eq!(
            order(names, Some("a-6.1")),
            ["a-6.1.conf", "old.conf", "a-6.10.conf"]
        );
        assert!(glob("*-6.*", "a-6.1.conf") && !glob("b*", "a"));
    }
}
