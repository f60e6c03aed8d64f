//! `tern volume ...`: the daemon's virtual disks.

use clap::{Args, Subcommand};
use tern_api::{CreateDisk, DiskFormat, DiskQos, Size};

use super::{client, code, mib, print_json, CmdResult, Conn, Fail};

/// `tern volume ...`.
#[derive(Args, Debug)]
pub struct VolumeCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: VolumeAction,
}

#[derive(Subcommand, Debug)]
enum VolumeAction {
    /// Create a disk image in an allowed directory and register it.
    Create {
        /// Name.
        name: String,
        /// Virtual size, e.g. 1G.
        #[arg(long, value_parser = tern_api::parse_size)]
        size: u64,
        /// vhdx or raw.
        #[arg(long, default_value = "vhdx", value_parser = parse_format)]
        format: DiskFormat,
        /// File path (absolute, inside an allowed directory).
        #[arg(long)]
        path: Option<String>,
    },
    /// List disks.
    #[command(alias = "ls")]
    List,
    /// Show one disk.
    Show {
        /// Disk name or id.
        name: String,
    },
    /// Delete a disk and its file.
    #[command(alias = "rm")]
    Delete {
        /// Disk name or id.
        name: String,
    },
    /// Change a disk's virtual size.
    Resize {
        /// Disk name or id.
        name: String,
        /// New size, e.g. 2G.
        #[arg(long, value_parser = tern_api::parse_size)]
        size: u64,
    },
    /// Set storage QoS (normalized 8 KiB IOPS).
    Qos {
        /// Disk name or id.
        name: String,
        /// Upper limit.
        #[arg(long)]
        max_iops: Option<u32>,
        /// Minimum (an event is raised when not met).
        #[arg(long)]
        min_iops: Option<u32>,
        /// Most bytes per second, reads and writes together, e.g. 10M.
        #[arg(long, value_parser = tern_api::parse_size)]
        max_bw: Option<u64>,
    },
}

fn parse_format(s: &str) -> Result<DiskFormat, String> {
    match s {
        "vhdx" => Ok(DiskFormat::Vhdx),
        "raw" => Ok(DiskFormat::Raw),
        _ => Err(format!("unknown format '{s}': expected vhdx or raw")),
    }
}

/// Runs `tern volume ...`.
pub(super) async fn run(cmd: VolumeCmd) -> CmdResult {
    let c = client(&cmd.conn)?;
    let json = cmd.conn.json;
    let show = |d: &tern_api::Disk| {
        if json {
            print_json(d);
        } else {
            println!(
                "{}: {} {} at {} (vm {}, max_iops {}, min_iops {})",
                d.name,
                d.format.as_str(),
                mib(d.size),
                d.path,
                d.vm.as_deref().unwrap_or("-"),
                d.qos
                    .max_iops
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                d.qos
                    .min_iops
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
    };
    match cmd.action {
        VolumeAction::Create {
            name,
            size,
            format,
            path,
        } => show(
            &c.create_disk(&CreateDisk {
                name,
                size: Size(size),
                format: Some(format),
                path,
            })
            .await?,
        ),
        VolumeAction::List => {
            let disks = c.list_disks().await?;
            if json {
                print_json(&tern_api::DiskList { disks });
            } else {
                println!(
                    "{:<20} {:<5} {:>8} {:<16} PATH",
                    "NAME", "FMT", "SIZE", "VM"
                );
                for d in disks {
                    println!(
                        "{:<20} {:<5} {:>8} {:<16} {}",
                        d.name,
                        d.format.as_str(),
                        mib(d.size),
                        d.vm.as_deref().unwrap_or("-"),
                        d.path
                    );
                }
            }
        }
        VolumeAction::Show { name } => {
            let d = c
                .list_disks()
                .await?
                .into_iter()
                .find(|d| d.name == name || d.id == name)
                .ok_or_else(|| Fail(code::NOT_FOUND, format!("no disk named '{name}'")))?;
            show(&d);
        }
        VolumeAction::Delete { name } => {
            c.delete_disk(&name).await?;
            if json {
                print_json(&serde_json::json!({ "deleted": name }));
            } else {
                println!("{name}: deleted");
            }
        }
        VolumeAction::Resize { name, size } => show(&c.resize_disk(&name, size).await?),
        VolumeAction::Qos {
            name,
            max_iops,
            min_iops,
            max_bw,
        } => show(
            &c.set_disk_qos(
                &name,
                &DiskQos {
                    max_iops,
                    min_iops,
                    max_bw,
                },
            )
            .await?,
        ),
    }
    Ok(())
}
