//! The worker's outgoing migration: one job at a time, started by
//! `migrate`, watched by `migrate-status`, stopped by `migrate-cancel`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tern_migrate::{Compression, MigrateError, MigrateOptions, Phase, Progress};
use tern_vmm::{RunState, Vm};
use tern_worker_proto::migration::{
    self as proto, Migrate, MigrateReply, MigrationOutcome, MigrationPhase, MigrationStatus,
};
use tern_worker_proto::requests::Ack;
use tern_worker_proto::WorkerError;

/// How the job ended, known once `tern_migrate::migrate` returned.
#[derive(Clone, Copy, Debug)]
struct Ended {
    outcome: MigrationOutcome,
    paused_here: bool,
}

/// One migration.
struct Job {
    progress: Arc<Progress>,
    ended: Mutex<Option<Ended>>,
    ended_cv: Condvar,
    /// A status reply has shown the end (the worker may exit now).
    final_seen: AtomicBool,
}

impl Job {
    fn end(&self, e: Ended) {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.ended_cv.notify_all();
    }

    /// The end, waiting briefly when the progress says the migration is
    /// over but its thread has not recorded how yet.
    fn ended(&self, done: bool) -> Option<Ended> {
        let g = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if !done || g.is_some() {
            return *g;
        }
        let (g, _) = self
            .ended_cv
            .wait_timeout_while(g, Duration::from_secs(2), |e| e.is_none())
            .unwrap_or_else(|p| p.into_inner());
        *g
    }
}

/// The worker's current (or last) migration.
#[derive(Default)]
pub struct Migrations {
    job: Mutex<Option<Arc<Job>>>,
}

/// The migration options a request asks for.
fn options(p: &Migrate) -> MigrateOptions {
    let mut o = MigrateOptions::new(crate::incoming::endpoint(&p.to));
    o.channels = p.channels;
    if let Some(c) = p.compression {
        o.compression = match c {
            proto::Compression::Auto => Compression::Auto,
            proto::Compression::Off => Compression::Force(tern_migrate::Codec::None),
            proto::Compression::Lz4 => Compression::Force(tern_migrate::Codec::Lz4),
            proto::Compression::Zstd => Compression::Force(tern_migrate::Codec::Zstd),
        };
    }
    if let Some(d) = p.downtime_ms {
        o.downtime = Duration::from_millis(d);
    }
    o.bandwidth = p.bandwidth.filter(|&b| b > 0);
    o.timeout = p.timeout_s.map(Duration::from_secs);
    if let Some(a) = p.timeout_action {
        o.on_timeout = match a {
            proto::TimeoutAction::Cancel => tern_migrate::TimeoutAction::Cancel,
            proto::TimeoutAction::Switchover => tern_migrate::TimeoutAction::Switchover,
        };
    }
    o.auto_converge = p.auto_converge.unwrap_or(true);
    o.with_storage = p.with_storage;
    o
}

fn phase(p: Phase) -> MigrationPhase {
    match p {
        Phase::Setup => MigrationPhase::Setup,
        Phase::Precopy => MigrationPhase::Precopy,
        Phase::Switchover => MigrationPhase::Switchover,
        Phase::Completed => MigrationPhase::Completed,
        Phase::Failed => MigrationPhase::Failed,
        Phase::Cancelled => MigrationPhase::Cancelled,
    }
}

