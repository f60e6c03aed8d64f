//! `tern`: the command line, the VM worker (`tern run`) and disk tools.
//!
//! Exit codes scripts can rely on are listed in README.md.

mod disk;

use clap::{Parser, Subcommand};

/// Tern: a virtualization platform for Linux/KVM hosts.
#[derive(Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Virtual disk tools (VHDX and raw).
    #[command(subcommand)]
    Disk(disk::DiskCommand),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Disk(cmd) => disk::run(cmd),
    };
    std::process::exit(code);
}
