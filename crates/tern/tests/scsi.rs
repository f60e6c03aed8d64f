//! SCSI in a running VM, end to end: `tern run --scsi` with the probe
//! guest's virtio-scsi driver, the worker's SCSI requests (hot add and
//! remove, resize, DVD insert and eject), shared disks with persistent
//! reservations between two workers, and save/restore; `qemu-img` judges
//! what landed in the images, `xorriso` makes the DVD.
//!
//! Each test skips loudly (never passes silently) without /dev/kvm or a
//! host tool it needs.

#[path = "support/qemu_img.rs"]
mod qemu_img;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qemu_img::check_pattern_with_qemu_img;
use tern_probe_abi::scsi::{fnv1a64, FNV_START};
use tern_test_support::proto::requests::{
    DvdEject, DvdInsert, Save, ScsiAdd, ScsiRemove, ScsiResize,
};
use tern_test_support::proto::{ErrorCode, ScsiLunKind, ScsiLunSpec, VmState};
use tern_test_support::{tern_run, Worker};

const MIB: u64 = 1 << 20;
const EXIT: Duration = Duration::from_secs(120);
const LINE: Duration = Duration::from_secs(60);

/// `tern run` of a 64 MiB VM running probe `workload` with `args`.
fn vm(cwd: &Path, workload: &str, args: &[String]) -> Command {
    let mut cmd = tern_run();
    cmd.current_dir(cwd)
        .args(["--memory", "64M", "--serial", "null"])
        .arg("--guest")
        .arg(format!("probe:{workload}"))
        .args(args)
        .env("TERN_PROBE_IMAGE", tern_test_support::probe_guest());
    cmd
}

fn scsi(spec: String) -> [String; 2] {
    ["--scsi".into(), spec]
}

