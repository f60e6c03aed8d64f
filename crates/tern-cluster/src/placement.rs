//! Placement: where a VM without an owner goes. A pure function of what etcd
//! holds, so every survivor computes the same plan; the ownership claim
//! settles any race between them.

use std::collections::HashMap;

use crate::membership::{NodeState, NodeStatus};
use crate::ownership::Claim;
use crate::vm::{ClusterVm, Priority};

/// A VM and the node chosen for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The VM.
    pub vm: String,
    /// The chosen node.
    pub node: String,
}

/// Why a VM was not placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaced {
    /// Priority `no-auto-start`: the cluster never starts it.
    NoAutoStart,
    /// No node that is up has the memory and vCPUs free.
    NoRoom {
        /// Memory asked, bytes.
        memory: u64,
        /// vCPUs asked.
        vcpus: u32,
    },
}

/// The outcome of one placement round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// VMs placed, in the order to start them (priority, then name).
    pub placed: Vec<Placement>,
    /// VMs that fit nowhere (or are not started by the cluster), reported.
    pub unplaced: Vec<(String, Unplaced)>,
}

struct Room {
    memory: u64,
    vcpus: u32,
    classes: Vec<String>,
}

/// Places every VM of `vms` that has no claim in `claims` onto an `Up` node of
/// `nodes`, counting what the claimed VMs already use. Rules, in order:
/// it must fit (memory and vCPUs); a node without a VM of its anti-affinity
/// class beats one with; a preferred owner beats others (in its order); then
/// the node with the most free memory; then the name.
pub fn plan(nodes: &[NodeStatus], vms: &[ClusterVm], claims: &[Claim]) -> Plan {
    let by_name: HashMap<&str, &ClusterVm> = vms.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut room: HashMap<&str, Room> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Up)
        .map(|n| {
            (
                n.spec.name.as_str(),
                Room {
                    memory: n.spec.memory,
                    vcpus: n.spec.vcpus,
                    classes: Vec::new(),
                },
            )
        })
        .collect();
    for c in claims {
        if let (Some(r), Some(vm)) = (room.get_mut(c.node.as_str()), by_name.get(c.vm.as_str())) {
            r.memory = r.memory.saturating_sub(vm.memory);
            r.vcpus = r.vcpus.saturating_sub(vm.vcpus);
            r.classes.extend(vm.anti_affinity.clone());
        }
    }
    let mut todo: Vec<&ClusterVm> = vms
        .iter()
        .filter(|v| !claims.iter().any(|c| c.vm == v.name))
        .collect();
    todo.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));

    let mut out = Plan::default();
    for vm in todo {
        if vm.priority == Priority::NoAutoStart {
            out.unplaced.push((vm.name.clone(), Unplaced::NoAutoStart));
            continue;
        }
        let best = room
            .iter()
            .filter(|(_, r)| r.memory >= vm.memory && r.vcpus >= vm.vcpus)
            .min_by_key(|(name, r)| {
                let clash = vm
                    .anti_affinity
                    .as_ref()
                    .is_some_and(|c| r.classes.contains(c));
                let preference = vm
                    .preferred_owners
                    .iter()
                    .position(|p| p == *name)
                    .unwrap_or(usize::MAX);
                (clash, preference, std::cmp::Reverse(r.memory), *name)
            })
            .map(|(name, _)| *name);
        match best {
            Some(node) => {
                let r = room.get_mut(node).expect("chosen from the map");
                r.memory -= vm.memory;
                r.vcpus -= vm.vcpus;
                r.classes.extend(vm.anti_affinity.clone());
                out.placed.push(Placement {
                    vm: vm.name.clone(),
                    node: node.to_owned(),
                });
            }
            None => out.unplaced.push((
                vm.name.clone(),
                Unplaced::NoRoom {
                    memory: vm.memory,
                    vcpus: vm.vcpus,
                },
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeSpec;

    const G: u64 = 1 << 30;

    fn node(name: &str, memory: u64, vcpus: u32, state: NodeState) -> NodeStatus {
        NodeStatus {
            spec: NodeSpec {
                name: name.into(),
                api_url: None,
                memory,
                vcpus,
            },
            state,
            lease: None,
        }
    }

    fn vm(name: &str, memory: u64, priority: Priority) -> ClusterVm {
        ClusterVm {
            name: name.into(),
            vcpus: 1,
            memory,
            guest: "probe:hello".into(),
            disks: vec![],
            priority,
            preferred_owners: vec![],
            anti_affinity: None,
        }
    }

    fn claim(vm: &str, node: &str) -> Claim {
        Claim {
            vm: vm.into(),
            node: node.into(),
            token: 1,
            lease: 1,
        }
    }

    #[test]
    fn priority_order_free_memory_and_no_room_reported() {
        let nodes = [
            node("a", 4 * G, 8, NodeState::Up),
            node("b", 2 * G, 8, NodeState::Up),
            node("c", 64 * G, 64, NodeState::Down),
            node("d", 64 * G, 64, NodeState::Paused),
        ];
        let vms = [
            vm("low", G, Priority::Low),
            vm("big", 8 * G, Priority::High),
            vm("hi", 3 * G, Priority::High),
            vm("manual", G, Priority::NoAutoStart),
            vm("mid", 2 * G, Priority::Medium),
        ];
        let p = plan(&nodes, &vms, &[]);
        let placed: Vec<_> = p
            .placed
            .iter()
            .map(|x| (x.vm.as_str(), x.node.as_str()))
            .collect();
        // hi takes a (most free); mid then fits only on b; low on a's rest.
        assert_eq!(placed, [("hi", "a"), ("mid", "b"), ("low", "a")]);
        assert!(p.unplaced.contains(&(
            "big".into(),
            Unplaced::NoRoom {
                memory: 8 * G,
                vcpus: 1
            }
        )));
        assert!(p
            .unplaced
            .contains(&("manual".into(), Unplaced::NoAutoStart)));
    }

    #[test]
    fn anti_affinity_then_preferred_owner() {
        let nodes = [
            node("a", 16 * G, 8, NodeState::Up),
            node("b", 8 * G, 8, NodeState::Up),
        ];
        let mut db1 = vm("db1", G, Priority::Medium);
        db1.anti_affinity = Some("db".into());
        let mut db2 = db1.clone();
        db2.name = "db2".into();
        let mut web = vm("web", G, Priority::Medium);
        web.preferred_owners = vec!["b".into()];
        // db1 already runs on a: db2 must go to b although a has more room.
        let p = plan(&nodes, &[db1, db2.clone(), web], &[claim("db1", "a")]);
        assert_eq!(
            p.placed,
            [
                Placement {
                    vm: "db2".into(),
                    node: "b".into()
                },
                Placement {
                    vm: "web".into(),
                    node: "b".into()
                }
            ]
        );
        // With only node a up, db2 still lands there: the class is kept
        // apart only while room allows.
        let p = plan(&nodes[..1], &[db2], &[]);
        assert_eq!(p.placed[0].node, "a");
    }

    #[test]
    fn claimed_vms_use_room() {
        let nodes = [node("a", 2 * G, 2, NodeState::Up)];
        let vms = [vm("x", 2 * G, Priority::High), vm("y", G, Priority::High)];
        let p = plan(&nodes, &vms, &[claim("x", "a")]);
        assert!(p.placed.is_empty());
        assert_eq!(p.unplaced.len(), 1);
    }
}
