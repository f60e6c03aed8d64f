//! `tern iscsi serve` judged by libiscsi's `iscsi-test-cu` (Debian's
//! libiscsi-bin), with Debian's `tgt` serving the same kind of image in
//! the same run as the reference: a suite Tern fails that tgt passes
//! fails the test. Also CHAP (right and wrong secret), the allow list, and
//! the fence_scsi persistent-reservation sequence from two sessions.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_test_support::{poll, skip, tern_exe, tool};

#[path = "iscsi/client.rs"]
mod client;

/// A child process killed and reaped when dropped (also on panic).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Deserialize)]
struct Listening {
    address: SocketAddr,
    iqn: String,
}

/// Starts `tern iscsi serve IMAGE` with `extra` options on a free port.
fn serve(dir: &Path, image: &Path, name: &str, extra: &[&str]) -> (Proc, Listening) {
    let lf = dir.join(format!("{name}.listening"));
    let child = Command::new(tern_exe())
        .args(["iscsi", "serve"])
        .arg(image)
        .args(["--listen", "127.0.0.1:0", "--iqn"])
        .arg(format!("iqn.2026-12.org.tern:{name}"))
        .arg("--listening-file")
        .arg(&lf)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("start tern iscsi serve");
    let p = Proc(child);
    let l: Listening = poll(
        Duration::from_secs(20),
        "the iSCSI target to listen",
        || serde_json::from_slice(&std::fs::read(&lf).ok()?).ok(),
    );
    (p, l)
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(64 << 20).unwrap();
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// tgtd on its own control port and portal; stopped on drop.
struct Tgt {
    _daemon: Proc,
    control: String,
}

impl Tgt {
    fn adm(&self, args: &[&str]) {
        let st = Command::new("tgtadm")
            .args(["-C", &self.control, "--lld", "iscsi"])
            .args(args)
            .status()
            .expect("run tgtadm");
        assert!(st.success(), "tgtadm {args:?} failed: {st}");
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = Command::new("tgtadm")
            .args(["-C", &self.control, "--op", "delete", "--mode", "system"])
            .stderr(Stdio::null())
            .status();
    }
}

fn start_tgt(image: &Path, port: u16, iqn: &str) -> Tgt {
    // A control port of our own: another tgtd (the system's) keeps its own.
    let control = (1000 + std::process::id() % 30000).to_string();
    let child = Command::new("tgtd")
        .args(["-f", "-C", &control, "--iscsi"])
        .arg(format!("portal=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tgtd");
    let t = Tgt {
        _daemon: Proc(child),
        control,
    };
    let sock = format!("/var/run/tgtd/socket.{}", t.control);
    poll(Duration::from_secs(20), "tgtd's control socket", || {
        Path::new(&sock).exists().then_some(())
    });
    t.adm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn]);
    t.adm(&[
        "--op",
        "new",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "1",
        "-b",
        image.to_str().unwrap(),
    ]);
    t.adm(&[
        "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
    ]);
    t
}

/// iscsi-test-cu's counts for one suite.
#[derive(Serialize, Clone, Copy, Debug, Default)]
struct Counts {
    tests: u32,
    passed: u32,
    failed: u32,
}

fn run_suite(suite: &str, url: &str) -> Option<Counts> {
    let out = Command::new("timeout")
        .args(["600", "iscsi-test-cu", "-d", "-s"])
        .arg(format!("--test={suite}"))
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run iscsi-test-cu");
    let text = String::from_utf8_lossy(&out.stdout);
    // "               tests      7      7      6      1        0"
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("tests "))?;
    let n: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    (n.len() >= 4).then(|| Counts {
        tests: n[1],
        passed: n[2],
        failed: n[3],
    })
}

#[derive(Serialize)]
struct SuiteLine<'a> {
    suite: &'a str,
    tern: Option<Counts>,
    tgt: Option<Counts>,
}

/// The suites the issue names: SBC commands and persistent reservations.
const SUITES: &[&str] = &[
    "SCSI.TestUnitReady",
    "SCSI.Inquiry",
    "SCSI.Mandatory",
    "SCSI.ReadCapacity10",
    "SCSI.ReadCapacity16",
    "SCSI.Read6",
    "SCSI.Read10",
    "SCSI.Read12",
    "SCSI.Read16",
    "SCSI.Write10",
    "SCSI.Write12",
    "SCSI.Write16",
    "SCSI.Verify10",
    "SCSI.Verify12",
    "SCSI.Verify16",
    "SCSI.WriteVerify10",
    "SCSI.Unmap",
    "SCSI.WriteSame10",
    "SCSI.WriteSame16",
    "SCSI.ModeSense6",
    "SCSI.ReportSupportedOpcodes",
    "SCSI.StartStopUnit",
    "SCSI.PreventAllow",
    "SCSI.PrinReadKeys",
    "SCSI.PrinServiceactionRange",
    "SCSI.PrinReportCapabilities",
    "SCSI.ProutRegister",
    "SCSI.ProutReserve",
    "SCSI.ProutClear",
    "SCSI.ProutPreempt",
];

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn tools(test: &str) -> bool {
    ["iscsi-test-cu", "iscsi-inq", "tgtd", "tgtadm", "timeout"]
        .iter()
        .all(|t| tool(test, t).is_some())
}

