//! `tern-bench`: benchmarks that print JSON lines, run on demand, each
//! beside its peer where one is named (QEMU for live migration).
//!
//! Kept out of the shipping `tern` binary: the harness (network
//! namespaces, a QMP client, memory images) is test equipment. It drives
//! the `tern` executable beside its own.

mod boot;
mod failover;
mod image;
mod iscsi;
mod migrate;
mod migrate_storage;
mod netns;
mod qemu;
mod save;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tern_api::parse_size;

/// Errors of the benchmark harness: what failed, for a person.
type Res<T> = Result<T, String>;

/// Tern's benchmarks (JSON lines on stdout).
#[derive(Parser)]
#[command(name = "tern-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

/// Benchmarks.
#[derive(Subcommand, Debug)]
enum Bench {
    /// Start-up time of `tern run --guest probe:hello`: to the guest's first
    /// serial byte and to the worker's exit.
    Boot {
        /// Runs to take the median of.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Guest memory.
        #[arg(long, default_value = "512M", value_parser = parse_size)]
        memory: u64,
    },
    /// Live migration against QEMU (loopback and a 1 Gbit/s veth).
    Migrate(migrate::MigrateBench),
    /// Shared-nothing live migration of a VM with a VHDX holding data
    /// (1 Gbit/s veth): total time and link utilisation.
    MigrateStorage(migrate_storage::MigrateStorageBench),
    /// Save and restore times (lazy and eager) and resume latency of
    /// probe VMs whose memory is in use.
    Save(save::SaveBench),
    /// iSCSI read throughput of `tern iscsi serve` against Debian's tgt
    /// on the same kind of image (libiscsi's iscsi-perf).
    Iscsi(iscsi::IscsiBench),
    /// Failover clustering: node loss (daemon and workers SIGKILLed) to the
    /// VM running on a survivor, three etcd members and three nodes.
    Failover(failover::FailoverBench),
}

/// The `tern` executable the benchmarks run: beside this one.
fn tern_exe() -> Res<PathBuf> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let tern = me.with_file_name("tern");
    if tern.is_file() {
        Ok(tern)
    } else {
        Err(format!(
            "no tern executable beside {} (build it: cargo build --release -p tern)",
            me.display()
        ))
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                tern_worker::exit_code::USAGE
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match cli.command {
        Bench::Boot { runs, memory } => boot::run(runs, memory),
        Bench::Save(args) => save::run(args),
        Bench::Migrate(args) => migrate::run(args),
        Bench::MigrateStorage(args) => migrate_storage::run(args),
        Bench::Iscsi(args) => iscsi::run(args),
        Bench::Failover(args) => failover::run(args),
    };
    std::process::exit(code);
}
