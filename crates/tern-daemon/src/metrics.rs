//! `GET /metrics`: the host's VMs, their workers, disks and migrations in
//! the Prometheus/OpenMetrics text format, for a Prometheus server to
//! scrape.
//!
//! Every scrape builds the figures afresh from the registry, the workers'
//! `status` replies and `/proc` (nothing is kept between scrapes, so a
//! restarted daemon reports the same counters its workers hold). Names
//! follow Prometheus's conventions: a `tern_` prefix, base units in the
//! name (`_bytes`, `_seconds`), `_total` on counters. The list is in
//! `docs/metrics.md`.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tern_api::VmState;
use tern_worker_proto::requests::{Status, StatusReply};

use crate::daemon::Daemon;
use crate::error::OpError;
use crate::registry::VmRow;

/// The content type of the reply (OpenMetrics text, which Prometheus
/// reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for one worker's figures; a worker that does not
/// answer in time is left out of this scrape (its VM's state is still
/// reported).
const WORKER_TIMEOUT: Duration = Duration::from_secs(2);

/// Every state a VM can be in, so each has a series (0 when empty).
const STATES: [VmState; 10] = [
    VmState::Stopped,
    VmState::Starting,
    VmState::Running,
    VmState::Paused,
    VmState::Stopping,
    VmState::Saving,
    VmState::Saved,
    VmState::Restoring,
    VmState::Migrating,
    VmState::Failed,
];

type Labels = Vec<(&'static str, String)>;
type Gauges = Family<Labels, Gauge<i64, AtomicI64>>;
type FloatGauges = Family<Labels, Gauge<f64, AtomicU64>>;
type Counters = Family<Labels, Counter<u64>>;
type FloatCounters = Family<Labels, Counter<f64, AtomicU64>>;

/// The metric families of one scrape.
#[derive(Default)]
struct Families {
    info: Gauges,
    vms: Gauges,
    workers: Gauges,
    events: Counters,
    vm_state: Gauges,
    vm_vcpus: Gauges,
    vm_memory: Gauges,
    vm_cpu: FloatCounters,
    vm_rss: Gauges,
    disk_capacity: Gauges,
    disk_requests: Counters,
    disk_errors: Counters,
    disk_throttled: Counters,
    disk_read: Counters,
    disk_written: Counters,
    mig_transferred: Gauges,
    mig_downtime: FloatGauges,
    mig_duration: FloatGauges,
}

impl Families {
    fn register(&self, r: &mut Registry) {
        let t = r.sub_registry_with_prefix("tern");
        t.register(
            "host_info",
            "This daemon (value 1): its version",
            self.info.clone(),
        );
        t.register("vms", "VMs in the registry, by state", self.vms.clone());
        t.register(
            "workers",
            "Worker processes this daemon supervises",
            self.workers.clone(),
        );
        t.register(
            "events",
            "Registry events since the registry was created, by kind (kind=\"failed\": VMs whose worker failed)",
            self.events.clone(),
        );
        t.register(
            "vm_state",
            "1 for the state each VM is in",
            self.vm_state.clone(),
        );
        t.register("vm_vcpus", "vCPUs each VM has", self.vm_vcpus.clone());
        t.register_with_unit(
            "vm_memory",
            "Guest memory each VM has",
            Unit::Bytes,
            self.vm_memory.clone(),
        );
        t.register_with_unit(
            "vm_cpu",
            "CPU time of each VM's worker process (vCPUs and devices), user and system",
            Unit::Seconds,
            self.vm_cpu.clone(),
        );
        t.register_with_unit(
            "vm_resident_memory",
            "Resident memory of each VM's worker process",
            Unit::Bytes,
            self.vm_rss.clone(),
        );
        t.register_with_unit(
            "disk_capacity",
            "Size of each attached disk as the guest sees it",
            Unit::Bytes,
            self.disk_capacity.clone(),
        );
        t.register(
            "disk_requests",
            "Requests the guest made of each disk",
            self.disk_requests.clone(),
        );
        t.register(
            "disk_errors",
            "Requests of each disk that failed",
            self.disk_errors.clone(),
        );
        t.register(
            "disk_qos_throttled",
            "Times a request of each disk waited for a storage QoS maximum",
            self.disk_throttled.clone(),
        );
        t.register_with_unit(
            "disk_read",
            "Bytes the guest read from each disk",
            Unit::Bytes,
            self.disk_read.clone(),
        );
        t.register_with_unit(
            "disk_written",
            "Bytes the guest wrote to each disk",
            Unit::Bytes,
            self.disk_written.clone(),
        );
        t.register_with_unit(
            "migration_transferred",
            "Bytes each migration this daemon took part in has moved",
            Unit::Bytes,
            self.mig_transferred.clone(),
        );
        t.register_with_unit(
            "migration_downtime",
            "Downtime of each finished migration",
            Unit::Seconds,
            self.mig_downtime.clone(),
        );
        t.register_with_unit(
            "migration_duration",
            "Total time of each finished migration",
            Unit::Seconds,
            self.mig_duration.clone(),
        );
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

fn set(f: &Gauges, l: Labels, v: u64) {
    f.get_or_create(&l)
        .set(i64::try_from(v).unwrap_or(i64::MAX));
}

/// What `/proc` says of a worker process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ProcFigures {
    cpu_seconds: f64,
    rss_bytes: u64,
}

/// Reads `/proc/PID/stat` (utime, stime) and `/proc/PID/statm` (resident
/// pages). `None` when the process is gone or the files are not as Linux
/// writes them.
fn proc_figures(pid: u32) -> Option<ProcFigures> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    parse_proc(&stat, &statm, clock_ticks(), page_size())
}

fn parse_proc(stat: &str, statm: &str, ticks: u64, page: u64) -> Option<ProcFigures> {
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcFigures {
        cpu_seconds: (utime + stime) as f64 / ticks.max(1) as f64,
        rss_bytes: resident.saturating_mul(page),
    })
}

fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second()
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// The worker's `status` for a VM that has one, within [`WORKER_TIMEOUT`].
async fn worker_status(d: &Daemon, row: &VmRow) -> Option<StatusReply> {
    let w = d.worker(&row.id)?;
    w.call(Status {}, WORKER_TIMEOUT).await.ok()
}

/// One scrape, encoded.
pub async fn scrape(d: &Daemon) -> Result<String, OpError> {
    let f = Families::default();
    let rows = d.reg.vms()?;

    set(
        &f.info,
        labels(&[("version", env!("CARGO_PKG_VERSION"))]),
        1,
    );
    for state in STATES {
        let n = rows.iter().filter(|r| r.state == state).count() as u64;
        set(&f.vms, labels(&[("state", state.as_str())]), n);
    }
    set(&f.workers, Vec::new(), d.worker_count() as u64);
    for (kind, n) in d.reg.event_counts()? {
        f.events.get_or_create(&vec![("kind", kind)]).inc_by(n);
    }

    for row in &rows {
        let vm = labels(&[("vm", &row.id), ("name", &row.name)]);
        let mut with_state = vm.clone();
        with_state.push(("state", row.state.as_str().to_string()));
        set(&f.vm_state, with_state, 1);
        set(&f.vm_vcpus, vm.clone(), u64::from(row.vcpus));
        set(&f.vm_memory, vm.clone(), row.memory);
        if !row.state.has_worker() {
            continue;
        }
        if let Some(p) = row.pid.and_then(proc_figures) {
            f.vm_cpu.get_or_create(&vm).inc_by(p.cpu_seconds);
            set(&f.vm_rss, vm.clone(), p.rss_bytes);
        }
        let Some(status) = worker_status(d, row).await else {
            continue;
        };
        let names = d.reg.vm_disk_names(&row.id)?;
        for (i, disk) in status.disks.iter().enumerate() {
            let mut l = vm.clone();
            l.push(("index", i.to_string()));
            // Disks attached outside the registry (none today) are named
            // by their index.
            l.push((
                "disk",
                names.get(i).cloned().unwrap_or_else(|| i.to_string()),
            ));
            set(&f.disk_capacity, l.clone(), disk.capacity);
            f.disk_requests.get_or_create(&l).inc_by(disk.requests);
            f.disk_errors.get_or_create(&l).inc_by(disk.errors);
            f.disk_throttled.get_or_create(&l).inc_by(disk.throttled);
            f.disk_read.get_or_create(&l).inc_by(disk.read_bytes);
            f.disk_written.get_or_create(&l).inc_by(disk.write_bytes);
        }
    }

    for m in d.migration_infos() {
        let l = labels(&[
            ("migration", &m.id),
            ("vm", &m.vm),
            ("direction", &m.direction),
            ("state", &format!("{:?}", m.state).to_lowercase()),
        ]);
        set(&f.mig_transferred, l.clone(), m.transferred_bytes);
        if let Some(ms) = m.downtime_ms {
            f.mig_downtime.get_or_create(&l).set(ms / 1e3);
        }
        if let Some(ms) = m.total_ms {
            f.mig_duration.get_or_create(&l).set(ms / 1e3);
        }
    }

    let mut registry = Registry::default();
    f.register(&mut registry);
    let mut out = String::new();
    encode(&mut out, &registry).map_err(|_| OpError::Failed("cannot encode the metrics".into()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_and_resident_memory_from_proc() {
        // A command name with spaces and a ')' must not shift the fields.
        let stat = "4242 (tern run (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 123 456 789";
        let statm = "1000 300 20 1 0 200 0";
        let p = parse_proc(stat, statm, 100, 4096).unwrap();
        assert_eq!(
            p,
            ProcFigures {
                cpu_seconds: 3.0,
                rss_bytes: 300 * 4096
            }
        );
        assert_eq!(parse_proc("garbage", statm, 100, 4096), None);
        assert_eq!(parse_proc(stat, "", 100, 4096), None);
    }
}
