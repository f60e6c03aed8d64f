//! `tern vm ...` end to end: the real `ternd` and `tern` binaries, real
//! workers (needs /dev/kvm and the probe guest: `cargo build -p tern -p
//! probe-guest` first).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tern_test_support::procs::{self, Spawned, Tag};
use tern_test_support::proto::requests::ProbeStop;
use tern_test_support::proto::Client;
use tern_test_support::{poll, Ternd as Daemon};

fn alive(pid: u64) -> bool {
    tern_test_support::alive(pid as u32)
}

fn sigkill(pid: u64) {
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// A scratch directory for a test that needs KVM and the probe guest;
/// `None` (after a loud SKIP) without /dev/kvm.
fn kvm_test(name: &str) -> Option<tempfile::TempDir> {
    if !tern_test_support::kvm_available(name) {
        return None;
    }
    tern_test_support::probe_guest();
    Some(tempfile::tempdir().unwrap())
}

/// Attaches `tern vm console`, waits for `needle` in its output, detaches
/// with Ctrl-] and returns what it printed.
fn console_shows(d: &Daemon, vm: &str, needle: &str) -> String {
    console_dialog(d, vm, &[(b"", needle)])
}

/// Attaches `tern vm console`; for each step types its bytes, then waits
/// for its text to appear in the output after what earlier steps saw;
/// detaches with Ctrl-] and returns everything printed.
fn console_dialog(d: &Daemon, vm: &str, steps: &[(&[u8], &str)]) -> String {
    let mut cmd = d.tern_command(&["vm", "console", vm]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A tag of its own: its end must not end the daemon's processes.
    let mut console = Spawned::spawn(&mut cmd, &Tag::new()).unwrap();
    let child = console.child();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let mut from = 0;
    for (typed, needle) in steps {
        child.stdin.as_mut().unwrap().write_all(typed).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = String::from_utf8_lossy(&seen[from..]).into_owned();
            if let Some(i) = text.find(needle) {
                from += i + needle.len();
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => seen.extend(b),
                Err(_) => {
                    panic!(
                        "console of {vm} did not show {needle:?}; it showed {:?}",
                        String::from_utf8_lossy(&seen)
                    );
                }
            }
        }
    }
    child.stdin.as_mut().unwrap().write_all(&[0x1d]).unwrap();
    let status = poll(Duration::from_secs(10), "the console to detach", || {
        console.try_wait()
    });
    let mut err = String::new();
    console
        .child()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "console: {err}");
    assert!(err.contains("detached"), "console: {err}");
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn vm_lifecycle_through_the_cli() {
    if !tern_test_support::kvm_available("vm_lifecycle_through_the_cli") {
        return;
    }
    tern_test_support::probe_guest();
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());

    let vm = d.json(&[
        "vm",
        "create",
        "web",
        "--memory",
        "64M",
        "--guest",
        "probe:touch",
    ]);
    assert_eq!(vm["state"], "stopped");
    d.fails(
        &["vm", "create", "web", "--guest", "probe:touch"],
        3,
        "already taken",
    );
    d.fails(
        &["vm", "create", "x", "--guest", "probe:nope"],
        65,
        "invalid guest",
    );
    d.fails(
        &[
            "vm",
            "create",
            "x",
            "--memory",
            "12Q",
            "--guest",
            "probe:hello",
        ],
        64,
        "12Q",
    );

    let vm = d.json(&["vm", "start", "web"]);
    assert_eq!(vm["state"], "running");
    let pid = vm["pid"].as_u64().unwrap();
    assert!(alive(pid));
    d.fails(&["vm", "start", "web"], 3, "is running");
    let list = d.json(&["vm", "list"]);
    assert_eq!(list["vms"][0]["name"], "web");

    let shown = console_shows(
        &d,
        "web",
        "tern probe guest: 1 vCPUs, 64 MiB, workload 'touch'",
    );
    assert!(shown.starts_with("tern probe guest:"), "{shown:?}");

    assert_eq!(d.json(&["vm", "pause", "web"])["state"], "paused");
    assert_eq!(d.state("web")["state"], "paused");
    d.fails(&["vm", "pause", "web"], 3, "is paused");
    assert_eq!(d.json(&["vm", "resume", "web"])["state"], "running");

    if d.features()["save_restore"] == true {
        assert_eq!(d.json(&["vm", "save", "web"])["state"], "saved");
        assert!(!alive(pid), "the worker ends once the VM is saved");
        let vm = d.json(&["vm", "restore", "web"]);
        assert_eq!(vm["state"], "running");
        assert_ne!(vm["pid"].as_u64(), Some(pid), "a new worker runs it");
    } else {
        d.fails(&["vm", "save", "web"], 4, "not implemented yet");
        assert_eq!(
            d.state("web")["state"],
            "running",
            "a refused save changes nothing"
        );
        d.fails(&["vm", "restore", "web"], 4, "not implemented yet");
        tern_test_support::skip(
            "vm_lifecycle_through_the_cli (save and restore)",
            "the VM worker has no save/restore yet; the daemon answers 501",
        );
    }

    let vm = d.json(&["vm", "stop", "web"]);
    assert_eq!(vm["state"], "stopped");
    assert_eq!(vm["reason"], "stopped on request");
    assert!(vm["pid"].is_null());
    d.fails(&["vm", "stop", "web"], 3, "is stopped");
    let out = d.tern(&["vm", "delete", "web"]);
    assert_eq!(out.status.code(), Some(0));
    d.fails(&["vm", "show", "web"], 2, "no VM named 'web'");
    assert_eq!(d.json(&["vm", "list"])["vms"], serde_json::json!([]));
    let out = d.tern(&["vm", "events", "web"]);
    let events = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "created", "started", "paused", "resumed", "stopped", "deleted",
    ] {
        assert!(events.contains(kind), "no {kind} event in:\n{events}");
    }
}

