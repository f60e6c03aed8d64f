//! The subset of `grub.cfg` a direct boot needs: `menuentry` and
//! `submenu` blocks with `linux` and `initrd`, `set default=`, and
//! `configfile`/`source` includes. Everything else (`insmod`, `search`,
//! `if`, themes) is skipped: Tern finds the files itself.

use crate::config::{words, ConfigError, Entry, MAX_DEPTH};

/// A parsed configuration: entries in menu order (submenus flattened,
/// their entries titled `SUBMENU>TITLE`) and the `default` setting.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Grub {
    /// Top-level menu items; a submenu's entries follow it.
    pub items: Vec<Item>,
    /// `set default=...`, last one wins.
    pub default: Option<String>,
}

/// A menu item.
#[derive(Debug, PartialEq, Eq)]
pub struct Item {
    /// The entry.
    pub entry: Entry,
    /// Its position: `N` at the top level, `N>M` in a submenu.
    pub index: String,
}

/// Strips GRUB's device prefix (`($root)/boot/x`, `(hd0,gpt2)/x`).
fn path(p: &str) -> String {
    let p = match p.strip_prefix('(') {
        Some(rest) => rest.split_once(')').map_or(rest, |(_, r)| r),
        None => p,
    };
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

/// Parses `text` (the file `file`), reading includes through `load`.
pub fn parse(
    text: &str,
    file: &str,
    load: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Grub, ConfigError> {
    let mut g = Grub::default();
    let mut top = 0usize;
    parse_into(text, file, load, 0, &mut g, &mut top)?;
    Ok(g)
}

fn parse_into(
    text: &str,
    file: &str,
    load: &mut dyn FnMut(&str) -> Option<String>,
    depth: usize,
    g: &mut Grub,
    top: &mut usize,
) -> Result<(), ConfigError> {
    if depth > MAX_DEPTH {
        return Err(ConfigError::Loop { file: file.into() });
    }
    // Open blocks: (is a submenu, its title, its index, entries seen in it).
    let mut sub: Option<(String, usize, usize)> = None;
    let mut cur: Option<(Entry, String)> = None;
    for raw in text.lines() {
        let w = words(raw.trim());
        let Some(cmd) = w.first().map(String::as_str) else {
            continue;
        };
        if cmd.starts_with('#') {
            continue;
        }
        match cmd {
            "menuentry" => {
                let title = w.get(1).cloned().unwrap_or_default();
                let index = match &mut sub {
                    Some((_, si, n)) => {
                        *n += 1;
                        format!("{si}>{}", *n - 1)
                    }
                    None => {
                        *top += 1;
                        (*top - 1).to_string()
                    }
                };
                let title = match &sub {
                    Some((st, _, _)) => format!("{st}>{title}"),
                    None => title,
                };
                cur = Some((
                    Entry {
                        title,
                        ..Entry::default()
                    },
                    index,
                ));
            }
            "submenu" => {
                sub = Some((w.get(1).cloned().unwrap_or_default(), *top, 0));
                *top += 1;
            }
            "}" => {
                if let Some((e, index)) = cur.take() {
                    if !e.linux.is_empty() {
                        g.items.push(Item { entry: e, index });
                    }
                } else {
                    sub = None;
                }
            }
            "linux" | "linuxefi" | "linux16" => {
                if let (Some((e, _)), Some(k)) = (&mut cur, w.get(1)) {
                    e.linux = path(k);
                    e.options = w[2..]
                        .iter()
                        .filter(|a| !a.starts_with('$'))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" ");
                }
            }
            "initrd" | "initrdefi" | "initrd16" => {
                if let Some((e, _)) = &mut cur {
                    e.initrds = w[1..].iter().map(|p| path(p)).collect();
                }
            }
            "set" if cur.is_none() => {
                if let Some(v) = w.get(1).and_then(|a| a.strip_prefix("default=")) {
                    g.default = Some(v.to_string());
                }
            }
            "configfile" | "source" if cur.is_none() => {
                if let Some(p) = w.get(1) {
                    let inc = path(p);
                    if let Some(t) = load(&inc) {
                        parse_into(&t, &inc, load, depth + 1, g, top)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

impl Grub {
    /// Entries in the order to try: the default first (by index, `N>M`
    /// or title; a submenu's index means its first entry), then the rest.
    pub fn ordered(&self) -> Vec<&Entry> {
        let d = self
            .default
            .as_deref()
            .filter(|d| !d.is_empty() && !d.starts_with('$') && *d != "saved");
        let pick = d.and_then(|d| {
            self.items.iter().position(|i| {
                i.index == d
                    || i.entry.title == d
                    || (!d.contains('>') && i.index.starts_with(&format!("{d}>")))
            })
        });
        let mut out: Vec<&Entry> = Vec::new();
        if let Some(i) = pick {
            out.push(&self.items[i].entry);
        }
        out.extend(
            self.items
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != pick)
                .map(|(_, it)| &it.entry),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = r#"
set default="0"
if [ -s $prefix/grubenv ]; then
  load_env
fi
insmod part_gpt
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-simple-x' {
	load_video
	insmod ext2
	search --no-floppy --fs-uuid --set=root 1234
	echo	'Loading Linux 6.1.0-18-amd64 ...'
	linux	/boot/vmlinuz-6.1.0-18-amd64 root=UUID=1234 ro  quiet $vt_handoff
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-6.1.0-18-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-x' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-18-amd64 (recovery mode)' {
		linux	($root)/boot/vmlinuz-6.1.0-18-amd64 root=UUID=1234 ro single
		initrd	/boot/initrd.img-6.1.0-18-amd64
	}
}
"#;

    #[test]
    fn debian_grub_cfg() {
        let g = parse(DEBIAN, "/boot/grub/grub.cfg", &mut |_| None).unwrap();
        assert_eq!(g.items.len(), 2);
        let o = g.ordered();
        assert_eq!(o[0].linux, "/boot/vmlinuz-6.1.0-18-amd64");
        assert_eq!(o[0].options, "root=UUID=1234 ro quiet");
        assert_eq!(o[0].initrds, ["/boot/initrd.img-6.1.0-18-amd64"]);
        assert_eq!(g.items[1].index, "1>0");
        assert!(o[1].options.ends_with("single"));
    }

    #[test]
    fn defaults_by_index_and_title() {
        let text =
            "set default=\"1>0\"\n".to_string() + DEBIAN.replace("set default=\"0\"", "").as_str();
        let g = parse(&text, "g", &mut |_| None).unwrap();
        assert!(g.ordered()[0].options.ends_with("single"));
        let g = parse("set default=1\n", "g", &mut |_| None).unwrap();
        assert!(g.ordered().is_empty());
        let t = "set default='Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux 6.1.0-18-amd64 (recovery mode)'\n".to_string() + DEBIAN.replace("set default=\"0\"", "").as_str();
        let g = parse(&t, "g", &mut |_| None).unwrap();
        assert!(g.ordered()[0].options.ends_with("single"));
    }

    #[test]
    fn includes_are_followed_and_loops_refused() {
        let mut load = |p: &str| match p {
            "/boot/grub/real.cfg" => Some("menuentry x {\nlinux /k a=1\n}\n".to_string()),
            "/loop.cfg" => Some("configfile /loop.cfg\n".to_string()),
            _ => None,
        };
        let g = parse("configfile /boot/grub/real.cfg\n", "g", &mut load).unwrap();
        assert_eq!(g.ordered()[0].linux, "/k");
        let e = parse("source /loop.cfg\n", "g", &mut load).unwrap_err();
        assert!(matches!(e, ConfigError::Loop { .. }), "{e}");
    }
}
