//! `tern vm ...`: define, list, start, stop, pause, save, restore and
//! delete VMs, attach disks, show events.

use std::io::Write;
use std::time::Instant;

use clap::{Args, Subcommand};
use tern_api::{Client, CreateVm, Size, Vm};

use super::{client, mib, print_json, spinner, CmdResult, Conn};

#[derive(Args, Debug)]
pub struct VmCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: VmAction,
}

#[derive(Subcommand, Debug)]
enum VmAction {
    /// Define a VM (stopped until started).
    Create {
        /// Name.
        name: String,
        /// Number of vCPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Guest memory, e.g. 64M, 512M, 2G.
        #[arg(long, default_value = "512M", value_parser = tern_api::parse_size)]
        memory: u64,
        /// Guest: probe:WORKLOAD (e.g. probe:hello, probe:dirty,mib=32,rate=50+verify).
        #[arg(long)]
        guest: String,
        /// Disk to attach (by name; repeat for several).
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// NIC on a switch (repeat for several):
        /// switch=NAME[,mac=M,max-bw=SIZE,mac-guard,dhcp-guard,router-guard,mirror=PORT].
        #[arg(long = "nic", value_parser = super::switch::parse_nic)]
        nics: Vec<tern_api::CreateNic>,
        /// Start it right away.
        #[arg(long)]
        start: bool,
    },
    /// List VMs.
    #[command(alias = "ls")]
    List,
    /// Show one VM.
    Show {
        /// VM name or id.
        name: String,
    },
    /// Start a VM (returns once its worker runs).
    Start {
        /// VM name or id.
        name: String,
    },
    /// Stop a VM (waits for its worker to exit).
    Stop {
        /// VM name or id.
        name: String,
        /// Kill the worker at once instead of asking it to stop.
        #[arg(long)]
        force: bool,
    },
    /// Pause a VM's vCPUs.
    Pause {
        /// VM name or id.
        name: String,
    },
    /// Resume a paused VM.
    Resume {
        /// VM name or id.
        name: String,
    },
    /// Save a VM's state to disk and stop its worker.
    Save {
        /// VM name or id.
        name: String,
    },
    /// Restore a saved VM.
    Restore {
        /// VM name or id.
        name: String,
    },
    /// Delete a VM (its disks are kept).
    #[command(alias = "rm")]
    Delete {
        /// VM name or id.
        name: String,
        /// Force-stop it first if it runs.
        #[arg(long)]
        force: bool,
    },
    /// Attach to a VM's serial console (detach with Ctrl-]).
    Console {
        /// VM name or id.
        name: String,
        /// Detach key: ctrl-X for a letter or one of ] \ ^ _ (default ctrl-]).
        #[arg(long, default_value = "ctrl-]", value_parser = super::console::parse_detach_key)]
        detach_key: u8,
    },
    /// Live-migrate a running VM to another host daemon.
    Migrate {
        /// VM name or id.
        name: String,
        /// Destination daemon: unix:/path or http://HOST:PORT.
        #[arg(long)]
        to: String,
        /// Bearer token of the destination (TCP).
        #[arg(long, env = "TERN_TO_TOKEN", hide_env_values = true)]
        to_token: Option<String>,
        /// Return once started instead of following the progress.
        #[arg(long)]
        no_wait: bool,
        /// Copy the disks too (shared-nothing: the hosts share no
        /// storage); this host keeps its images.
        #[arg(long)]
        with_storage: bool,
        /// With --with-storage: where the destination creates the disks
        /// (one of its disk directories; default its first).
        #[arg(long, requires = "with_storage")]
        dest_dir: Option<String>,
    },
    /// Move a running VM's disk image to another directory (storage live
    /// migration), optionally converting it; the VM keeps running.
    MoveStorage {
        /// VM name or id.
        name: String,
        /// The disk: name, id or index in the VM's disk order.
        #[arg(long)]
        disk: String,
        /// Directory for the new image (inside the host's disk directories).
        #[arg(long)]
        to: String,
        /// Format of the new image (default: the disk's own).
        #[arg(long, value_parser = ["raw", "vhdx"])]
        format: Option<String>,
        /// Most bytes per second the copy reads (suffixes K, M, G).
        #[arg(long, value_parser = super::move_storage::parse_rate)]
        bandwidth: Option<u64>,
        /// Return once started instead of following the progress.
        #[arg(long)]
        no_wait: bool,
    },
    /// Attach a disk to a stopped VM.
    Attach {
        /// VM name or id.
        name: String,
        /// Disk name or id.
        disk: String,
    },
    /// Detach a disk from a stopped VM.
    Detach {
        /// VM name or id.
        name: String,
        /// Disk name or id.
        disk: String,
    },
    /// Show events (of one VM or of the host).
    Events {
        /// Only this VM.
        name: Option<String>,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// Keep waiting for new events.
        #[arg(long, short)]
        follow: bool,
    },
}

fn print_vm_table(vms: &[Vm]) {
    println!(
        "{:<20} {:<10} {:>5} {:>7} {:>8}  GUEST",
        "NAME", "STATE", "VCPUS", "MEMORY", "PID"
    );
    for v in vms {
        println!(
            "{:<20} {:<10} {:>5} {:>7} {:>8}  {}",
            v.name,
            v.state.as_str(),
            v.vcpus,
            mib(v.memory),
            v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            v.guest
        );
    }
}

