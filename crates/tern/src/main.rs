//! `tern`: the command line, the VM worker (`tern run`, a shell over the
//! `tern-worker` library) and disk tools.
//!
//! Exit codes scripts can rely on are in [`exit_code`] and README.md.

mod boot_cli;
mod cluster_cli;
mod disk;
mod docs;
mod exit_code;
mod iscsi_cli;
mod migrate_cli;
mod run;
mod scsi_cli;
mod snapshot;
mod vm_cli;

use clap::{Parser, Subcommand};

/// Tern: a virtualization platform for Linux/KVM hosts.
#[derive(Parser)]
#[command(name = "tern", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run one VM in the foreground (the VM worker).
    Run(run::RunArgs),
    /// Worker-level saved states, checkpoints, export and import (over
    /// a worker's control socket or on directories).
    #[command(subcommand)]
    Worker(snapshot::WorkerCommand),
    /// Boot checks: Secure Boot verification of a kernel or boot loader.
    #[command(subcommand)]
    Boot(boot_cli::BootCommand),
    /// Virtual disk tools (VHDX and raw).
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// iSCSI target: export a disk (`tern iscsi serve`).
    #[command(subcommand)]
    Iscsi(iscsi_cli::IscsiCommand),
    /// Live-migrate a worker's VM (progress bar; --cancel to stop one).
    Migrate(migrate_cli::MigrateArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell) for tern or ternd.
    Completions(docs::CompletionsArgs),
    /// Write man pages for tern, its subcommands and ternd into DIR.
    Man(docs::ManArgs),
    #[command(flatten)]
    Api(vm_cli::ApiCommand),
}

fn main() {
    tern_error::abort_on_panic();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit_code::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if matches!(
        cli.command,
        Command::Disk(_)
            | Command::Boot(_)
            | Command::Api(_)
            | Command::Completions(_)
            | Command::Man(_)
    ) {
        // Commands that print for pipes (`tern vm show X | grep -q ...`)
        // end quietly when the reader goes, as other Unix tools do, instead
        // of panicking on a failed print. The worker keeps SIGPIPE ignored:
        // a closed control-socket peer must not kill the VM.
        // SAFETY: restoring the default disposition of a signal before any
        // thread starts; no handler code is involved.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let code = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Boot(cmd) => boot_cli::run(cmd),
        Command::Disk(cmd) => disk::run(cmd),
        Command::Worker(cmd) => snapshot::run(cmd),
        Command::Iscsi(cmd) => iscsi_cli::run(cmd),
        Command::Migrate(args) => migrate_cli::run(args),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
        Command::Api(cmd) => vm_cli::run(cmd),
    };
    std::process::exit(code);
}
