//! Golden migration streams: what a source of each protocol version sent
//! for a small probe VM (every connection: control and data channels),
//! and what the destination answered, recorded by a proxy between two
//! real workers and stored zstd-compressed under `tests/golden/`. Each
//! is replayed into a destination worker of this build (`tern run
//! --incoming`), which must accept it and run the VM; the guest then
//! verifies every page its dirty workload wrote. So a later release that
//! stops understanding what an earlier one sends fails here, without
//! building the earlier one.
//!
//! `vN.golden.zst` is the stream of protocol version N. Record with
//! `cargo test -p tern-migrate --test golden -- --ignored record_golden_streams`
//! (after `cargo build -p tern -p probe-guest`): it writes this build's
//! version (still unreleased, so it may be rewritten) and the previous
//! release's (built from git history, see `release/previous-release.toml`)
//! when its file is missing. Released versions' streams are never
//! rewritten.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_migrate::wire::{self, Kind};
use tern_test_support::{procs, tern_run, Worker};

/// Where the streams lie.
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
/// The golden file's own format.
const FORMAT: u32 = 1;
/// The probe VM of every stream: small, so the stream is.
const VCPUS: u32 = 1;
const MEMORY: &str = "32M";
const GUEST: &str = "probe:dirty,mib=1,rate=1+verify";

/// A recorded migration.
#[derive(Clone, PartialEq, prost::Message)]
struct Golden {
    /// [`FORMAT`].
    #[prost(uint32, tag = "1")]
    format: u32,
    /// The protocol version the stream speaks.
    #[prost(uint32, tag = "2")]
    protocol: u32,
    /// Which build sent it (commit or product version), for people.
    #[prost(string, tag = "3")]
    release: String,
    /// The VM: `tern run --vcpus`.
    #[prost(uint32, tag = "4")]
    vcpus: u32,
    /// `--memory`.
    #[prost(string, tag = "5")]
    memory: String,
    /// `--guest`.
    #[prost(string, tag = "6")]
    guest: String,
    /// Every connection in the order the source opened them: the control
    /// connection first.
    #[prost(message, repeated, tag = "7")]
    connections: Vec<Connection>,
}

/// The bytes of one connection, each direction.
#[derive(Clone, PartialEq, prost::Message)]
struct Connection {
    /// Source to destination.
    #[prost(bytes = "vec", tag = "1")]
    sent: Vec<u8>,
    /// Destination to source.
    #[prost(bytes = "vec", tag = "2")]
    answered: Vec<u8>,
}

fn path_of(protocol: u32) -> PathBuf {
    Path::new(DIR).join(format!("v{protocol}.golden.zst"))
}

fn load(path: &Path) -> Golden {
    let z = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let raw = zstd::stream::decode_all(z.as_slice()).unwrap();
    let g: Golden = prost::Message::decode(raw.as_slice()).unwrap();
    assert_eq!(g.format, FORMAT, "{}", path.display());
    g
}

fn store(g: &Golden, path: &Path) -> u64 {
    let raw = prost::Message::encode_to_vec(g);
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.window_log(27).unwrap();
    enc.write_all(&raw).unwrap();
    let z = enc.finish().unwrap();
    std::fs::create_dir_all(DIR).unwrap();
    std::fs::write(path, &z).unwrap();
    eprintln!(
        "{}: {} connections, {} bytes, {} compressed",
        path.display(),
        g.connections.len(),
        raw.len(),
        z.len()
    );
    z.len() as u64
}

/// The frames of a recorded byte stream after its preamble: (kind, the
/// frame's bytes as sent).
fn frames(bytes: &[u8]) -> (u32, Vec<(Kind, Vec<u8>)>) {
    let mut r = bytes;
    let version = wire::read_preamble(&mut r).unwrap();
    (version, bare_frames(r))
}

/// The frames of a byte stream without a preamble (a destination's
/// answers on a data channel).
fn bare_frames(mut r: &[u8]) -> Vec<(Kind, Vec<u8>)> {
    let mut out = Vec::new();
    let mut payload = Vec::new();
    while !r.is_empty() {
        let kind = wire::read_frame(&mut r, &mut payload).unwrap();
        let mut frame = Vec::new();
        wire::write_frame(&mut frame, kind, &payload).unwrap();
        out.push((kind, frame));
    }
    out
}

fn streams() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(DIR)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.to_string_lossy().ends_with(".golden.zst"));
    v.sort();
    v
}

