//! The subset of `isolinux.cfg`/`syslinux.cfg` a direct boot needs:
//! `LABEL` with `KERNEL`/`LINUX`, `APPEND` (and its `initrd=`), `INITRD`,
//! `DEFAULT`, `MENU DEFAULT`, `ONTIMEOUT` and `INCLUDE`. Keywords are
//! case-insensitive; relative paths are relative to the configuration's
//! directory, as syslinux's working directory is.

use crate::config::{dir_of, resolve, ConfigError, Entry, MAX_DEPTH};

/// A parsed configuration.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Syslinux {
    /// Labels in file order.
    pub labels: Vec<Entry>,
    /// `DEFAULT` (a label, or a COM32 module such as `vesamenu.c32`).
    pub default: Option<String>,
    /// `ONTIMEOUT`, which wins over a module `DEFAULT`.
    pub ontimeout: Option<String>,
    /// The label marked `MENU DEFAULT`.
    pub menu_default: Option<String>,
}

/// Parses `text` (the file `file`), reading `INCLUDE`s through `load`.
pub fn parse(
    text: &str,
    file: &str,
    load: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Syslinux, ConfigError> {
    let mut s = Syslinux::default();
    parse_into(text, file, dir_of(file), load, 0, &mut s)?;
    Ok(s)
}

fn parse_into(
    text: &str,
    file: &str,
    dir: &str,
    load: &mut dyn FnMut(&str) -> Option<String>,
    depth: usize,
    s: &mut Syslinux,
) -> Result<(), ConfigError> {
    if depth > MAX_DEPTH {
        return Err(ConfigError::Loop { file: file.into() });
    }
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (kw, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        match kw.to_ascii_lowercase().as_str() {
            "label" => s.labels.push(Entry {
                title: rest.to_string(),
                ..Entry::default()
            }),
            "kernel" | "linux" => {
                if let Some(l) = s.labels.last_mut() {
                    l.linux = resolve(dir, rest);
                }
            }
            "append" => {
                if let Some(l) = s.labels.last_mut() {
                    let mut opts = Vec::new();
                    for a in rest.split_whitespace() {
                        match a.strip_prefix("initrd=") {
                            Some(list) => l.initrds.extend(
                                list.split(',')
                                    .filter(|p| !p.is_empty())
                                    .map(|p| resolve(dir, p)),
                            ),
                            None if a == "-" => {}
                            None => opts.push(a),
                        }
                    }
                    l.options = opts.join(" ");
                }
            }
            "initrd" => {
                if let Some(l) = s.labels.last_mut() {
                    l.initrds = rest.split(',').map(|p| resolve(dir, p)).collect();
                }
            }
            "default" => s.default = Some(rest.to_string()),
            "ontimeout" => s.ontimeout = Some(rest.to_string()),
            "menu" => {
                let mut w = rest.split_whitespace();
                if w.next().is_some_and(|k| k.eq_ignore_ascii_case("default")) {
                    if let Some(l) = s.labels.last() {
                        s.menu_default = Some(l.title.clone());
                    }
                }
            }
            "include" => {
                let inc = resolve(dir, rest.split_whitespace().next().unwrap_or(""));
                if let Some(t) = load(&inc) {
                    parse_into(&t, &inc, dir, load, depth + 1, s)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

impl Syslinux {
    /// Labels with a kernel, the default first: `ONTIMEOUT`, else a
    /// `DEFAULT` naming a label, else the `MENU DEFAULT` label, else file
    /// order. A `DEFAULT` naming a kernel rather than a label (no labels
    /// match) boots that kernel with the rest of the line.
    pub fn ordered(&self) -> Vec<Entry> {
        let usable: Vec<&Entry> = self.labels.iter().filter(|l| !l.linux.is_empty()).collect();
        let by_name = |n: &str| usable.iter().position(|l| l.title.eq_ignore_ascii_case(n));
        let first_word = |d: &String| d.split_whitespace().next().unwrap_or("").to_string();
        let pick = self
            .ontimeout
            .as_ref()
            .and_then(|d| by_name(&first_word(d)))
            .or_else(|| self.default.as_ref().and_then(|d| by_name(&first_word(d))))
            .or_else(|| self.menu_default.as_deref().and_then(by_name));
        let mut out = Vec::new();
        if pick.is_none() {
            if let Some(d) = &self.default {
                let w: Vec<&str> = d.split_whitespace().collect();
                if let Some(k) = w.first().filter(|k| !k.ends_with(".c32")) {
                    if usable.is_empty() {
                        out.push(Entry {
                            title: (*k).to_string(),
                            linux: resolve("/", k),
                            initrds: Vec::new(),
                            options: w[1..].join(" "),
                        });
                    }
                }
            }
        }
        if let Some(i) = pick {
            out.push(usable[i].clone());
        }
        out.extend(
            usable
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != pick)
                .map(|(_, l)| (*l).clone()),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_installer_menus() {
        let mut load = |p: &str| {
            match p {
            "/isolinux/menu.cfg" => Some("menu hshift 4\ninclude stdmenu.cfg\ninclude txt.cfg\n".into()),
            "/isolinux/txt.cfg" => Some(
                "default install\nlabel install\n\tmenu label ^Install\n\tkernel /install.amd/vmlinuz\n\tappend vga=788 initrd=/install.amd/initrd.gz --- quiet\n".into(),
            ),
            "/isolinux/stdmenu.cfg" => Some("menu background splash.png\n".into()),
            _ => None,
        }
        };
        let s = parse(
            "path \ninclude menu.cfg\ndefault vesamenu.c32\nprompt 0\ntimeout 0\n",
            "/isolinux/isolinux.cfg",
            &mut load,
        )
        .unwrap();
        let o = s.ordered();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].linux, "/install.amd/vmlinuz");
        assert_eq!(o[0].initrds, ["/install.amd/initrd.gz"]);
        assert_eq!(o[0].options, "vga=788 --- quiet");
    }

    #[test]
    fn defaults_relative_paths_and_loops() {
        let s = parse(
            "DEFAULT rescue\nLABEL live\n  LINUX vmlinuz\n  INITRD a.img,b.img\nLABEL rescue\n  KERNEL /k2\n  APPEND single\n",
            "/syslinux/syslinux.cfg",
            &mut |_| None,
        )
        .unwrap();
        let o = s.ordered();
        assert_eq!(o[0].linux, "/k2");
        assert_eq!(o[1].linux, "/syslinux/vmlinuz");
        assert_eq!(o[1].initrds, ["/syslinux/a.img", "/syslinux/b.img"]);
        let s = parse(
            "default /vmlinuz root=/dev/sr0\n",
            "/isolinux.cfg",
            &mut |_| None,
        )
        .unwrap();
        assert_eq!(s.ordered()[0].options, "root=/dev/sr0");
        let e = parse("include self.cfg\n", "/self.cfg", &mut |_| {
            Some("include self.cfg\n".into())
        })
        .unwrap_err();
        assert!(matches!(e, ConfigError::Loop { .. }));
    }
}