impl Migrations {
    fn current(&self) -> Option<Arc<Job>> {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `migrate`: starts a migration of `vm` in the background.
    pub fn start(&self, vm: &Arc<Vm>, req: &Migrate) -> Result<MigrateReply, WorkerError> {
        let opts = options(req);
        let mut slot = self.job.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = slot.as_ref() {
            if !j.progress.snapshot().phase.done() {
                return Err(WorkerError::busy("a migration is already running"));
            }
        }
        let job = Arc::new(Job {
            progress: Arc::new(Progress::default()),
            ended: Mutex::new(None),
            ended_cv: Condvar::new(),
            final_seen: AtomicBool::new(false),
        });
        *slot = Some(job.clone());
        drop(slot);
        let vm = vm.clone();
        std::thread::Builder::new()
            .name("migrate".into())
            .spawn(move || run(&vm, &opts, &job))
            .map_err(|e| WorkerError::failed(format!("cannot start the migration thread: {e}")))?;
        Ok(MigrateReply {
            phase: MigrationPhase::Setup,
        })
    }

    /// `migrate-status`.
    pub fn status(&self) -> MigrationStatus {
        let Some(j) = self.current() else {
            return MigrationStatus::default();
        };
        let s = j.progress.snapshot();
        let ended = j.ended(s.phase.done());
        MigrationStatus {
            // Final only with its outcome: a watcher that sees the end can
            // act on how it ended.
            phase: match ended {
                Some(_) => phase(s.phase),
                None if s.phase.done() => MigrationPhase::Switchover,
                None => phase(s.phase),
            },
            outcome: ended.map(|e| e.outcome),
            paused_here: ended.is_some_and(|e| e.paused_here),
            memory_bytes: s.memory_bytes,
            bytes_sent: s.bytes_sent,
            pages_sent: s.pages_sent,
            zero_pages: s.zero_pages,
            rounds: s.rounds,
            dirty_rate: s.dirty_rate,
            bandwidth: s.bandwidth,
            remaining_bytes: s.remaining_bytes,
            estimated_remaining_ms: s.estimated_remaining_ms,
            expected_downtime_ms: s.expected_downtime_ms,
            compression: s.compression,
            channels: s.channels,
            throttle_percent: s.throttle_percent,
            elapsed_ms: s.elapsed_ms,
            downtime_ms: s.downtime_ms,
            zero_copy: s.zero_copy,
            protocol: s.protocol,
            disk_total: s.disk_total,
            disk_sent: s.disk_sent,
            disk_remaining: s.disk_remaining,
            error: s.error,
        }
    }

    /// Called once a `migrate-status` reply is written: when it showed the
    /// end, the worker may stop (its watcher has the result).
    pub fn status_delivered(&self, status: &MigrationStatus) {
        if let (true, Some(j)) = (status.outcome.is_some(), self.current()) {
            j.final_seen.store(true, Ordering::SeqCst);
        }
    }

    /// `migrate-cancel`.
    pub fn cancel(&self) -> Result<Ack, WorkerError> {
        match self.current() {
            Some(j) if !j.progress.snapshot().phase.done() => {
                j.progress.cancel();
                Ok(Ack {})
            }
            _ => Err(WorkerError::conflict("no migration is running")),
        }
    }
}

/// The migration thread.
fn run(vm: &Arc<Vm>, opts: &MigrateOptions, job: &Job) {
    match tern_migrate::migrate(vm, opts, &job.progress) {
        Ok(()) => {
            let s = job.progress.snapshot();
            eprintln!(
                "tern: migrated to {} in {:.0} ms (downtime {:.1} ms, {} rounds); stopping here",
                opts.to,
                s.elapsed_ms,
                s.downtime_ms.unwrap_or(0.0),
                s.rounds
            );
            job.end(Ended {
                outcome: MigrationOutcome::Completed,
                paused_here: false,
            });
            // Let a watcher see the result before the socket goes.
            let t = Instant::now();
            while !job.final_seen.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(10));
            }
            vm.request_stop();
        }
        Err(e) => {
            let paused_here = vm.state() == RunState::Paused;
            let outcome = match e {
                MigrateError::Unconfirmed(_) => MigrationOutcome::Unconfirmed,
                MigrateError::Cancelled | MigrateError::TimedOut(_) => MigrationOutcome::Cancelled,
                _ => MigrationOutcome::Failed,
            };
            eprintln!(
                "tern: migration to {} failed: {}{}",
                opts.to,
                tern_migrate::sender::error_chain(&e),
                if paused_here {
                    ""
                } else {
                    "; the VM keeps running here"
                }
            );
            job.end(Ended {
                outcome,
                paused_here,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_worker_proto::ErrorCode;

    #[test]
    fn requests_become_migration_options() {
        let o = options(&Migrate {
            channels: 3,
            compression: Some(proto::Compression::Off),
            downtime_ms: Some(20),
            bandwidth: Some(0),
            timeout_s: Some(9),
            timeout_action: Some(proto::TimeoutAction::Switchover),
            auto_converge: Some(false),
            ..Migrate::to("tcp:10.1.2.3:4000".parse().unwrap())
        });
        assert_eq!(o.to, tern_migrate::Endpoint::Tcp("10.1.2.3:4000".into()));
        assert_eq!(o.channels, 3);
        assert_eq!(o.compression, Compression::Force(tern_migrate::Codec::None));
        assert_eq!(o.downtime, Duration::from_millis(20));
        assert_eq!(o.bandwidth, None, "0 is no cap");
        assert_eq!(o.timeout, Some(Duration::from_secs(9)));
        assert_eq!(o.on_timeout, tern_migrate::TimeoutAction::Switchover);
        assert!(!o.auto_converge);
        let d = options(&Migrate::to("unix:/m.sock".parse().unwrap()));
        assert_eq!(d.to, tern_migrate::Endpoint::Unix("/m.sock".into()));
        assert!(d.auto_converge);
    }

    #[test]
    fn without_a_migration_status_says_none_and_cancel_is_a_conflict() {
        let m = Migrations::default();
        let s = m.status();
        assert_eq!(s.phase, MigrationPhase::None);
        assert!(s.outcome.is_none());
        assert_eq!(m.cancel().unwrap_err().code, ErrorCode::Conflict);
    }

    #[test]
    fn a_final_phase_is_reported_only_with_its_outcome() {
        let m = Migrations::default();
        let job = Arc::new(Job {
            progress: Arc::new(Progress::default()),
            ended: Mutex::new(None),
            ended_cv: Condvar::new(),
            final_seen: AtomicBool::new(false),
        });
        *m.job.lock().unwrap() = Some(job.clone());
        job.progress.update(|s| s.phase = Phase::Precopy);
        assert_eq!(m.status().phase, MigrationPhase::Precopy);
        // The sender marked the end; its thread records how a moment later.
        job.progress.update(|s| s.phase = Phase::Failed);
        let j = job.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            j.end(Ended {
                outcome: MigrationOutcome::Unconfirmed,
                paused_here: true,
            });
        });
        let s = m.status();
        t.join().unwrap();
        assert_eq!(s.phase, MigrationPhase::Failed);
        assert_eq!(s.outcome, Some(MigrationOutcome::Unconfirmed));
        assert!(s.paused_here);
        assert!(!job.final_seen.load(Ordering::SeqCst));
        m.status_delivered(&s);
        assert!(job.final_seen.load(Ordering::SeqCst));
        assert_eq!(m.cancel().unwrap_err().code, ErrorCode::Conflict);
    }
}
