//! `tern vm move-storage`: moves a running VM's disk image and follows
//! the move to its end (a progress bar on a terminal).

use std::io::IsTerminal;
use std::time::Duration;

use tern_api::{Client, DiskMoveState, MoveDisk};

use super::{code, print_json, CmdResult, Fail};

/// A byte rate with an optional binary suffix (`64M` is 64 MiB/s).
pub(super) fn parse_rate(s: &str) -> Result<u64, String> {
    match tern_api::parse_size(s)? {
        0 => Err("a bandwidth of 0 would stop the copy (leave it out for no cap)".into()),
        n => Ok(n),
    }
}

/// Starts moving disk `disk` of `name`; unless `no_wait`, shows the
/// progress and fails when the move does.
pub(super) async fn follow(
    c: &Client,
    json: bool,
    name: &str,
    disk: &str,
    req: &MoveDisk,
    no_wait: bool,
) -> CmdResult {
    let mut m = c.move_disk(name, disk, req).await?;
    let bar = (!json && !no_wait && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(m.total_bytes.max(1));
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        pb.set_message(format!("moving {name}/{}", m.disk));
        pb
    });
    while !no_wait && m.state == DiskMoveState::Running {
        tokio::time::sleep(Duration::from_millis(200)).await;
        m = c.disk_move(name, disk).await?;
        if let Some(pb) = &bar {
            pb.set_length(m.total_bytes.max(1));
            pb.set_position(m.copied_bytes.min(m.total_bytes));
            pb.set_message(format!("moving {name}/{} ({})", m.disk, m.phase));
        }
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    if json {
        print_json(&m);
    } else {
        println!(
            "{name}: disk {} {} {} in {:.0} ms: {} MiB copied in {} rounds, requests held {}{}",
            m.disk,
            m.phase,
            m.target,
            m.elapsed_ms,
            m.copied_bytes >> 20,
            m.rounds,
            m.held_ms
                .map(|h| format!("{h:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            if m.state == DiskMoveState::Completed && !m.old_removed {
                format!(" ({})", m.error.clone().unwrap_or_default())
            } else {
                String::new()
            }
        );
    }
    match m.state {
        DiskMoveState::Failed | DiskMoveState::Cancelled => Err(Fail(
            code::FAILED,
            format!(
                "moving disk {} of {name} {}: {}; it stays on {}",
                m.disk,
                if m.state == DiskMoveState::Failed {
                    "failed"
                } else {
                    "was cancelled"
                },
                m.error.unwrap_or_default(),
                m.source
            ),
        )),
        _ => Ok(()),
    }
}
