//! Port policies of a switch port (a VM's tap): MAC-spoofing guard, DHCP
//! guard and router guard, as nftables bridge-family rules.
//!
//! Each port gets its own table `tern-port-NAME` (family bridge) with one
//! filter chain on the prerouting hook, which sees every frame the port
//! sends into the bridge (to other ports and to the host alike). A table
//! per port means applying is one atomic `nft` transaction (add, delete,
//! add again: idempotent) and removing the port's rules is deleting its
//! table. The ruleset is built from the `nftables` crate's typed schema and
//! handed to `nft -j`.

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, SetItem};
use nftables::helper::{self, NftablesError};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Counter, Drop, Limit, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::Mac;

/// Which guards a port has on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Guards {
    /// Drop frames whose source MAC is not the NIC's own.
    pub mac: bool,
    /// Drop DHCP (v4 and v6) server messages sent from the port: a VM
    /// cannot act as a rogue DHCP server.
    pub dhcp: bool,
    /// Drop router advertisements and redirects (ICMPv6 and ICMPv4
    /// redirect) sent from the port: a VM cannot act as a rogue router.
    pub router: bool,
    /// Police what the port sends to this many bytes per second (the
    /// other direction is shaped by tc, see [`crate::shaping`]; this
    /// kernel has no tc police action, nftables' `limit` does the same).
    pub max_bw_from_port: Option<u32>,
}

impl Guards {
    /// Whether any rule is on.
    pub fn any(&self) -> bool {
        self.mac || self.dhcp || self.router || self.max_bw_from_port.is_some()
    }
}

/// Errors applying or removing a port's policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `nft` could not be run or refused the ruleset.
    #[error("nftables rules for port {port}")]
    Nft {
        /// The port (tap) name.
        port: String,
        /// Why.
        #[source]
        source: NftablesError,
    },
}

/// The table holding `port`'s rules.
pub fn table_name(port: &str) -> String {
    format!("tern-port-{port}")
}

fn table(port: &str) -> Table<'static> {
    Table {
        family: NfFamily::Bridge,
        name: Cow::Owned(table_name(port)),
        handle: None,
    }
}

fn field(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn is(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn set(items: &[&'static str]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items
            .iter()
            .map(|s| SetItem::Element(Expression::String((*s).into())))
            .collect(),
    ))
}

/// The rules (match statements, then a counted drop) for `guards`.
fn rules(port: &str, mac: Mac, guards: Guards) -> Vec<Vec<Statement<'static>>> {
    let from_port = is(
        Expression::Named(NamedExpression::Meta(Meta {
            key: MetaKey::Iifname,
        })),
        Operator::EQ,
        Expression::String(port.to_string().into()),
    );
    let drop = [
        Statement::Counter(Counter::Anonymous(None)),
        Statement::Drop(Some(Drop {})),
    ];
    let mut out = Vec::new();
    let mut rule = |matches: Vec<Statement<'static>>| {
        let mut r = vec![from_port.clone()];
        r.extend(matches);
        r.extend(drop.iter().cloned());
        out.push(r);
    };
    if guards.mac {
        rule(vec![is(
            field("ether", "saddr"),
            Operator::NEQ,
            Expression::String(mac.to_string().into()),
        )]);
    }
    if guards.dhcp {
        // DHCPv4 server to client, DHCPv6 server/relay to client.
        rule(vec![is(
            field("udp", "sport"),
            Operator::EQ,
            Expression::Number(67),
        )]);
        rule(vec![is(
            field("udp", "sport"),
            Operator::EQ,
            Expression::Number(547),
        )]);
    }
    if guards.router {
        rule(vec![is(
            field("icmpv6", "type"),
            Operator::EQ,
            set(&["nd-router-advert", "nd-redirect"]),
        )]);
        rule(vec![is(
            field("icmp", "type"),
            Operator::EQ,
            Expression::String("redirect".into()),
        )]);
    }
    if let Some(rate) = guards.max_bw_from_port {
        // About 10 ms of traffic, at least a 64 KiB GSO frame.
        let burst = (rate / 100).max(64 << 10) + 1514;
        rule(vec![Statement::Limit(Limit {
            rate,
            rate_unit: Some("bytes".into()),
            per: Some("second".into()),
            burst: Some(burst),
            burst_unit: Some("bytes".into()),
            inv: Some(true),
        })]);
    }
    out
}

/// The `nft` batch that replaces `port`'s table by one holding `guards`
/// (or only removes it when no guard is on).
pub fn ruleset(port: &str, mac: Mac, guards: Guards) -> nftables::schema::Nftables<'static> {
    let mut b = Batch::new();
    // Adding first makes the delete succeed whether or not it existed.
    b.add(NfListObject::Table(table(port)));
    b.delete(NfListObject::Table(table(port)));
    if guards.any() {
        let t = table_name(port);
        b.add(NfListObject::Table(table(port)));
        b.add(NfListObject::Chain(Chain {
            family: NfFamily::Bridge,
            table: t.clone().into(),
            name: "from-port".into(),
            _type: Some(NfChainType::Filter),
            hook: Some(NfHook::Prerouting),
            prio: Some(-200),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
        for expr in rules(port, mac, guards) {
            b.add(NfListObject::Rule(Rule {
                family: NfFamily::Bridge,
                table: t.clone().into(),
                chain: "from-port".into(),
                expr: expr.into(),
                ..Rule::default()
            }));
        }
    }
    b.to_nftables()
}

/// Applies `guards` to `port` (replacing what it had).
pub fn apply(port: &str, mac: Mac, guards: Guards) -> Result<(), PolicyError> {
    helper::apply_ruleset(&ruleset(port, mac, guards)).map_err(|source| PolicyError::Nft {
        port: port.into(),
        source,
    })
}

/// Removes `port`'s rules (nothing if it had none).
pub fn remove(port: &str) -> Result<(), PolicyError> {
    apply(port, Mac([2, 0, 0, 0, 0, 0]), Guards::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_without_guards_only_loses_its_table() {
        let r = ruleset("tp0", Mac([2, 0, 0, 0, 0, 1]), Guards::default());
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["nftables"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn every_guard_adds_its_rules() {
        let all = Guards {
            mac: true,
            dhcp: true,
            router: true,
            max_bw_from_port: Some(1_000_000),
        };
        let r = rules("tp0", Mac([2, 0, 0, 0, 0, 1]), all);
        assert_eq!(r.len(), 6);
        let j = serde_json::to_string(&ruleset("tp0", Mac([2, 0, 0, 0, 0, 1]), all)).unwrap();
        assert!(j.contains("\"02:00:00:00:00:01\""), "{j}");
        assert!(j.contains("nd-router-advert"), "{j}");
    }
}
