//! `tern cluster status|nodes`: the failover cluster as the daemon (a node
//! of it) sees it; every node answers for the whole cluster.

use clap::{Args, Subcommand, ValueEnum};
use tern_api::{AddClusterVm, ClusterNodeState, ClusterPriority};

use crate::vm_cli::{api_client, print_json, size_text, CmdResult, Conn};

/// `tern cluster ...`.
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// This node, the etcd endpoints, how many nodes are up and VMs owned.
    Status(Plain),
    /// Every node: state, capacity, API address.
    Nodes(Plain),
    /// Every clustered VM: its owner node, priority, placement rules.
    Vms(Plain),
    /// Makes a VM of this node clustered: its configuration goes to etcd
    /// and, when its node is lost, a survivor restarts it from shared
    /// storage (its disks must be in a --shared-dir).
    AddVm(AddVm),
}

/// Start priority of a clustered VM.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum PriorityArg {
    /// Restarted first.
    High,
    /// The default.
    Medium,
    /// Restarted last.
    Low,
    /// Never started by the cluster.
    NoAutoStart,
}

/// `tern cluster add-vm`.
#[derive(Args, Debug)]
pub struct AddVm {
    /// The VM (name or id) on this node.
    vm: String,
    /// Start priority when its node is lost.
    #[arg(long, value_enum, default_value = "medium")]
    priority: PriorityArg,
    /// A node to prefer (repeat or comma-separate, best first).
    #[arg(long = "preferred-owner", value_delimiter = ',')]
    preferred_owners: Vec<String>,
    /// VMs of one class are kept on different nodes while room allows.
    #[arg(long)]
    anti_affinity: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

/// Just the connection options.
#[derive(Args, Debug)]
pub struct Plain {
    #[command(flatten)]
    conn: Conn,
}

fn state(s: ClusterNodeState) -> &'static str {
    match s {
        ClusterNodeState::Up => "up",
        ClusterNodeState::Paused => "paused",
        ClusterNodeState::Down => "down",
        ClusterNodeState::Quarantined => "quarantined",
    }
}

fn priority(p: ClusterPriority) -> &'static str {
    match p {
        ClusterPriority::High => "high",
        ClusterPriority::Medium => "medium",
        ClusterPriority::Low => "low",
        ClusterPriority::NoAutoStart => "no-auto-start",
    }
}

fn print_vm(v: &tern_api::ClusterVm) {
    let owner = match (&v.owner, &v.unplaced) {
        (Some(o), _) => o.clone(),
        (None, Some(_)) => "(unplaced)".into(),
        (None, None) if v.stopped => "(stopped)".into(),
        (None, None) => "(none)".into(),
    };
    println!(
        "{:<20} {:<14} {:<14} {:<12} {}",
        v.name,
        owner,
        priority(v.priority),
        v.anti_affinity.as_deref().unwrap_or("-"),
        v.unplaced.as_deref().unwrap_or("")
    );
}

/// Runs `tern cluster ...`.
pub(crate) async fn run(cmd: ClusterCmd) -> CmdResult {
    match cmd {
        ClusterCmd::Status(p) => {
            let info = api_client(&p.conn)?.cluster().await?;
            if p.conn.json {
                print_json(&info);
            } else {
                println!("node:      {}", info.node);
                println!("etcd:      {}", info.endpoints.join(", "));
                println!("lease TTL: {} s", info.ttl_s);
                println!("nodes:     {} of {} up", info.nodes_up, info.nodes_total);
                println!(
                    "vms:       {} clustered, {} owned",
                    info.vms, info.vms_owned
                );
            }
        }
        ClusterCmd::Nodes(p) => {
            let nodes = api_client(&p.conn)?.cluster_nodes().await?;
            if p.conn.json {
                print_json(&nodes);
            } else {
                println!(
                    "{:<20} {:<12} {:>8} {:>6}  API",
                    "NODE", "STATE", "MEMORY", "VCPUS"
                );
                for n in nodes {
                    println!(
                        "{:<20} {:<12} {:>8} {:>6}  {}",
                        n.name,
                        state(n.state),
                        size_text(n.memory),
                        n.vcpus,
                        n.api_url.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        ClusterCmd::Vms(p) => {
            let vms = api_client(&p.conn)?.cluster_vms().await?;
            if p.conn.json {
                print_json(&vms);
            } else {
                println!(
                    "{:<20} {:<14} {:<14} {:<12} NOTE",
                    "VM", "OWNER", "PRIORITY", "ANTI-AFF"
                );
                for v in &vms {
                    print_vm(v);
                }
            }
        }
        ClusterCmd::AddVm(a) => {
            let req = AddClusterVm {
                vm: a.vm,
                priority: Some(match a.priority {
                    PriorityArg::High => ClusterPriority::High,
                    PriorityArg::Medium => ClusterPriority::Medium,
                    PriorityArg::Low => ClusterPriority::Low,
                    PriorityArg::NoAutoStart => ClusterPriority::NoAutoStart,
                }),
                preferred_owners: a.preferred_owners,
                anti_affinity: a.anti_affinity,
            };
            let vm = api_client(&a.conn)?.add_cluster_vm(&req).await?;
            if a.conn.json {
                print_json(&vm);
            } else {
                print_vm(&vm);
            }
        }
    }
    Ok(())
}