#[test]
fn a_killed_worker_fails_its_vm_and_a_restarted_daemon_finds_running_vms() {
    let name = "a_killed_worker_fails_its_vm_and_a_restarted_daemon_finds_running_vms";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    tern_test_support::probe_guest();
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path());
    for vm in ["doomed", "survivor"] {
        d.json(&[
            "vm",
            "create",
            vm,
            "--memory",
            "64M",
            "--guest",
            "probe:touch",
            "--start",
        ]);
    }
    let doomed = d.state("doomed")["pid"].as_u64().unwrap();
    let survivor = d.state("survivor")["pid"].as_u64().unwrap();
    sigkill(doomed);
    let vm = poll(Duration::from_secs(10), "the VM to be failed", || {
        let v = d.state("doomed");
        (v["state"] == "failed").then_some(v)
    });
    let reason = vm["reason"].as_str().unwrap();
    assert!(reason.contains("SIGKILL"), "{reason}");
    // The daemon keeps serving, restarted nothing, and the other VM runs.
    assert_eq!(d.state("doomed")["state"], "failed");
    assert!(!alive(doomed));
    assert_eq!(d.state("survivor")["pid"].as_u64(), Some(survivor));

    // The daemon dies; its workers do not.
    d.kill();
    assert!(alive(survivor), "a worker died with its daemon");
    d.restart();
    let vm = d.state("survivor");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["pid"].as_u64(), Some(survivor));
    assert_eq!(d.state("doomed")["state"], "failed");
    let out = d.tern(&["vm", "events", "survivor"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("reattached"));
    // Found again means driven again: console, pause, stop.
    console_shows(&d, "survivor", "workload 'touch'");
    assert_eq!(d.json(&["vm", "pause", "survivor"])["state"], "paused");
    assert_eq!(d.json(&["vm", "resume", "survivor"])["state"], "running");
    let vm = d.json(&["vm", "stop", "survivor"]);
    assert_eq!(vm["state"], "stopped");
    assert!(!alive(survivor));
    // And a worker found again that then crashes is reported too.
    d.json(&["vm", "start", "doomed"]);
    let pid = d.state("doomed")["pid"].as_u64().unwrap();
    d.kill();
    d.restart();
    assert_eq!(d.state("doomed")["state"], "running");
    sigkill(pid);
    let vm = poll(
        Duration::from_secs(10),
        "the reattached VM to be failed",
        || {
            let v = d.state("doomed");
            (v["state"] == "failed").then_some(v)
        },
    );
    assert!(
        vm["reason"].as_str().unwrap().contains(&pid.to_string()),
        "{vm}"
    );
}