#[test]
fn every_accepted_version_has_a_well_formed_golden_stream() {
    for v in tern_migrate::MIN_PROTOCOL_VERSION..=tern_migrate::PROTOCOL_VERSION {
        let p = path_of(v);
        let g = load(&p);
        assert_eq!(g.protocol, v, "{}", p.display());
        let size = std::fs::metadata(&p).unwrap().len();
        assert!(size < 320 << 10, "{}: {size} bytes", p.display());
        let (ctl, data) = g.connections.split_first().expect("connections");
        let (version, ctl_frames) = frames(&ctl.sent);
        assert_eq!(version, v);
        let kinds: Vec<Kind> = ctl_frames.iter().map(|f| f.0).collect();
        assert_eq!(
            kinds,
            [Kind::Hello, Kind::Switchover, Kind::Commit],
            "{}",
            p.display()
        );
        // What the destination of that release answered: what the replay
        // expects of this build.
        let (version, answers) = frames(&ctl.answered);
        assert_eq!(version, v);
        let kinds: Vec<Kind> = answers.iter().map(|f| f.0).collect();
        assert_eq!(kinds, [Kind::Welcome, Kind::Outcome, Kind::Running]);
        assert!(!data.is_empty());
        for c in data {
            let (version, f) = frames(&c.sent);
            assert_eq!(version, v);
            assert_eq!(f.first().map(|f| f.0), Some(Kind::DataHello));
            assert_eq!(f.last().map(|f| f.0), Some(Kind::ChannelDone));
            assert!(f.iter().any(|f| f.0 == Kind::Chunk));
            let syncs = f.iter().filter(|f| f.0 == Kind::Sync).count();
            let echoes = bare_frames(&c.answered);
            assert!(echoes.iter().all(|f| f.0 == Kind::Sync));
            assert_eq!(echoes.len(), syncs, "one echo per Sync");
        }
    }
}

/// A destination of this build for the stream's VM; its endpoint.
fn destination(dir: &Path, g: &Golden) -> (Worker, String) {
    let listening = dir.join("dest.listening");
    let mut c = tern_run();
    c.args(["--vcpus", &g.vcpus.to_string(), "--memory", &g.memory]);
    c.args(["--guest", &g.guest, "--serial", "null"]);
    c.args(["--incoming", "tcp:127.0.0.1:0", "--listening-file"])
        .arg(&listening);
    let w = Worker::with_control("dest", c, &dir.join("dest.sock"));
    w.wait_line("waiting for a migration on ", Duration::from_secs(20));
    let doc = tern_test_support::proto::Listening::read(&listening)
        .unwrap()
        .expect("the listening file is written before the log line");
    let ep = doc.endpoint.to_string();
    (w, ep.strip_prefix("tcp:").unwrap().to_string())
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Reads one frame that must be `want`; returns its payload.
fn expect_frame(s: &mut TcpStream, want: Kind) -> Vec<u8> {
    let mut buf = Vec::new();
    let got = wire::read_frame(s, &mut buf).unwrap();
    assert_eq!(got, want);
    buf
}

/// Plays `g`'s source side against the destination at `addr`, checking
/// each answer the protocol expects.
fn replay(g: &Golden, addr: &str) {
    let (ctl, data) = g.connections.split_first().unwrap();
    let (version, ctl_frames) = frames(&ctl.sent);
    let mut c = connect(addr);
    let mut pre = Vec::new();
    wire::write_preamble(&mut pre, version).unwrap();
    c.write_all(&pre).unwrap();
    let mut frames_left = ctl_frames.into_iter();
    let (kind, hello) = frames_left.next().unwrap();
    assert_eq!(kind, Kind::Hello);
    c.write_all(&hello).unwrap();
    assert_eq!(
        wire::read_preamble(&mut c).unwrap(),
        version,
        "this build speaks the stream's version"
    );
    let welcome: wire::Welcome =
        prost::Message::decode(expect_frame(&mut c, Kind::Welcome).as_slice()).unwrap();
    assert!(welcome.accepted, "refused: {}", welcome.error);
    std::thread::scope(|s| {
        for conn in data {
            s.spawn(move || {
                let syncs = frames(&conn.sent)
                    .1
                    .iter()
                    .filter(|f| f.0 == Kind::Sync)
                    .count();
                let mut d = connect(addr);
                d.write_all(&conn.sent).unwrap();
                // Every `Sync` is echoed once what came before it is applied.
                for _ in 0..syncs {
                    expect_frame(&mut d, Kind::Sync);
                }
            });
        }
    });
    for (kind, frame) in frames_left {
        c.write_all(&frame).unwrap();
        match kind {
            Kind::Switchover => {
                let o: wire::Outcome =
                    prost::Message::decode(expect_frame(&mut c, Kind::Outcome).as_slice()).unwrap();
                assert!(o.ready, "destination failed: {}", o.error);
            }
            Kind::Commit => {
                expect_frame(&mut c, Kind::Running);
            }
            other => panic!("unexpected control frame {other:?} in the stream"),
        }
    }
}

#[test]
fn golden_streams_replay_into_a_destination_of_this_build() {
    if !tern_test_support::kvm_available("golden_streams_replay_into_a_destination_of_this_build") {
        return;
    }
    tern_test_support::probe_guest();
    let all = streams();
    assert!(!all.is_empty(), "no golden streams in {DIR}");
    for p in all {
        let g = load(&p);
        let dir = tempfile::tempdir().unwrap();
        let (dst, addr) = destination(dir.path(), &g);
        replay(&g, &addr);
        dst.wait_line("migration complete", Duration::from_secs(10));
        let accepted = dst.wait_line("accepted (protocol ", Duration::from_secs(1));
        assert!(
            accepted.contains(&format!("(protocol {})", g.protocol)),
            "{accepted}"
        );
        // It runs here: the workload moves on, then checks every page.
        let gen = dst.generation();
        dst.wait_generation(gen + 1);
        let report = dst.finish_and_verify();
        eprintln!("{} ({}): {report}", p.display(), g.release);
    }
}

/// A TCP proxy that records every connection through it.
struct Recorder {
    addr: String,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>>,
    accept: Option<std::thread::JoinHandle<Vec<std::thread::JoinHandle<()>>>>,
}

impl Recorder {
    fn start(upstream: String) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>> = Arc::default();
        let (st, cs) = (stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            let mut pumps = Vec::new();
            while !st.load(Ordering::SeqCst) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                down.set_nodelay(true).unwrap();
                let up = TcpStream::connect(&upstream).unwrap();
                up.set_nodelay(true).unwrap();
                let rec = Arc::new(Mutex::new(Connection::default()));
                cs.lock().unwrap().push(rec.clone());
                for (from, to, sent) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap(), true),
                    (up.try_clone().unwrap(), down.try_clone().unwrap(), false),
                ] {
                    let rec = rec.clone();
                    pumps.push(std::thread::spawn(move || pump(from, to, &rec, sent)));
                }
            }
            pumps
        });
        Recorder {
            addr,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    /// Stops accepting, waits for every connection to end, returns them.
    fn finish(mut self) -> Vec<Connection> {
        self.stop.store(true, Ordering::SeqCst);
        for p in self.accept.take().unwrap().join().unwrap() {
            p.join().unwrap();
        }
        let conns = self.conns.lock().unwrap();
        conns.iter().map(|c| c.lock().unwrap().clone()).collect()
    }
}

