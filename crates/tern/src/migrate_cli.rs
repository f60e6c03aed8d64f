//! `tern migrate --control SOCK --to ENDPOINT`: drive a worker's live
//! migration with a progress bar (or JSON status lines), or cancel it.
//! The worker side is `tern-worker`'s; this talks to it with the typed
//! blocking client.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tern_worker_proto::migration::{
    Compression, Migrate, MigrateCancel, MigrateStatus, MigrationOutcome, MigrationPhase,
    MigrationStatus, TimeoutAction,
};
use tern_worker_proto::{Client, ClientError, Endpoint};

use crate::exit_code;
use crate::run::chain;
use tern_api::parse_size;

/// Arguments of `tern migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The source worker's control socket.
    #[arg(long)]
    control: PathBuf,
    /// Destination: tcp:HOST:PORT (a worker started with --incoming) or
    /// unix:PATH (same host: memory handed over, not copied).
    #[arg(long, required_unless_present = "cancel")]
    to: Option<Endpoint>,
    /// Data channels (default: one per CPU).
    #[arg(long, default_value_t = 0)]
    channels: u32,
    /// auto, off, lz4 or zstd.
    #[arg(long, default_value = "auto")]
    compression: Compression,
    /// Downtime target, ms.
    #[arg(long, default_value_t = 50)]
    downtime_ms: u64,
    /// Bandwidth cap per second, e.g. 100M.
    #[arg(long, value_parser = parse_size)]
    bandwidth: Option<u64>,
    /// Give up (or switch over, see --on-timeout) after this many seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// cancel or switchover.
    #[arg(long, default_value = "cancel")]
    on_timeout: TimeoutAction,
    /// Never throttle the vCPUs.
    #[arg(long)]
    no_auto_converge: bool,
    /// Copy the disks too (shared-nothing: the destination worker creates
    /// them in its --dest-dir); the source keeps its images.
    #[arg(long)]
    with_storage: bool,
    /// Print JSON status lines instead of a progress bar.
    #[arg(long)]
    json: bool,
    /// Cancel the worker's running migration instead.
    #[arg(long)]
    cancel: bool,
}

/// The exit code for a request that did not get its reply.
fn failed(e: &ClientError) -> i32 {
    eprintln!("tern: error: {}", chain(e));
    if e.is_transport() {
        exit_code::UNAVAILABLE
    } else {
        exit_code::SOFTWARE
    }
}

fn progress_message(s: &MigrationStatus) -> String {
    format!(
        "{} round {} | {}/s | dirty {}/s | left {} | downtime ~{:.0} ms | {}{}",
        s.phase.as_str(),
        s.rounds + 1,
        indicatif::HumanBytes(s.bandwidth as u64),
        indicatif::HumanBytes(s.dirty_rate as u64),
        indicatif::HumanBytes(s.remaining_bytes),
        s.expected_downtime_ms,
        s.compression,
        match s.throttle_percent {
            t if t > 0 => format!(" | throttle {t}%"),
            _ => String::new(),
        },
    )
}

/// `tern migrate`.
pub fn run(args: MigrateArgs) -> i32 {
    let client = Client::new(&args.control).with_timeout(Duration::from_secs(30));
    if args.cancel {
        return match client.call(MigrateCancel {}) {
            Ok(_) => exit_code::OK,
            Err(e) => failed(&e),
        };
    }
    let Some(to) = args.to.clone() else {
        eprintln!("tern: error: --to is required");
        return exit_code::USAGE;
    };
    let req = Migrate {
        channels: args.channels,
        compression: Some(args.compression),
        downtime_ms: Some(args.downtime_ms),
        bandwidth: args.bandwidth,
        timeout_s: args.timeout,
        timeout_action: Some(args.on_timeout),
        auto_converge: Some(!args.no_auto_converge),
        with_storage: args.with_storage,
        ..Migrate::to(to)
    };
    if let Err(e) = client.call(req) {
        return failed(&e);
    }
    let bar = (!args.json).then(|| {
        let b = indicatif::ProgressBar::new(1);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {bytes}/{total_bytes} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    });
    let last = loop {
        std::thread::sleep(Duration::from_millis(100));
        let s = match client.call(MigrateStatus {}) {
            Ok(s) => s,
            Err(e) => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                eprintln!("tern: error: lost the worker: {}", chain(&e));
                return exit_code::SOFTWARE;
            }
        };
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&s).expect("a status serializes")
            );
        }
        if let Some(b) = &bar {
            let total = (s.memory_bytes + s.disk_total).max(1);
            b.set_length(total);
            b.set_position((s.pages_sent * 4096 + s.disk_sent).min(total));
            b.set_message(progress_message(&s));
        }
        if s.outcome.is_some() {
            break s;
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    match last.outcome {
        Some(MigrationOutcome::Completed) => {
            println!(
                "migrated in {:.0} ms, downtime {:.1} ms, {} rounds, {} sent ({} zero pages), {}{}",
                last.elapsed_ms,
                last.downtime_ms.unwrap_or(0.0),
                last.rounds,
                indicatif::HumanBytes(last.bytes_sent),
                last.zero_pages,
                last.compression,
                if args.with_storage {
                    format!(
                        ", {} of disk mirrored (the source keeps its images)",
                        indicatif::HumanBytes(last.disk_sent)
                    )
                } else {
                    String::new()
                },
            );
            exit_code::OK
        }
        _ => {
            eprintln!(
                "tern: error: migration {}: {}{}",
                if last.phase == MigrationPhase::Cancelled {
                    "cancelled"
                } else {
                    "failed"
                },
                last.error.as_deref().unwrap_or("unknown error"),
                // The worker's message says what to do when the VM
                // cannot run on by itself.
                if last.paused_here {
                    ""
                } else {
                    "; the VM keeps running on the source"
                }
            );
            exit_code::SOFTWARE
        }
    }
}
