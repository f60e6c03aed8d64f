//! `tern disk`: create, inspect, check, resize, merge and convert disks.

use clap::Subcommand;

/// `tern disk` subcommands.
#[derive(Subcommand)]
pub enum DiskCommand {}

/// Runs a disk subcommand and returns the process exit code.
pub fn run(cmd: DiskCommand) -> i32 {
    match cmd {}
}