fn print_vm(v: &Vm) {
    println!("name:     {}", v.name);
    println!("id:       {}", v.id);
    println!("state:    {}", v.state);
    if let Some(r) = &v.reason {
        println!("reason:   {r}");
    }
    println!("vcpus:    {}", v.vcpus);
    println!("memory:   {} ({} bytes)", mib(v.memory), v.memory);
    println!("guest:    {}", v.guest);
    if let Some(p) = v.pid {
        println!("pid:      {p}");
    }
    println!(
        "disks:    {}",
        if v.disks.is_empty() {
            "-".into()
        } else {
            v.disks.join(", ")
        }
    );
    println!("created:  {}", v.created_at);
    println!("updated:  {}", v.updated_at);
}

async fn vm_op(c: &Client, json: bool, name: &str, action: &str, verb: &str) -> CmdResult {
    let pb = spinner(json, format!("{verb} {name}..."));
    let t = Instant::now();
    let r = c.vm_action(name, action).await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let vm = r?;
    if json {
        print_json(&vm);
    } else {
        println!(
            "{}: {} ({:.0} ms)",
            vm.name,
            vm.state,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// Runs `tern vm ...`.
pub(super) async fn run(cmd: VmCmd) -> CmdResult {
    let c = client(&cmd.conn)?;
    let json = cmd.conn.json;
    match cmd.action {
        VmAction::Create {
            name,
            vcpus,
            memory,
            guest,
            disks,
            nics,
            start,
        } => {
            let vm = c
                .create_vm(&CreateVm {
                    name: name.clone(),
                    vcpus: Some(vcpus),
                    memory: Some(Size(memory)),
                    guest,
                    disks,
                })
                .await?;
            for nic in &nics {
                // A NIC the daemon refuses (no such switch, a bad MAC)
                // undoes the create: the VM is made whole or not at all.
                if let Err(e) = c.add_nic(&vm.id, nic).await {
                    let _ = c.delete_vm(&vm.id).await;
                    return Err(e.into());
                }
            }
            if start {
                return vm_op(&c, json, &vm.name, "start", "starting").await;
            }
            if json {
                print_json(&vm);
            } else {
                println!("{}: created (id {})", vm.name, vm.id);
            }
        }
        VmAction::List => {
            let vms = c.list_vms().await?;
            if json {
                print_json(&tern_api::VmList { vms });
            } else {
                print_vm_table(&vms);
            }
        }
        VmAction::Show { name } => {
            let vm = c.get_vm(&name).await?;
            let nics = c.list_nics(&vm.id).await?;
            if json {
                // The VM's object with its NICs added beside its fields.
                let mut v = serde_json::to_value(&vm).expect("API types serialize");
                v["nics"] = serde_json::to_value(&nics).expect("API types serialize");
                print_json(&v);
            } else {
                print_vm(&vm);
                super::switch::print_nics(&nics);
            }
        }
        VmAction::Start { name } => vm_op(&c, json, &name, "start", "starting").await?,
        VmAction::Stop { name, force } => {
            let action = if force { "force-stop" } else { "stop" };
            vm_op(&c, json, &name, action, "stopping").await?
        }
        VmAction::Pause { name } => vm_op(&c, json, &name, "pause", "pausing").await?,
        VmAction::Resume { name } => vm_op(&c, json, &name, "resume", "resuming").await?,
        VmAction::Save { name } => vm_op(&c, json, &name, "save", "saving").await?,
        VmAction::Restore { name } => vm_op(&c, json, &name, "restore", "restoring").await?,
        VmAction::Delete { name, force } => {
            if force {
                let vm = c.get_vm(&name).await?;
                if vm.state.has_worker() {
                    c.vm_action(&name, "force-stop").await?;
                }
            }
            c.delete_vm(&name).await?;
            if json {
                print_json(&serde_json::json!({ "deleted": name }));
            } else {
                println!("{name}: deleted");
            }
        }
        VmAction::Console { name, detach_key } => {
            super::console::attach(&c, &name, detach_key).await?
        }
        VmAction::Migrate {
            name,
            to,
            to_token,
            no_wait,
            with_storage,
            dest_dir,
        } => {
            let req = tern_api::StartMigration {
                to,
                token: to_token,
                with_storage,
                dest_dir,
            };
            super::migrate::follow(&c, json, &name, req, no_wait).await?
        }
        VmAction::MoveStorage {
            name,
            disk,
            to,
            format,
            bandwidth,
            no_wait,
        } => {
            let req = tern_api::MoveDisk {
                to_dir: to,
                format: format.map(|f| match f.as_str() {
                    "raw" => tern_api::DiskFormat::Raw,
                    _ => tern_api::DiskFormat::Vhdx,
                }),
                bandwidth,
            };
            super::move_storage::follow(&c, json, &name, &disk, &req, no_wait).await?
        }
        VmAction::Attach { name, disk } => {
            let vm = c.attach_disk(&name, &disk).await?;
            if json {
                print_json(&vm);
            } else {
                println!("{}: disks {}", vm.name, vm.disks.join(", "));
            }
        }
        VmAction::Detach { name, disk } => {
            let vm = c.detach_disk(&name, &disk).await?;
            if json {
                print_json(&vm);
            } else {
                println!("{}: disk {disk} detached", vm.name);
            }
        }
        VmAction::Events {
            name,
            since,
            follow,
        } => {
            let mut since = since;
            loop {
                let wait = follow.then_some(30);
                let events = c.events(Some(since), name.as_deref(), wait).await?;
                for e in &events {
                    if json {
                        println!("{}", serde_json::to_string(e).expect("serializes"));
                    } else {
                        println!(
                            "{:>6} {} {:<12} {:<14} {}",
                            e.seq,
                            e.time,
                            e.vm.as_deref().unwrap_or("-"),
                            e.kind,
                            e.message
                        );
                    }
                    since = e.seq;
                }
                let _ = std::io::stdout().flush();
                if !follow {
                    break;
                }
            }
        }
    }
    Ok(())
}
