//! `tern host`: the daemon's status.

use clap::Args;

use super::{client, print_json, CmdResult, Conn};

/// `tern host`.
#[derive(Args, Debug)]
pub struct HostCmd {
    #[command(flatten)]
    conn: Conn,
}

/// Runs `tern host`.
pub(super) async fn run(h: HostCmd) -> CmdResult {
    let c = client(&h.conn)?;
    let info = c.host().await?;
    if h.conn.json {
        print_json(&info);
    } else {
        println!(
            "host:      {} (ternd {}, API {})",
            info.hostname, info.version, info.api_version
        );
        println!("daemon:    pid {} at {}", info.pid, c.endpoint());
        println!("vms:       {} ({} with a worker)", info.vms, info.running);
        println!("disk dirs: {}", info.disk_dirs.join(", "));
        let f = &info.features;
        println!(
            "features:  save/restore {}, migration {}, disks {}, checkpoints {}",
            yes(f.save_restore),
            yes(f.migration),
            yes(f.disks),
            yes(f.checkpoints)
        );
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "not yet"
    }
}
