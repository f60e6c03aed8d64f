//! `tern vm migrate`: starts a live migration and follows it to the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tern_api::{Client, MigrationState, StartMigration};

use super::{code, print_json, CmdResult, Fail};

/// Starts migrating `name` as `req` says; unless `no_wait`, shows the
/// progress (memory and mirrored disks together) and fails when the
/// migration does.
pub(super) async fn follow(
    c: &Client,
    json: bool,
    name: &str,
    req: StartMigration,
    no_wait: bool,
) -> CmdResult {
    let t = Instant::now();
    let with_storage = req.with_storage;
    let mut m = c.migrate(name, &req).await?;
    let bar = (!json && !no_wait && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new((m.total_bytes + m.disk_total_bytes).max(1));
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        pb.set_message(format!("migrating {name}"));
        pb
    });
    while !no_wait && matches!(m.state, MigrationState::Pending | MigrationState::Running) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        m = c.migration(&m.id).await?;
        if let Some(pb) = &bar {
            pb.set_length((m.total_bytes + m.disk_total_bytes).max(1));
            pb.set_position(m.memory_sent_bytes + m.disk_sent_bytes);
            pb.set_message(format!("migrating {name} (round {})", m.rounds));
        }
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    if json {
        print_json(&m);
    } else {
        println!(
            "{name}: migration {} {} to {} in {:.0} ms: {} MiB sent in {} rounds, downtime {}",
            m.id,
            format!("{:?}", m.state).to_lowercase(),
            m.peer,
            m.total_ms.unwrap_or(t.elapsed().as_secs_f64() * 1e3),
            m.transferred_bytes >> 20,
            m.rounds,
            m.downtime_ms
                .map(|d| format!("{d:.1} ms"))
                .unwrap_or_else(|| "-".into())
        );
        if with_storage && m.state == MigrationState::Completed {
            println!(
                "{name}: {} MiB of disk copied; the images stay on this host (no longer registered)",
                m.disk_sent_bytes >> 20
            );
        }
    }
    match m.state {
        MigrationState::Failed | MigrationState::Cancelled => Err(Fail(
            code::FAILED,
            format!(
                "migration of {name} {}: {}",
                if m.state == MigrationState::Failed {
                    "failed"
                } else {
                    "was cancelled"
                },
                m.error.unwrap_or_default()
            ),
        )),
        _ => Ok(()),
    }
}
