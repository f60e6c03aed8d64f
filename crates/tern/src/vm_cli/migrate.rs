//! `tern vm migrate`: starts a live migration and follows it to the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tern_api::{Client, MigrationState, StartMigration};

use super::{code, print_json, CmdResult, Fail};

/// Starts migrating `name` to `to`; unless `no_wait`, shows the progress
/// and fails when the migration does.
pub(super) async fn follow(
    c: &Client,
    json: bool,
    name: &str,
    to: String,
    to_token: Option<String>,
    no_wait: bool,
) -> CmdResult {
    let t = Instant::now();
    let mut m = c
        .migrate(
            name,
            &StartMigration {
                to,
                token: to_token,
            },
        )
        .await?;
    let bar = (!json && !no_wait && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(m.total_bytes.max(1));
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
            pb.set_length(m.total_bytes.max(1));
            pb.set_position(m.transferred_bytes);
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