/// Copies `from` to `to`, recording the bytes; passes the end on.
fn pump(mut from: TcpStream, mut to: TcpStream, rec: &Mutex<Connection>, sent: bool) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut r = rec.lock().unwrap();
            let side = if sent { &mut r.sent } else { &mut r.answered };
            side.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Runs a dirtying probe VM on `run` (a `tern run` of the release to
/// record), migrates it with `cli` (that release's `tern`) through a
/// recorder to a destination of the same release, checks the guest
/// verifies at the destination, and returns the recording.
fn record(run: Command, dest_run: Command, cli: &Path, release: &str, protocol: u32) -> Golden {
    let dir = tempfile::tempdir().unwrap();
    let vm = |mut c: Command, name: &str, extra: &[&str]| {
        c.args(["--vcpus", &VCPUS.to_string(), "--memory", MEMORY]);
        c.args(["--guest", GUEST, "--serial", "null"]);
        c.args(extra);
        Worker::with_control(name, c, &dir.path().join(format!("{name}.sock")))
    };
    let listening = dir.path().join("dest.listening");
    let dst = vm(
        dest_run,
        "dest",
        &[
            "--incoming",
            "tcp:127.0.0.1:0",
            "--listening-file",
            listening.to_str().unwrap(),
        ],
    );
    dst.wait_line("waiting for a migration on ", Duration::from_secs(20));
    let ep = tern_test_support::proto::Listening::read(&listening)
        .unwrap()
        .unwrap()
        .endpoint
        .to_string();
    let rec = Recorder::start(ep.strip_prefix("tcp:").unwrap().to_string());
    // Everything else is ready first: each page the guest stamps before
    // the migration starts is 4 KiB the stream cannot compress.
    let src = vm(run, "source", &[]);
    src.wait_generation(1);
    let mut m = Command::new(cli);
    m.args(["migrate", "--control"])
        .arg(src.sock())
        .args(["--to", &format!("tcp:{}", rec.addr)])
        .args(["--channels", "2", "--compression", "lz4"]);
    let out = procs::output(&mut m).unwrap();
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dst.wait_line("migration complete", Duration::from_secs(10));
    assert_eq!(src.wait_exit(Duration::from_secs(20)), Some(0));
    let connections = rec.finish();
    let gen = dst.generation();
    dst.wait_generation(gen + 1);
    dst.finish_and_verify();
    Golden {
        format: FORMAT,
        protocol,
        release: release.into(),
        vcpus: VCPUS,
        memory: MEMORY.into(),
        guest: GUEST.into(),
        connections,
    }
}

#[test]
#[ignore = "rewrites the golden streams; run by hand (see the file's docs)"]
fn record_golden_streams() {
    tern_test_support::probe_guest();
    let v = tern_migrate::PROTOCOL_VERSION;
    let g = record(
        tern_run(),
        tern_run(),
        &tern_test_support::tern_exe(),
        &format!("tern {} (protocol {v})", env!("CARGO_PKG_VERSION")),
        v,
    );
    store(&g, &path_of(v));
    let Some(prev) = tern_test_support::prev_release::build("record_golden_streams") else {
        return;
    };
    let p = path_of(prev.protocol);
    if p.exists() {
        eprintln!("{}: kept (a released version's stream)", p.display());
        return;
    }
    let g = record(
        prev.tern_run(),
        prev.tern_run(),
        &prev.tern(),
        &format!("{} (protocol {})", prev.commit, prev.protocol),
        prev.protocol,
    );
    store(&g, &p);
}
