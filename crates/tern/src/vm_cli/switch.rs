//! `tern switch ...`: virtual switches (external, internal, private), and
//! the `--nic` flag of `tern vm create`.

use clap::{Args, Subcommand, ValueEnum};
use tern_api::{CreateNic, CreateSwitch, Nic, Switch, SwitchList, SwitchType};

use super::{client, print_json, CmdResult, Conn};

#[derive(Args, Debug)]
pub struct SwitchCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: SwitchAction,
}

/// A switch's type on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// Bridged to a host interface (--uplink).
    External,
    /// VMs and the host (--address) reach each other.
    Internal,
    /// Only the VMs on it reach each other.
    Private,
}

#[derive(Subcommand, Debug)]
enum SwitchAction {
    /// Create a switch.
    Create {
        /// Name.
        name: String,
        /// Its type.
        #[arg(long = "type", value_enum)]
        kind: Kind,
        /// External: the host interface to bridge.
        #[arg(long)]
        uplink: Option<String>,
        /// Internal: the host's address on it, A.B.C.D/LEN.
        #[arg(long)]
        address: Option<String>,
    },
    /// List switches.
    #[command(alias = "ls")]
    List,
    /// Show one switch.
    Show {
        /// Switch name or id.
        name: String,
    },
    /// Delete a switch (refused while NICs are on it).
    Delete {
        /// Switch name or id.
        name: String,
    },
}

fn print_switch(s: &Switch) {
    println!("name:     {}", s.name);
    println!("id:       {}", s.id);
    println!("type:     {}", s.kind.as_str());
    println!("bridge:   {}", s.bridge);
    if let Some(u) = &s.uplink {
        let link = match s.link_up {
            Some(true) => "up",
            Some(false) => "down",
            None => "unknown",
        };
        println!("uplink:   {u} ({link})");
    }
    if let Some(a) = &s.address {
        println!("address:  {a}");
    }
    println!(
        "nics:     {}",
        if s.nics.is_empty() {
            "-".into()
        } else {
            s.nics.join(", ")
        }
    );
}

/// Runs `tern switch ...`.
pub(super) async fn run(cmd: SwitchCmd) -> CmdResult {
    let c = client(&cmd.conn)?;
    let json = cmd.conn.json;
    match cmd.action {
        SwitchAction::Create {
            name,
            kind,
            uplink,
            address,
        } => {
            let kind = match kind {
                Kind::External => SwitchType::External,
                Kind::Internal => SwitchType::Internal,
                Kind::Private => SwitchType::Private,
            };
            let s = c
                .create_switch(&CreateSwitch {
                    name,
                    kind,
                    uplink,
                    address,
                })
                .await?;
            if json {
                print_json(&s);
            } else {
                println!(
                    "{}: created ({}, bridge {})",
                    s.name,
                    s.kind.as_str(),
                    s.bridge
                );
            }
        }
        SwitchAction::List => {
            let switches = c.list_switches().await?;
            if json {
                print_json(&SwitchList { switches });
            } else {
                println!(
                    "{:<20} {:<9} {:<16} {:<12} NICS",
                    "NAME", "TYPE", "BRIDGE", "UPLINK"
                );
                for s in &switches {
                    println!(
                        "{:<20} {:<9} {:<16} {:<12} {}",
                        s.name,
                        s.kind.as_str(),
                        s.bridge,
                        s.uplink.as_deref().unwrap_or("-"),
                        s.nics.len()
                    );
                }
            }
        }
        SwitchAction::Show { name } => {
            let s = c.get_switch(&name).await?;
            if json {
                print_json(&s);
            } else {
                print_switch(&s);
            }
        }
        SwitchAction::Delete { name } => {
            c.delete_switch(&name).await?;
            if !json {
                println!("{name}: deleted");
            }
        }
    }
    Ok(())
}

/// Parses `--nic switch=NAME[,mac=M,max-bw=SIZE,mac-guard,dhcp-guard,router-guard,mirror=PORT]`.
pub(super) fn parse_nic(text: &str) -> Result<CreateNic, String> {
    let mut nic = CreateNic::default();
    for part in text.split(',') {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part, None),
        };
        let need = |v: Option<&str>| -> Result<String, String> {
            match v {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(format!("--nic: '{key}' needs a value ({key}=...)")),
            }
        };
        let flag = |v: Option<&str>| -> Result<bool, String> {
            match v {
                None => Ok(true),
                Some(_) => Err(format!("--nic: '{key}' takes no value")),
            }
        };
        match key {
            "switch" => nic.switch = need(value)?,
            "mac" => nic.mac = Some(need(value)?),
            "max-bw" => {
                let v = need(value)?;
                let b = tern_api::parse_size(&v).map_err(|e| format!("--nic max-bw: {e}"))?;
                if b == 0 {
                    return Err("--nic max-bw: must be above 0 (bytes/s)".into());
                }
                nic.max_bw = Some(b);
            }
            "mac-guard" => nic.mac_guard = flag(value)?,
            "dhcp-guard" => nic.dhcp_guard = flag(value)?,
            "router-guard" => nic.router_guard = flag(value)?,
            "mirror" => nic.mirror = Some(need(value)?),
            other => {
                return Err(format!(
                    "--nic: unknown option '{other}' (switch=, mac=, max-bw=, mac-guard, \
                     dhcp-guard, router-guard, mirror=)"
                ))
            }
        }
    }
    if nic.switch.is_empty() {
        return Err(format!("--nic '{text}': switch=NAME is required"));
    }
    Ok(nic)
}

/// Prints a VM's NICs (for `tern vm show`).
pub(super) fn print_nics(nics: &[Nic]) {
    if nics.is_empty() {
        println!("nics:     -");
    }
    for n in nics {
        let mut extra = Vec::new();
        if let Some(b) = n.max_bw {
            extra.push(format!("max-bw {b} B/s"));
        }
        for (on, what) in [
            (n.mac_guard, "mac-guard"),
            (n.dhcp_guard, "dhcp-guard"),
            (n.router_guard, "router-guard"),
        ] {
            if on {
                extra.push(what.into());
            }
        }
        if let Some(m) = &n.mirror {
            extra.push(format!("mirror {m}"));
        }
        println!(
            "nic {}:    switch {} mac {} tap {}{}",
            n.index,
            n.switch,
            n.mac,
            n.tap,
            if extra.is_empty() {
                String::new()
            } else {
                format!(" ({})", extra.join(", "))
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_specs_parse_into_typed_fields() {
        let n = parse_nic("switch=lab,mac=52:54:00:00:00:02,max-bw=10M,mac-guard,dhcp-guard,router-guard,mirror=tap9").unwrap();
        assert_eq!(n.switch, "lab");
        assert_eq!(n.mac.as_deref(), Some("52:54:00:00:00:02"));
        assert_eq!(n.max_bw, Some(10 << 20));
        assert!(n.mac_guard && n.dhcp_guard && n.router_guard);
        assert_eq!(n.mirror.as_deref(), Some("tap9"));
        assert_eq!(parse_nic("switch=x").unwrap().max_bw, None);
    }

    #[test]
    fn bad_nic_specs_name_what_is_wrong() {
        for (spec, needle) in [
            ("mac=52:54:00:00:00:02", "switch=NAME is required"),
            ("switch=", "'switch' needs a value"),
            ("switch=a,speed=1", "unknown option 'speed'"),
            ("switch=a,mac-guard=yes", "'mac-guard' takes no value"),
            ("switch=a,max-bw=0", "must be above 0"),
            ("switch=a,max-bw=ten", "max-bw"),
        ] {
            let e = parse_nic(spec).unwrap_err();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
