//! The etcd key layout. Everything lives under one versioned prefix so that
//! a later layout can sit beside this one during a rolling upgrade.
//!
//! - `/tern/v1/members/NODE`: the node's permanent record (capacity, API
//!   address, administrative state); written at join, kept when it goes down.
//! - `/tern/v1/alive/NODE`: bound to the node's lease; present while it is up.
//!   etcd deletes it when the lease expires: that deletion is "node down".
//! - `/tern/v1/vms/VM/config`: the clustered VM's configuration.
//! - `/tern/v1/vms/VM/owner`: bound to the owner's lease; its mod revision is
//!   the fencing token.
//! - `/tern/v1/vms/VM/stopped`: present while the VM is meant to be stopped
//!   (no node restarts it).

use crate::error::{ClusterError, Result};

/// Prefix of every key of this layout.
pub const ROOT: &str = "/tern/v1/";
/// Prefix of members' permanent records.
pub const MEMBERS: &str = "/tern/v1/members/";
/// Prefix of the live (leased) node keys.
pub const ALIVE: &str = "/tern/v1/alive/";
/// Prefix of clustered VMs.
pub const VMS: &str = "/tern/v1/vms/";

/// The permanent member key of `node`.
pub fn member(node: &str) -> String {
    format!("{MEMBERS}{node}")
}

/// The leased liveness key of `node`.
pub fn alive(node: &str) -> String {
    format!("{ALIVE}{node}")
}

/// The configuration key of VM `vm`.
pub fn vm_config(vm: &str) -> String {
    format!("{VMS}{vm}/config")
}

/// The owner key of VM `vm`.
pub fn vm_owner(vm: &str) -> String {
    format!("{VMS}{vm}/owner")
}

/// The stopped marker of VM `vm`.
pub fn vm_stopped(vm: &str) -> String {
    format!("{VMS}{vm}/stopped")
}

/// What a key under [`VMS`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmKey<'a> {
    /// `VMS/NAME/config`.
    Config(&'a str),
    /// `VMS/NAME/owner`.
    Owner(&'a str),
    /// `VMS/NAME/stopped`.
    Stopped(&'a str),
}

/// Parses a key under [`VMS`]; `None` for anything else.
pub fn parse_vm_key(key: &str) -> Option<VmKey<'_>> {
    let rest = key.strip_prefix(VMS)?;
    let (name, leaf) = rest.split_once('/')?;
    match leaf {
        "config" => Some(VmKey::Config(name)),
        "owner" => Some(VmKey::Owner(name)),
        "stopped" => Some(VmKey::Stopped(name)),
        _ => None,
    }
}

/// Checks that `name` is a usable node or VM name (the daemon's VM name rule:
/// it is one key segment).
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::BadName {
            what,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_keys_round_trip() {
        assert_eq!(
            parse_vm_key(&vm_config("web-1")),
            Some(VmKey::Config("web-1"))
        );
        assert_eq!(parse_vm_key(&vm_owner("db")), Some(VmKey::Owner("db")));
        assert_eq!(parse_vm_key(&vm_stopped("db")), Some(VmKey::Stopped("db")));
        assert_eq!(parse_vm_key("/tern/v1/vms/x/other"), None);
        assert_eq!(parse_vm_key(&member("n1")), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("node", "node-1").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_name("node", bad).is_err(), "{bad:?} accepted");
        }
    }
}