/// `key=value` tokens of the first probe line that starts with `prefix`
/// and has every word of `having`.
fn line_of(stderr: &str, prefix: &str, having: &[&str]) -> HashMap<String, String> {
    let line = stderr
        .lines()
        .filter_map(|l| l.split_once("[probe] ").map(|(_, r)| r))
        .find(|l| l.starts_with(prefix) && having.iter().all(|h| l.contains(h)))
        .unwrap_or_else(|| panic!("no '{prefix}' line with {having:?} in:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn raw(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// Converts `img` to raw with qemu-img and checks the first `len` bytes
/// hold the probe's pattern; `qemu-img check` must pass on a VHDX.
fn judge(qemu_img: &Path, img: &Path, fmt: &str, len: u64) {
    if fmt == "vhdx" {
        let st = Command::new(qemu_img)
            .args(["check", "-f", "vhdx"])
            .arg(img)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "qemu-img check {}: {}{}",
            img.display(),
            String::from_utf8_lossy(&st.stdout),
            String::from_utf8_lossy(&st.stderr)
        );
    }
    check_pattern_with_qemu_img(qemu_img, img, fmt, len);
}

#[test]
fn scsi_verify_on_raw_dynamic_and_differencing_vhdx_judged_by_qemu_img() {
    let name = "scsi_verify_on_raw_dynamic_and_differencing_vhdx_judged_by_qemu_img";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let Some(qemu_img) = tern_test_support::tool(name, "qemu-img") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = raw(dir.path(), "r.img", 8 * MIB);
    let dynamic = dir.path().join("d.vhdx");
    vhdx::create(&dynamic, &vhdx::CreateOptions::dynamic(8 * MIB))
        .unwrap()
        .close()
        .unwrap();
    let parent = dir.path().join("p.vhdx");
    vhdx::create(&parent, &vhdx::CreateOptions::dynamic(8 * MIB))
        .unwrap()
        .close()
        .unwrap();
    let child = dir.path().join("c.avhdx");
    vhdx::create(&child, &vhdx::CreateOptions::differencing(&parent))
        .unwrap()
        .close()
        .unwrap();
    let mut args = Vec::new();
    for p in [&r, &dynamic, &child] {
        args.extend(scsi(format!("disk={}", p.display())));
    }
    let w = Worker::spawn(
        "scsi-verify",
        vm(
            dir.path(),
            "scsi-verify,lun=0,mib=4+scsi-verify,lun=1,mib=4+scsi-verify,lun=2,mib=4",
            &args,
        ),
    );
    let (code, err) = w.finish(EXIT);
    assert_eq!(code, 0, "{err}");
    for lun in 0..3 {
        let l = format!("lun={lun}");
        let s = line_of(&err, "scsi-verify", &[&l, "result="]);
        assert_eq!(s["result"], "pass", "LUN {lun}: {s:?}");
        assert_eq!(s["bad_sectors"], "0");
        assert_eq!(s["bytes"], (4 * MIB).to_string());
        assert_eq!(s["capacity"], (8 * MIB).to_string());
        // Malformed and impossible commands got sense data; the VM ran on.
        let c = line_of(&err, "scsi-verify", &[&l, "sense-checks"]);
        assert_eq!(c["bad_opcode"], "5/20/00", "invalid opcode");
        assert_eq!(c["bad_lun"], "5/25/00", "LUN not supported");
        assert_eq!(c["past_end"], "5/21/00", "LBA out of range");
    }
    judge(&qemu_img, &r, "raw", 4 * MIB);
    judge(&qemu_img, &dynamic, "vhdx", 4 * MIB);
    // The parent was not written through the child (it still reads as
    // zeros, judged by qemu-img) ...
    let st = Command::new(&qemu_img)
        .args(["compare", "-f", "vhdx", "-F", "raw"])
        .arg(&parent)
        .arg(raw(dir.path(), "zeros.img", 8 * MIB))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "the parent changed: {}",
        String::from_utf8_lossy(&st.stdout)
    );
    // ... and qemu-img reads no differencing VHDX ("Operation not
    // supported"): the child is merged into its parent, which is judged.
    vhdx::merge::merge(&child).unwrap();
    judge(&qemu_img, &parent, "vhdx", 4 * MIB);
}

/// An ISO of `files` made by xorriso, or a loud SKIP.
fn iso(test: &str, dir: &Path) -> Option<PathBuf> {
    let xorriso = tern_test_support::tool(test, "xorriso")?;
    let src = dir.join("iso-src");
    std::fs::create_dir_all(&src).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(src.join("data.bin"), &body).unwrap();
    std::fs::write(src.join("README.TXT"), b"tern scsi dvd\n").unwrap();
    let out = dir.join("disc.iso");
    let st = Command::new(xorriso)
        .args(["-as", "mkisofs", "-quiet", "-V", "TERNDVD", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "xorriso: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    Some(out)
}

#[test]
fn dvd_inserted_at_run_time_is_read_and_eject_waits_for_allow() {
    let name = "dvd_inserted_at_run_time_is_read_and_eject_waits_for_allow";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(iso) = iso(name, dir.path()) else {
        return;
    };
    let bytes = std::fs::read(&iso).unwrap();
    let w = Worker::start_temp(
        "dvd",
        vm(
            dir.path(),
            "scsi-watch,lun=0,prevent=2+scsi-dvd-read,lun=0+scsi-watch,lun=0",
            &scsi("dvd=".into()),
        ),
    );
    w.wait_line("scsi-watch prevent lun=0 response=0 status=0x00", LINE);
    w.wait_line(
        "scsi-watch tur lun=0 response=0 status=0x02 sense=2/3a",
        LINE,
    );
    let r = w.call(DvdInsert {
        lun: 0,
        path: iso.clone(),
    });
    assert!(r.luns[0].medium_present, "{r:?}");
    // The guest hears of the new medium: an event and a unit attention.
    w.wait_line("scsi-watch event code=0x3 lun=0 reason=0x28", LINE);
    w.wait_line("scsi-watch ua lun=0 sense=6/28/00", LINE);
    // Ejecting while the guest prevents removal is refused.
    let e = w.refused(DvdEject {
        lun: 0,
        force: false,
    });
    assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");
    assert!(e.message.contains("prevents medium removal"), "{e:?}");
    assert!(w.status().scsi[0].medium_present);
    // The guest allows removal and reads the whole disc.
    w.probe_stop();
    w.wait_line("scsi-watch allow lun=0 response=0 status=0x00", LINE);
    let l = w.wait_line("scsi-dvd-read lun=0", LINE);
    let got = line_of(&l, "scsi-dvd-read", &["result="]);
    assert_eq!(got["result"], "pass", "{l}");
    assert_eq!(got["bytes"], bytes.len().to_string());
    assert_eq!(
        got["hash"],
        format!("{:#018x}", fnv1a64(FNV_START, &bytes)),
        "the guest read other bytes than the ISO's"
    );
    // Now the eject goes through and the guest sees the medium go.
    let r = w.call(DvdEject {
        lun: 0,
        force: false,
    });
    assert!(!r.luns[0].medium_present, "{r:?}");
    assert_eq!(r.luns[0].path, None);
    w.wait_line("scsi-watch event code=0x3 lun=0 reason=0x3a", LINE);
    // The drive answers NOT READY / MEDIUM NOT PRESENT again (a second
    // such line: the first was before the insert).
    let not_ready = "scsi-watch tur lun=0 response=0 status=0x02 sense=2/3a/01";
    tern_test_support::poll(LINE, "NOT READY after the eject", || {
        (w.stderr().matches(not_ready).count() >= 2).then_some(())
    });
    w.probe_stop();
    let (code, err) = w.finish(EXIT);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn disk_hot_added_resized_and_hot_removed_while_the_guest_runs() {
    let name = "disk_hot_added_resized_and_hot_removed_while_the_guest_runs";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = raw(dir.path(), "a.img", 4 * MIB);
    let b = raw(dir.path(), "b.img", 2 * MIB);
    let w = Worker::start_temp(
        "hotplug",
        vm(
            dir.path(),
            "scsi-watch,lun=0",
            &scsi(format!("disk={}", a.display())),
        ),
    );
    w.wait_line("scsi-watch tur lun=0 response=0 status=0x00", LINE);
    let r = w.call(ScsiAdd {
        lun: ScsiLunSpec {
            kind: ScsiLunKind::Disk,
            lun: Some(1),
            path: Some(b.clone()),
            format: None,
            read_only: false,
            shared: false,
        },
    });
    assert_eq!(r.luns.len(), 2, "{r:?}");
    assert_eq!(r.luns[1].capacity, 2 * MIB);
    w.wait_line("scsi-watch event code=0x1 lun=1 reason=0x1", LINE);
    // LUN 0 reports the LUN inventory change.
    w.wait_line("scsi-watch ua lun=0 sense=6/3f/0e", LINE);
    // A LUN number in use is refused.
    let e = w.refused(ScsiAdd {
        lun: ScsiLunSpec {
            kind: ScsiLunKind::Dvd,
            lun: Some(1),
            path: None,
            format: None,
            read_only: true,
            shared: false,
        },
    });
    assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");
    // Online resize: capacity changed, seen by the guest.
    let r = w.call(ScsiResize {
        lun: 0,
        size: 6 * MIB,
    });
    assert_eq!(r.luns[0].capacity, 6 * MIB);
    assert_eq!(std::fs::metadata(&a).unwrap().len(), 6 * MIB);
    w.wait_line("scsi-watch event code=0x3 lun=0 reason=0x92a", LINE);
    w.wait_line("scsi-watch ua lun=0 sense=6/2a/09", LINE);
    w.wait_line(
        &format!("scsi-watch capacity lun=0 bytes={}", 6 * MIB),
        LINE,
    );
    // Hot remove: the guest is told, the status no longer lists it.
    let r = w.call(ScsiRemove { lun: 1 });
    assert_eq!(r.luns.len(), 1, "{r:?}");
    w.wait_line("scsi-watch event code=0x1 lun=1 reason=0x2", LINE);
    let e = w.refused(ScsiRemove { lun: 1 });
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    // The same through the CLI: a clear error, a failing exit code; and a
    // resize through it goes through.
    let cli = |args: &[&str]| {
        Command::new(tern_test_support::tern_exe())
            .arg("worker")
            .args(args)
            .arg("--control")
            .arg(w.sock())
            .output()
            .unwrap()
    };
    let out = cli(&["scsi-remove", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("LUN 1 does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["scsi-resize", "0", "8M"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&(8 * MIB).to_string()));
    w.wait_line(
        &format!("scsi-watch capacity lun=0 bytes={}", 8 * MIB),
        LINE,
    );
    assert_eq!(w.status().scsi.len(), 1);
    w.probe_stop();
    let (code, err) = w.finish(EXIT);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn two_workers_on_one_shared_disk_run_the_fence_scsi_sequence() {
    let name = "two_workers_on_one_shared_disk_run_the_fence_scsi_sequence";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = raw(dir.path(), "shared.img", 4 * MIB);
    let node = |initiator: &str, workload: &str| {
        let mut args = scsi(format!("disk={},shared", shared.display())).to_vec();
        args.extend(["--scsi-initiator".into(), initiator.into()]);
        Worker::start_temp(initiator, vm(dir.path(), workload, &args))
    };
    // Node A (key 10) registers and reserves Write Exclusive - Registrants
    // Only; node B (key 11) registers and writes.
    let a = node(
        "node-a",
        "scsi-pr,lun=0,key=10,ops=12+scsi-watch,lun=0+scsi-pr,lun=0,key=10,other=11,ops=45",
    );
    a.wait_line("scsi-pr lun=0 ops=2 result=pass", LINE);
    let b = node(
        "node-b",
        "scsi-pr,lun=0,key=11,ops=13+scsi-watch,lun=0+scsi-pr,lun=0,key=11,ops=35",
    );
    b.wait_line("scsi-pr lun=0 ops=2 result=pass", LINE);
    let err = a.stderr();
    let r = line_of(&err, "scsi-pr", &["op=register-ignore"]);
    assert_eq!(r["status"], "0x00", "A registers: {r:?}");
    let r = line_of(&err, "scsi-pr", &["op=reserve-wero"]);
    assert_eq!(r["status"], "0x00", "A reserves: {r:?}");
    let err = b.stderr();
    let r = line_of(&err, "scsi-pr", &["op=register-ignore"]);
    assert_eq!(r["status"], "0x00", "B registers: {r:?}");
    let r = line_of(&err, "scsi-pr", &["op=write"]);
    assert_eq!(r["status"], "0x00", "a registrant writes under WERO: {r:?}");
    // A preempts and aborts B; only A's key is left.
    a.probe_stop();
    let l = a.wait_line("op=read-keys", LINE);
    assert!(l.contains("status=0x00") && l.contains("keys=0xa"), "{l}");
    assert!(!l.contains("0xb"), "B's key survived the preempt: {l}");
    let r = line_of(&a.stderr(), "scsi-pr", &["op=preempt-abort"]);
    assert_eq!(r["status"], "0x00", "{r:?}");
    // B's next write gets RESERVATION CONFLICT.
    b.probe_stop();
    for w in [&a, &b] {
        let (code, err) = w.finish(EXIT);
        assert_eq!(code, 0, "{err}");
    }
    let err = b.stderr();
    let writes: Vec<&str> = err
        .lines()
        .filter(|x| x.contains("scsi-pr lun=0 op=write key=0xb"))
        .collect();
    assert_eq!(writes.len(), 2, "{err}");
    assert!(
        writes[1].contains("status=0x18"),
        "RESERVATION CONFLICT expected: {}",
        writes[1]
    );
    // The reservation state lives beside the image for every user.
    assert!(dir.path().join("shared.img.pr").exists());
    // A VHDX cannot be shared: refused with a clear error.
    let v = dir.path().join("s.vhdx");
    vhdx::create(&v, &vhdx::CreateOptions::dynamic(4 * MIB))
        .unwrap()
        .close()
        .unwrap();
    let (code, err) = Worker::spawn(
        "vhdx-shared",
        vm(
            dir.path(),
            "hello",
            &scsi(format!("disk={},shared", v.display())),
        ),
    )
    .finish(EXIT);
    assert_ne!(code, 0);
    assert!(err.contains("cannot be opened shared"), "{err}");
}

#[test]
fn save_and_restore_keep_registrations_and_tray_state() {
    let name = "save_and_restore_keep_registrations_and_tray_state";
    if !tern_test_support::kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = raw(dir.path(), "d.img", 4 * MIB);
    // Any file of whole 2048-byte blocks serves as a medium here.
    let medium = raw(dir.path(), "m.iso", 64 * 2048);
    let mut args = scsi(format!("disk={}", d.display())).to_vec();
    args.extend(scsi(format!("dvd={},lun=1", medium.display())));
    let w = Worker::start_temp(
        "before",
        vm(
            dir.path(),
            "scsi-pr,lun=0,key=7,ops=12+scsi-watch,lun=1,prevent=1+scsi-pr,lun=0,key=7,ops=53",
            &args,
        ),
    );
    w.wait_line("scsi-watch prevent lun=1 response=0 status=0x00", LINE);
    let saved = dir.path().join("saved");
    let r = w.call(Save { dir: saved.clone() });
    assert_eq!(r.state, VmState::Saved);
    assert_eq!(w.finish(EXIT).0, 0);

    let mut cmd = tern_run();
    cmd.current_dir(dir.path())
        .args(["--serial", "null", "--restore"])
        .arg(&saved)
        .env("TERN_PROBE_IMAGE", tern_test_support::probe_guest());
    let w = Worker::start_temp("after", cmd);
    // The prevention survived: the eject is refused.
    let e = w.refused(DvdEject {
        lun: 1,
        force: false,
    });
    assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");
    let st = w.status();
    assert_eq!(st.scsi.len(), 2, "{st:?}");
    assert!(st.scsi[1].medium_present);
    // The registration and the reservation survived: the guest still
    // holds key 7 and may write under its own reservation.
    w.probe_stop();
    let (code, err) = w.finish(EXIT);
    assert_eq!(code, 0, "{err}");
    let l = line_of(&err, "scsi-pr", &["op=read-keys"]);
    assert_eq!(l["status"], "0x00", "{l:?}");
    assert_eq!(l["keys"], "0x7", "{l:?}");
    let l = line_of(&err, "scsi-pr", &["op=write"]);
    assert_eq!(l["status"], "0x00", "{l:?}");
    // A forced eject was never needed; the medium is still the one given.
    assert!(medium.exists());
}
