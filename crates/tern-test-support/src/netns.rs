//! Network namespaces for tests: each is deleted (with the interfaces in
//! it) when its value is dropped, by a panic too, so a test's bridges,
//! veths and taps never outlive it.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;

/// Runs `ip ARGS` and panics with its error output if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace (`/run/netns/NAME`) with `lo` up.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Makes `PREFIX-TAG-PID` (the pid keeps parallel test binaries apart).
    pub fn new(prefix: &str, tag: &str) -> NetNs {
        let name = format!("{prefix}-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (for `ip -n NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, which `setns` opens.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Moves the calling thread into the namespace (sockets it makes and
    /// children it spawns are in it from then on).
    pub fn enter(&self) {
        let f = std::fs::File::open(self.path()).expect("open the namespace");
        rustix::thread::move_into_link_name_space(
            f.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
    }

    /// Runs `f` on a thread inside the namespace; sockets it makes stay in
    /// the namespace wherever they are used afterwards.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }

    /// `PROG` to be run inside the namespace (`ip netns exec`).
    pub fn command(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        c
    }

    /// Pings `to` `count` times from the namespace, waiting up to
    /// `wait_s` seconds for each answer.
    pub fn ping(&self, to: &str, count: u32, wait_s: u32) -> Ping {
        ping_with(self.command("ping"), to, count, wait_s)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What a run of `ping` saw.
#[derive(Clone, Copy, Debug)]
pub struct Ping {
    /// Answers received.
    pub received: u32,
    /// Average round trip in milliseconds (NaN when none came back).
    pub avg_ms: f64,
}

/// Pings `to` from the calling thread's namespace.
pub fn ping(to: &str, count: u32, wait_s: u32) -> Ping {
    ping_with(Command::new("ping"), to, count, wait_s)
}

fn ping_with(mut cmd: Command, to: &str, count: u32, wait_s: u32) -> Ping {
    let out = cmd
        .args([
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            &wait_s.to_string(),
            to,
        ])
        .output()
        .expect("run ping");
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

/// Reads `ping`'s summary lines.
fn parse_ping(text: &str) -> Ping {
    let received = text
        .lines()
        .find(|l| l.contains("received"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let avg_ms = text
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Ping { received, avg_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summaries_are_read() {
        let p = parse_ping(
            "PING 10.0.0.2\n\n--- 10.0.0.2 ping statistics ---\n3 packets transmitted, 2 received, 33% packet loss, time 402ms\nrtt min/avg/max/mdev = 0.041/0.052/0.063/0.011 ms\n",
        );
        assert_eq!(p.received, 2);
        assert!((p.avg_ms - 0.052).abs() < 1e-9);
        let none = parse_ping("3 packets transmitted, 0 received, 100% packet loss\n");
        assert_eq!(none.received, 0);
        assert!(none.avg_ms.is_nan());
    }
}
