//! Traffic control on a switch port: maximum bandwidth and port mirroring.
//!
//! No maintained Rust crate builds tc's qdiscs, policers and mirred
//! actions (rtnetlink's tc support covers only u32 redirects), so this
//! runs the `tc` binary with arguments built from typed values: no
//! caller-formatted strings reach it.
//!
//! Directions are the port's: a tap's *egress* is what the bridge sends to
//! the guest, its *ingress* what the guest sends. The cap shapes egress
//! with a token-bucket filter (`tbf`, which backpressures local senders
//! smoothly); ingress is policed by the port's nftables table
//! ([`crate::policy::Guards::max_bw_from_port`]), as this kernel has no tc
//! police action.
//! Mirroring copies both directions to the monitor port with `mirred
//! egress mirror` on the port's `clsact` hooks.

use std::ffi::OsString;
use std::io;
use std::process::Command;

/// Errors from `tc`.
#[derive(Debug, thiserror::Error)]
pub enum ShapingError {
    /// `tc` could not be run.
    #[error("cannot run tc (is iproute2 installed?)")]
    Spawn(#[source] io::Error),
    /// `tc` refused.
    #[error("tc {args}: {stderr}")]
    Failed {
        /// The arguments, for the message.
        args: String,
        /// What tc said.
        stderr: String,
    },
}

/// Which hook of a `clsact` qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Frames the port receives (from the guest).
    Ingress,
    /// Frames the port sends (to the guest).
    Egress,
}

impl Hook {
    fn arg(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// One `tc` invocation, built from typed parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tc {
    /// `tc qdisc replace dev D root tbf rate R burst B latency L`.
    Tbf {
        /// Device.
        dev: String,
        /// Bytes per second.
        rate: u64,
        /// Bucket size in bytes.
        burst: u64,
        /// Queueing latency allowed, milliseconds.
        latency_ms: u32,
    },
    /// `tc qdisc replace dev D clsact`.
    Clsact {
        /// Device.
        dev: String,
    },
    /// `tc filter add dev D HOOK pref P u32 match u32 0 0 action mirred egress mirror dev M`.
    Mirror {
        /// Device.
        dev: String,
        /// Hook.
        hook: Hook,
        /// The monitor port.
        to: String,
    },
    /// `tc qdisc del dev D root` / `clsact`: removing what this module added.
    Clear {
        /// Device.
        dev: String,
        /// The root qdisc (true) or the clsact one.
        root: bool,
    },
}

/// The mirror filters' preference.
const PREF_MIRROR: &str = "20";

impl Tc {
    /// The arguments after `tc`.
    pub fn args(&self) -> Vec<OsString> {
        let v: Vec<String> = match self {
            Tc::Tbf {
                dev,
                rate,
                burst,
                latency_ms,
            } => vec![
                "qdisc".into(),
                "replace".into(),
                "dev".into(),
                dev.clone(),
                "root".into(),
                "tbf".into(),
                "rate".into(),
                format!("{}bps", rate),
                "burst".into(),
                burst.to_string(),
                "latency".into(),
                format!("{latency_ms}ms"),
            ],
            Tc::Clsact { dev } => vec![
                "qdisc".into(),
                "replace".into(),
                "dev".into(),
                dev.clone(),
                "clsact".into(),
            ],
            Tc::Mirror { dev, hook, to } => vec![
                "filter".into(),
                "replace".into(),
                "dev".into(),
                dev.clone(),
                hook.arg().into(),
                "pref".into(),
                PREF_MIRROR.into(),
                // Matches every frame (this kernel has no matchall).
                "u32".into(),
                "match".into(),
                "u32".into(),
                "0".into(),
                "0".into(),
                "action".into(),
                "mirred".into(),
                "egress".into(),
                "mirror".into(),
                "dev".into(),
                to.clone(),
            ],
            Tc::Clear { dev, root } => vec![
                "qdisc".into(),
                "del".into(),
                "dev".into(),
                dev.clone(),
                if *root { "root" } else { "clsact" }.into(),
            ],
        };
        v.into_iter().map(OsString::from).collect()
    }

    /// Runs it.
    pub fn run(&self) -> Result<(), ShapingError> {
        let args = self.args();
        let out = Command::new("tc")
            .args(&args)
            .output()
            .map_err(ShapingError::Spawn)?;
        if !out.status.success() {
            return Err(ShapingError::Failed {
                args: args
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// A port's traffic settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortShaping {
    /// Maximum bandwidth to the port, bytes per second.
    pub max_bw: Option<u64>,
    /// The monitor port that gets a copy of both directions.
    pub mirror_to: Option<String>,
}

/// A bucket holding about 10 ms at `rate`, at least a 64 KiB GSO frame.
fn burst(rate: u64) -> u64 {
    (rate / 100).max(64 << 10) + 1514
}

/// The commands that give `port` its shaping (after [`clear`]).
pub fn commands(port: &str, s: &PortShaping) -> Vec<Tc> {
    let mut v = Vec::new();
    if let Some(rate) = s.max_bw {
        v.push(Tc::Tbf {
            dev: port.into(),
            rate,
            burst: burst(rate),
            latency_ms: 50,
        });
    }
    if s.mirror_to.is_some() {
        v.push(Tc::Clsact { dev: port.into() });
    }
    if let Some(to) = &s.mirror_to {
        for hook in [Hook::Ingress, Hook::Egress] {
            v.push(Tc::Mirror {
                dev: port.into(),
                hook,
                to: to.clone(),
            });
        }
    }
    v
}

/// Applies `s` to `port`.
pub fn apply(port: &str, s: &PortShaping) -> Result<(), ShapingError> {
    for c in commands(port, s) {
        c.run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_shapes_egress_and_a_mirror_copies_both_ways() {
        let c = commands(
            "tp0",
            &PortShaping {
                max_bw: Some(10_000_000),
                mirror_to: Some("mon0".into()),
            },
        );
        assert_eq!(c.len(), 4);
        let tbf = c[0].args();
        assert_eq!(tbf[7], "10000000bps");
        assert!(matches!(&c[1], Tc::Clsact { .. }));
        assert!(matches!(
            &c[2],
            Tc::Mirror {
                hook: Hook::Ingress,
                ..
            }
        ));
        assert_eq!(c[3].args().last().unwrap(), "mon0");
        assert!(commands("tp0", &PortShaping::default()).is_empty());
    }
}