#[test]
fn iscsi_test_cu_against_tgt() {
    let test = "iscsi_test_cu_against_tgt";
    if !tools(test) {
        return;
    }
    if !is_root() {
        skip(test, "tgtd must run as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tern_img = image(dir.path(), "tern.img");
    let tgt_img = image(dir.path(), "tgt.img");
    let (_tern, l) = serve(dir.path(), &tern_img, "judged", &[]);
    let tgt_port = free_port();
    let tgt_iqn = "iqn.2026-12.org.tern:reference";
    let _tgt = start_tgt(&tgt_img, tgt_port, tgt_iqn);
    let tern_url = format!("iscsi://{}/{}/0", l.address, l.iqn);
    let tgt_url = format!("iscsi://127.0.0.1:{tgt_port}/{tgt_iqn}/1");
    let mut worse = Vec::new();
    let (mut tern_pass, mut tgt_pass) = (0, 0);
    for suite in SUITES {
        let tern = run_suite(suite, &tern_url);
        let tgt = run_suite(suite, &tgt_url);
        println!(
            "{}",
            serde_json::to_string(&SuiteLine { suite, tern, tgt }).unwrap()
        );
        let tern_ok = tern.is_some_and(|c| c.failed == 0 && c.tests > 0);
        let tgt_ok = tgt.is_some_and(|c| c.failed == 0 && c.tests > 0);
        tern_pass += tern_ok as u32;
        tgt_pass += tgt_ok as u32;
        if tgt_ok && !tern_ok {
            worse.push(*suite);
        }
    }
    println!(
        "{{\"suites\":{},\"tern_passed\":{tern_pass},\"tgt_passed\":{tgt_pass}}}",
        SUITES.len()
    );
    assert!(
        worse.is_empty(),
        "suites tgt passes and Tern fails: {worse:?}"
    );
}

fn inq(url: &str, initiator: &str) -> bool {
    Command::new("timeout")
        .args(["30", "iscsi-inq", "-i", initiator, url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run iscsi-inq")
        .success()
}

#[test]
fn chap_and_allow_list() {
    let test = "chap_and_allow_list";
    if !tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "chap.img");
    let allowed = "iqn.2026-12.org.tern:allowed";
    let (_p, l) = serve(
        dir.path(),
        &img,
        "chap",
        &["--allow", allowed, "--chap", "alice:secret-123456"],
    );
    let url = |cred: &str| format!("iscsi://{cred}@{}/{}/0", l.address, l.iqn);
    assert!(
        inq(&url("alice%secret-123456"), allowed),
        "right CHAP secret, allowed initiator: login must succeed"
    );
    assert!(
        !inq(&url("alice%wrong-secret00"), allowed),
        "wrong CHAP secret: login must fail"
    );
    assert!(
        !inq(&url("mallory%secret-123456"), allowed),
        "wrong CHAP user: login must fail"
    );
    assert!(
        !inq(&url("alice%secret-123456"), "iqn.2026-12.org.tern:stranger"),
        "initiator not on the allow list: login must fail"
    );
    let no_cred = format!("iscsi://{}/{}/0", l.address, l.iqn);
    assert!(!inq(&no_cred, allowed), "no CHAP: login must fail");
}

#[test]
fn fence_scsi_two_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "fence.img");
    let (_p, l) = serve(dir.path(), &img, "fence", &[]);
    let mut a = client::Client::login(l.address, &l.iqn, "iqn.2026-12.org.tern:node-a");
    let mut b = client::Client::login(l.address, &l.iqn, "iqn.2026-12.org.tern:node-b");
    // Clear the POWER ON unit attention on both nexuses.
    for c in [&mut a, &mut b] {
        let _ = c.command(&[0; 6], &[], 0);
        let st = c.command(&[0; 6], &[], 0);
        assert_eq!(st.status, 0, "TEST UNIT READY after the unit attention");
    }
    let (ka, kb) = (0xAAAAu64, 0xBBBBu64);
    // REGISTER AND IGNORE EXISTING KEY (service action 6).
    assert_eq!(a.prout(6, 0, 0, ka).status, 0, "A registers");
    assert_eq!(b.prout(6, 0, 0, kb).status, 0, "B registers");
    // A reserves Write Exclusive - Registrants Only (type 5).
    assert_eq!(a.prout(1, 5, ka, 0).status, 0, "A reserves WERO");
    let block = vec![0x5a; 512];
    assert_eq!(b.write(0, &block).status, 0, "registered B writes");
    // PREEMPT AND ABORT (service action 5) of B's key by A.
    assert_eq!(a.prout(5, 5, ka, kb).status, 0, "A preempts and aborts B");
    // B's next command reports the preemption (unit attention), then its
    // write conflicts.
    let first = b.write(0, &block);
    let st = if first.status == 2 {
        b.write(0, &block)
    } else {
        first
    };
    assert_eq!(st.status, 0x18, "preempted B's write: RESERVATION CONFLICT");
    assert_eq!(a.write(0, &block).status, 0, "reservation holder A writes");
    a.logout();
    b.logout();
}