#[test]
fn tern_vm_migrate_moves_a_running_vm_between_two_daemons() {
    let name = "tern_vm_migrate_moves_a_running_vm_between_two_daemons";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    tern_test_support::probe_guest();
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start(&tmp.path().join("a"));
    let b = Daemon::start(&tmp.path().join("b"));
    a.json(&[
        "vm",
        "create",
        "mover",
        "--memory",
        "64M",
        "--guest",
        "probe:dirty,mib=16,rate=20+verify",
        "--start",
    ]);
    let before = a.state("mover");
    if a.features()["migration"] != true {
        a.fails(
            &["vm", "migrate", "mover", "--to", &b.host()],
            4,
            "not implemented yet",
        );
        // Nothing moved, nothing changed.
        assert_eq!(a.state("mover")["state"], "running");
        assert_eq!(a.state("mover")["pid"], before["pid"]);
        assert_eq!(b.json(&["vm", "list"])["vms"], serde_json::json!([]));
        tern_test_support::skip(
            name,
            "the VM worker has no live migration yet; the daemon answers 501",
        );
        return;
    }
    let m = a.json(&["vm", "migrate", "mover", "--to", &b.host()]);
    assert_eq!(m["state"], "completed", "{m}");
    // The registries: gone from A, running on B with the same identity.
    a.fails(&["vm", "show", "mover"], 2, "no VM named");
    let moved = b.state("mover");
    assert_eq!(moved["state"], "running");
    assert_eq!(moved["id"], before["id"]);
    assert_eq!(moved["memory"], before["memory"]);
    assert!(!alive(before["pid"].as_u64().unwrap()));
    assert!(alive(moved["pid"].as_u64().unwrap()));
    let out = b.tern(&["vm", "events", "mover"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrated-in"));
    let out = a.tern(&["vm", "events", "mover"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("migrated-out"));
    assert_eq!(b.json(&["vm", "stop", "mover"])["state"], "stopped");
}

#[test]
fn tern_vm_migrate_moves_a_vm_with_a_vhdx_disk_on_shared_storage() {
    let Some(tmp) = kvm_test("tern_vm_migrate_moves_a_vm_with_a_vhdx_disk_on_shared_storage")
    else {
        return;
    };
    // Storage both daemons reach under the same path.
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let shared_arg = shared.to_str().unwrap();
    let a = Daemon::start_with(&tmp.path().join("a"), &["--disk-dir", shared_arg]);
    let b = Daemon::start_with(&tmp.path().join("b"), &["--disk-dir", shared_arg]);
    let img = shared.join("data.vhdx");
    a.json(&[
        "volume",
        "create",
        "data",
        "--size",
        "64M",
        "--path",
        img.to_str().unwrap(),
    ]);
    // Writes go on during the migration; after it the guest writes and
    // reads back 8 MiB of its disk on B.
    a.json(&[
        "vm",
        "create",
        "mover",
        "--memory",
        "64M",
        "--disk",
        "data",
        "--guest",
        "probe:blk-iops,bs=4k,qd=4,secs=4,mix=randwrite+blk-verify,mib=8",
        "--start",
    ]);
    let before = a.state("mover");
    // A daemon that does not reach the storage refuses the VM before
    // anything moves; it runs on at A with its disk.
    let c = Daemon::start(&tmp.path().join("c"));
    let out = a.tern(&["vm", "migrate", "mover", "--to", &c.host()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("outside the allowed directories"), "{err}");
    assert_eq!(a.state("mover")["state"], "running");
    assert_eq!(a.state("mover")["pid"], before["pid"]);
    assert_eq!(c.json(&["vm", "list"])["vms"], serde_json::json!([]));
    assert_eq!(c.json(&["volume", "list"])["disks"], serde_json::json!([]));
    let m = a.json(&["vm", "migrate", "mover", "--to", &b.host()]);
    assert_eq!(m["state"], "completed", "{m}");
    a.fails(&["vm", "show", "mover"], 2, "no VM named");
    // The disk went with the VM: A forgot it, B has it attached.
    assert_eq!(a.json(&["volume", "list"])["disks"], serde_json::json!([]));
    let on_b = b.json(&["volume", "show", "data"]);
    assert_eq!(on_b["path"], img.to_str().unwrap(), "{on_b}");
    assert_eq!(on_b["vm"], "mover", "{on_b}");
    let moved = b.state("mover");
    assert_eq!(moved["disks"], serde_json::json!(["data"]), "{moved}");
    assert!(!alive(before["pid"].as_u64().unwrap()));
    // The guest finishes its disk work on B and exits cleanly.
    let t = Instant::now();
    while b.state("mover")["state"] != "stopped" {
        assert!(t.elapsed() < Duration::from_secs(120), "{}", b.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(
        tmp.path()
            .join("b/state/logs")
            .join(format!("{}.log", before["id"].as_str().unwrap())),
    )
    .unwrap();
    for step in ["blk-iops", "blk-verify"] {
        assert!(
            log.lines()
                .any(|l| l.contains(step) && l.contains("result=pass")),
            "{step} did not pass on B: {log}"
        );
    }
    assert!(!log.contains("result=fail"), "{log}");
    // And B can hand it on: the image is closed and unlocked.
    let info = procs::output(
        Command::new(tern_test_support::tern_exe())
            .args(["disk", "check"])
            .arg(&img),
    )
    .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
}

#[test]
fn typing_on_the_console_reaches_the_guest() {
    let Some(tmp) = kvm_test("typing_on_the_console_reaches_the_guest") else {
        return;
    };
    let d = Daemon::start(&tmp.path().join("d"));
    d.json(&[
        "vm",
        "create",
        "talker",
        "--memory",
        "32M",
        "--guest",
        "probe:echo",
        "--start",
    ]);
    // The guest prints back each line it reads from its serial port.
    let shown = console_dialog(
        &d,
        "talker",
        &[
            (b"", "type a line"),
            (b"ping tern\r", "echo: ping tern"),
            (b"quit\r", "echo: quit"),
        ],
    );
    assert!(shown.contains("echo: ping tern"), "{shown}");
    // `quit` ended the guest's step: it finishes and the VM stops.
    poll(Duration::from_secs(20), "the guest to finish", || {
        (d.state("talker")["state"] == "stopped").then_some(())
    });
    let reason = d.state("talker")["reason"].clone();
    assert!(
        reason.as_str().unwrap_or("").contains("exit status 0"),
        "{reason}"
    );
}

#[test]
fn tern_vm_migrate_streams_a_vm_to_a_daemon_reached_over_tcp() {
    let Some(tmp) = kvm_test("tern_vm_migrate_streams_a_vm_to_a_daemon_reached_over_tcp") else {
        return;
    };
    let a = Daemon::start(&tmp.path().join("a"));
    let token_file = tmp.path().join("b.token");
    let b = Daemon::start_with(
        &tmp.path().join("b"),
        &[
            "--tcp",
            "127.0.0.1:0",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let url = poll(Duration::from_secs(10), "B's TCP address", || {
        b.log()
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(str::to_string)
    });
    let token = std::fs::read_to_string(&token_file).unwrap();
    a.json(&[
        "vm",
        "create",
        "far",
        "--memory",
        "64M",
        "--guest",
        "probe:dirty,mib=16,rate=20+verify",
        "--start",
    ]);
    let id = a.state("far")["id"].as_str().unwrap().to_string();
    // A daemon reached over TCP may be on another host: no memfd, the
    // memory streams over TCP to the worker B started.
    let m = a.json(&[
        "vm",
        "migrate",
        "far",
        "--to",
        &url,
        "--to-token",
        token.trim(),
    ]);
    assert_eq!(m["state"], "completed", "{m}");
    // (A memfd hand-over moves no bytes in no rounds; pages compress.)
    assert!(
        m["transferred_bytes"].as_u64().unwrap_or(0) > 0 && m["rounds"].as_u64() >= Some(1),
        "the memory was streamed: {m}"
    );
    a.fails(&["vm", "show", "far"], 2, "no VM named");
    assert_eq!(b.state("far")["state"], "running");
    // The guest on B stops dirtying and checks every page it wrote.
    let ctl = tmp.path().join("b/state/run").join(format!("{id}.ctl"));
    Client::new(&ctl)
        .with_timeout(Duration::from_secs(30))
        .call(ProbeStop {})
        .unwrap();
    poll(Duration::from_secs(60), "the guest on B to verify", || {
        (b.state("far")["state"] == "stopped").then_some(())
    });
    let log =
        std::fs::read_to_string(tmp.path().join("b/state/logs").join(format!("{id}.log"))).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("verify") && l.contains("bad=0") && l.contains("result=pass")),
        "{log}"
    );
}

#[path = "support/boot_image.rs"]
mod boot_image;

#[test]
fn a_daemon_vm_boots_the_kernel_its_disk_holds() {
    let test = "a_daemon_vm_boots_the_kernel_its_disk_holds";
    let Some((kdir, vmlinux)) = boot_image::debian_vmlinux(test) else {
        return;
    };
    if !boot_image::esp_tools(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disks = tmp.path().join("disks");
    std::fs::create_dir_all(&disks).unwrap();
    let d = Daemon::start_with(
        &tmp.path().join("d"),
        &["--disk-dir", disks.to_str().unwrap()],
    );
    let marker = format!("tern.daemon-boot={}", std::process::id());
    let cmdline =
        format!("console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=t panic=-1 {marker}");
    let built = boot_image::esp_disk(kdir.path(), &vmlinux, &cmdline);
    let img = disks.join("boot.img");
    d.json(&[
        "volume",
        "create",
        "boot",
        "--size",
        "192M",
        "--format",
        "raw",
        "--path",
        img.to_str().unwrap(),
    ]);
    // The volume's contents: the GPT disk with the ESP (a user would
    // install an OS into it; `dd` stands in).
    std::fs::copy(&built, &img).unwrap();
    // A boot order naming a disk the VM lacks is refused when it starts.
    d.json(&[
        "vm",
        "create",
        "nodisk",
        "--memory",
        "64M",
        "--guest",
        "boot:disk",
    ]);
    let out = d.tern(&["vm", "start", "nodisk"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    d.json(&[
        "vm",
        "create",
        "linux",
        "--memory",
        "512M",
        "--disk",
        "boot",
        "--guest",
        "boot:disk",
        "--start",
    ]);
    // The kernel prints its command line after some 20 s of emulated ring
    // 0 on these hosts (more on a loaded one): the daemon's serial log of
    // the VM shows it.
    let id = d.state("linux")["id"].as_str().unwrap().to_string();
    let serial = d.state_dir().join("logs").join(format!("{id}.serial.log"));
    let t0 = Instant::now();
    let mut seen = String::new();
    while t0.elapsed() < Duration::from_secs(240) && !seen.contains(&marker) {
        std::thread::sleep(Duration::from_millis(500));
        seen = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    }
    assert!(seen.contains(&format!("Command line: {cmdline}")), "{seen}");
    eprintln!(
        "{test}: the kernel from the VM's disk printed its command line after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(d.state("linux")["state"], "running");
}
