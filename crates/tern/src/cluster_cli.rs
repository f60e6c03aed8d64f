//! `tern cluster status|nodes`: the failover cluster as the daemon (a node
//! of it) sees it; every node answers for the whole cluster.

use clap::{Args, Subcommand};
use tern_api::ClusterNodeState;

use crate::vm_cli::{api_client, print_json, size_text, CmdResult, Conn};

/// `tern cluster ...`.
#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// This node, the etcd endpoints, how many nodes are up and VMs owned.
    Status(Plain),
    /// Every node: state, capacity, API address.
    Nodes(Plain),
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
    }
    Ok(())
}
