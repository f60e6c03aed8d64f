//! Two network namespaces joined by a veth with a rate limit: a second
//! host on this machine.

use std::path::Path;
use std::process::Command;

use crate::Res;

/// Two network namespaces joined by a veth limited to 1 Gbit/s; removed
/// on drop.
pub struct NetPair {
    /// Source namespace.
    pub a: String,
    /// Destination namespace.
    pub b: String,
    /// Destination address.
    pub addr_b: String,
}

fn sh(args: &[&str]) -> Res<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetPair {
    /// Creates the pair (root, iproute2 needed).
    pub fn new(tag: &str) -> Res<NetPair> {
        let id = std::process::id() % 100000;
        let p = NetPair {
            a: format!("tmA{tag}{id}"),
            b: format!("tmB{tag}{id}"),
            addr_b: "10.201.0.2".into(),
        };
        let (va, vb) = (format!("va{id}"), format!("vb{id}"));
        sh(&["ip", "netns", "add", &p.a])?;
        sh(&["ip", "netns", "add", &p.b])?;
        sh(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ])?;
        sh(&["ip", "link", "set", &va, "netns", &p.a])?;
        sh(&["ip", "link", "set", &vb, "netns", &p.b])?;
        for (ns, dev, addr) in [(&p.a, &va, "10.201.0.1/24"), (&p.b, &vb, "10.201.0.2/24")] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&[
                "tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", "1gbit",
                "burst", "1mb", "latency", "10ms",
            ])?;
        }
        Ok(p)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.a]);
        let _ = sh(&["ip", "netns", "del", &self.b]);
    }
}

/// A command run inside `ns` (None: here).
pub fn in_ns(ns: Option<&str>, prog: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(prog);
            c
        }
        None => Command::new(prog),
    }
}
