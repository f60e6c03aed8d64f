//! `GET /metrics` end to end: a real `ternd` with a VM doing disk I/O under
//! a QoS cap; the reply is judged by the official Prometheus client's
//! OpenMetrics parser (Debian's python3-prometheus-client), and its
//! counters must move while the guest works.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_test_support::Ternd as Daemon;

/// The Debian interpreter, whose dist-packages hold the parser.
const PYTHON: &str = "/usr/bin/python3";

/// Parses with `prometheus_client.openmetrics.parser` (strict: a reply it
/// refuses fails the test) and prints every sample as a JSON line.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps([family.type, s.name, s.labels, s.value]))
"#;

/// One sample: (family type, value).
type Samples = BTreeMap<(String, Vec<(String, String)>), (String, f64)>;

fn parser_available(test: &str) -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        tern_test_support::skip(
            test,
            "no prometheus_client for /usr/bin/python3 (scripts/setup-test-deps.sh installs python3-prometheus-client)",
        );
    }
    ok
}

fn scrape(d: &Daemon) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ep = tern_api::Endpoint::parse(&d.host(), None).unwrap();
    let client = tern_api::Client::new(ep);
    let (status, body) = rt
        .block_on(client.raw(tern_api::Method::GET, "/metrics", None))
        .unwrap();
    assert_eq!(status.as_u16(), 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8(body.to_vec()).expect("UTF-8 metrics")
}

fn parse(text: &str) -> Samples {
    let mut child = Command::new(PYTHON)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the reply: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut samples = Samples::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (kind, name, labels, value): (String, String, BTreeMap<String, String>, f64) =
            serde_json::from_str(line).unwrap();
        samples.insert((name, labels.into_iter().collect()), (kind, value));
    }
    samples
}

/// The value of `name` with exactly these labels.
fn value(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    s.get(&(name.to_string(), l)).map(|(_, v)| *v)
}

/// The one sample of `name` whose labels include these.
fn value_with(s: &Samples, name: &str, labels: &[(&str, &str)]) -> (String, f64) {
    let hits: Vec<_> = s
        .iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .collect();
    assert_eq!(hits.len(), 1, "{name} {labels:?}: {hits:?}");
    hits[0].1.clone()
}

#[test]
fn metrics_parse_as_openmetrics_and_their_counters_move_with_disk_io() {
    let test = "metrics_parse_as_openmetrics_and_their_counters_move_with_disk_io";
    if !tern_test_support::kvm_available(test) || !parser_available(test) {
        return;
    }
    tern_test_support::probe_guest();
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    d.json(&["volume", "create", "data", "--size", "64M"]);
    d.json(&["volume", "qos", "data", "--max-iops", "300"]);
    d.json(&[
        "vm",
        "create",
        "busy",
        "--memory",
        "64M",
        "--disk",
        "data",
        "--guest",
        "probe:blk-iops,bs=4k,qd=4,secs=30,mix=randwrite",
        "--start",
    ]);
    d.json(&[
        "vm",
        "create",
        "idle",
        "--memory",
        "32M",
        "--guest",
        "probe:hello",
    ]);
    let id = d.state("busy")["id"].as_str().unwrap().to_string();

    // Both families of figures, from a first scrape once the guest does I/O.
    let t = Instant::now();
    let first = loop {
        let text = scrape(&d);
        let s = parse(&text);
        let req = value_with(&s, "tern_disk_requests_total", &[("name", "busy")]).1;
        if req > 0.0 {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no disk requests: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        value(&first, "tern_vms", &[("state", "running")]),
        Some(1.0)
    );
    assert_eq!(
        value(&first, "tern_vms", &[("state", "stopped")]),
        Some(1.0)
    );
    assert_eq!(value(&first, "tern_vms", &[("state", "failed")]), Some(0.0));
    assert_eq!(value(&first, "tern_workers", &[]), Some(1.0));
    assert_eq!(
        value(
            &first,
            "tern_vm_state",
            &[("vm", &id), ("name", "busy"), ("state", "running")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value_with(&first, "tern_vm_state", &[("name", "idle")]).1,
        1.0
    );
    assert_eq!(
        value_with(&first, "tern_vm_memory_bytes", &[("name", "busy")]).1,
        (64u64 << 20) as f64
    );
    let disk = [("name", "busy"), ("disk", "data"), ("index", "0")];
    let (kind, cap) = value_with(&first, "tern_disk_capacity_bytes", &disk);
    assert_eq!((kind.as_str(), cap), ("gauge", (64u64 << 20) as f64));
    let (kind, _) = value_with(&first, "tern_disk_requests_total", &disk);
    assert_eq!(kind, "counter");
    assert!(value_with(&first, "tern_vm_resident_memory_bytes", &[("name", "busy")]).1 > 0.0);

    std::thread::sleep(Duration::from_secs(2));
    let text = scrape(&d);
    let second = parse(&text);
    for name in [
        "tern_disk_requests_total",
        "tern_disk_written_bytes_total",
        "tern_disk_qos_throttled_total",
        "tern_vm_cpu_seconds_total",
    ] {
        let labels: &[(&str, &str)] = if name.starts_with("tern_disk") {
            &disk
        } else {
            &[("name", "busy")]
        };
        let a = value_with(&first, name, labels).1;
        let b = value_with(&second, name, labels).1;
        assert!(b > a, "{name} did not move: {a} then {b}\n{text}");
    }
    assert_eq!(value_with(&second, "tern_disk_errors_total", &disk).1, 0.0);
    d.json(&["vm", "stop", "busy"]);
}
