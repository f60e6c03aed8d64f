//! Saved states, checkpoints and export/import end to end: real `tern run`
//! workers, the probe guest's `dirty` and `verify` workloads, and every
//! damaged input refused with a clear error and nothing overwritten.
//!
//! The golden saved state and export under `tests/data/golden/v1` were
//! written by format version 1; every later Tern must restore them
//! (regenerate only with a new version directory:
//! `cargo test -p tern --test saved_state -- --ignored write_golden`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use prost::Message;
use tern_snapshot::file::{self, Header};
use tern_snapshot::proto::Snapshot;
use tern_test_support::proto::requests::{
    CheckpointCreate, CheckpointDelete, CheckpointList, CheckpointRevert, Export, Pause, Resume,
    Save,
};
use tern_test_support::proto::VmState;
use tern_test_support::{procs, tern_run, Worker};

/// `checkpoint-create NAME`, with or without memory.
fn checkpoint(name: &str, memory: bool) -> CheckpointCreate {
    CheckpointCreate {
        name: name.into(),
        memory,
    }
}

/// How long a worker may take to end by itself.
const EXIT: Duration = Duration::from_secs(120);

/// Starts `tern run ARGS` in `cwd` with a control socket there.
fn start(cwd: &Path, args: &[&str]) -> Worker {
    let mut cmd = tern_run();
    cmd.current_dir(cwd)
        .args(args)
        .args(["--serial", "null"])
        .env("TERN_PROBE_IMAGE", tern_test_support::probe_guest());
    Worker::start("worker", cmd, &cwd.join("ctl.sock"))
}

/// Every file under `dir` with its contents' hash, to prove nothing changed.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, String)> {
    let mut out = Vec::new();
    for e in walk(dir) {
        let len = std::fs::metadata(&e).unwrap().len();
        out.push((
            e.clone(),
            len,
            tern_snapshot::export::sha256_file(&e).unwrap(),
        ));
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

const WORKLOAD: &str = "probe:dirty,mib=16,rate=200+verify";

/// Runs a worker until two passes, saves it into `saved`, checks it
/// stopped by itself.
fn make_saved(cwd: &Path, saved: &Path, memory: &str, vcpus: &str) -> (u64, u64) {
    let w = start(
        cwd,
        &["--vcpus", vcpus, "--memory", memory, "--guest", WORKLOAD],
    );
    w.wait_generation(2);
    let r = w.call(Save { dir: saved.into() });
    assert_eq!(r.state, VmState::Saved);
    let (code, stderr) = w.finish(EXIT);
    assert_eq!(code, 0, "save must stop the worker: {stderr}");
    assert!(saved.join("state.bin").is_file() && saved.join("memory.bin").is_file());
    let st = file::read::<Snapshot>(&saved.join("state.bin")).unwrap();
    assert!(st.unknown.is_empty());
    (r.memory, r.memory_written)
}

#[test]
fn save_and_restore_on_a_second_host_lazy_and_eager_with_every_page_verified() {
    if !tern_test_support::kvm_available(
        "save_and_restore_on_a_second_host_lazy_and_eager_with_every_page_verified",
    ) {
        return;
    }
    let host_a = tempfile::tempdir().unwrap();
    let saved = host_a.path().join("saved");
    let (memory, written) = make_saved(host_a.path(), &saved, "96M", "2");
    assert_eq!(memory, 96 << 20);
    assert!(written > 16 << 20 && written < memory, "{written}");
    // Nothing partial is left beside it.
    let names: Vec<String> = std::fs::read_dir(host_a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("partial")), "{names:?}");
    let before = fingerprint(&saved);
    let saved_arg = saved.to_str().unwrap();

    for mode in ["--lazy", "--eager"] {
        // "Another host": another worker in another working directory.
        let host_b = tempfile::tempdir().unwrap();
        let w = start(host_b.path(), &["--restore", saved_arg, mode]);
        let (g0, _) = w.progress();
        w.wait_generation(g0 + 1);
        let verify = w.finish_and_verify();
        assert!(verify.contains("pages=4096"), "{mode}: {verify}");
        assert_eq!(
            fingerprint(&saved),
            before,
            "{mode}: restore changed the saved files"
        );
    }
}

/// `tern worker import FROM TO`, run to its end.
fn import(from: &Path, to: &Path) -> Output {
    let mut cmd = Command::new(tern_test_support::tern_exe());
    cmd.args(["worker", "import"]).arg(from).arg(to);
    procs::output(&mut cmd).unwrap()
}

fn restore_fails(saved: &Path, extra: &[&str]) -> (i32, String) {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = tern_run();
    cmd.current_dir(cwd.path())
        .args(["--serial", "null", "--restore"])
        .arg(saved)
        .args(extra);
    let (code, stderr) = Worker::spawn("restore", cmd).finish(EXIT);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (code, stderr)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Rewrites a saved state as a newer writer would: header version 2, an
/// extra top-level field 90 and a field 60 inside the VM state, and the
/// given required paths.
fn as_newer_writer(state: &Path, required: &[&str], min_reader: u32) {
    let mut snap = file::read::<Snapshot>(state).unwrap().message;
    snap.required = required.iter().map(|r| r.to_string()).collect();
    let mut vm = snap.state.take().unwrap().encode_to_vec();
    vm.extend([0xe0, 0x03, 0x01]); // field 60, varint 1
    let mut payload = snap.encode_to_vec();
    payload.push(0x12); // field 2 (state), length-delimited
    prost::encoding::encode_varint(vm.len() as u64, &mut payload);
    payload.extend(vm);
    payload.extend([0xd0, 0x05, 0x07]); // field 90, varint 7
    let bytes = file::encode(
        Header {
            version: 2,
            min_reader,
            flags: 0,
        },
        &payload,
    );
    std::fs::write(state, bytes).unwrap();
}

#[test]
fn damaged_newer_and_incomplete_saved_states_are_refused_and_left_as_they_are() {
    if !tern_test_support::kvm_available(
        "damaged_newer_and_incomplete_saved_states_are_refused_and_left_as_they_are",
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let saved = root.path().join("saved");
    make_saved(root.path(), &saved, "64M", "1");

    // Truncated memory image.
    let t = root.path().join("truncated");
    copy_dir(&saved, &t);
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(t.join("memory.bin"))
        .unwrap();
    mem.set_len((64 << 20) - 4096).unwrap();
    drop(mem);
    let before = fingerprint(&t);
    let (code, e) = restore_fails(&t, &[]);
    assert_eq!(code, 65, "{e}");
    assert!(
        e.contains("memory image has 67104768 bytes, the saved state needs exactly 67108864"),
        "{e}"
    );
    assert_eq!(fingerprint(&t), before, "a refused restore changed files");

    // A damaged state file.
    let d = root.path().join("damaged");
    copy_dir(&saved, &d);
    let mut b = std::fs::read(d.join("state.bin")).unwrap();
    let n = b.len();
    b[n - 10] ^= 0x40;
    std::fs::write(d.join("state.bin"), &b).unwrap();
    let (code, e) = restore_fails(&d, &["--eager"]);
    assert_eq!(code, 65, "{e}");
    assert!(e.contains("damaged (checksum mismatch)"), "{e}");

    // A newer format with an unknown required field.
    let r = root.path().join("newer-required");
    copy_dir(&saved, &r);
    as_newer_writer(&r.join("state.bin"), &["2.60"], 1);
    let before = fingerprint(&r);
    let (code, e) = restore_fails(&r, &[]);
    assert_eq!(code, 65, "{e}");
    assert!(
        e.contains("written by saved-state format 2 with required fields this Tern (format 1) does not know: 2.60"),
        "{e}"
    );
    assert_eq!(fingerprint(&r), before);

    // A newer format that older readers may not read at all.
    let m = root.path().join("newer-min-reader");
    copy_dir(&saved, &m);
    as_newer_writer(&m.join("state.bin"), &[], 2);
    let (code, e) = restore_fails(&m, &[]);
    assert_eq!(code, 65, "{e}");
    assert!(e.contains("needs a reader of format 2 or later"), "{e}");

    // Missing state file.
    let s = root.path().join("no-state");
    copy_dir(&saved, &s);
    std::fs::remove_file(s.join("state.bin")).unwrap();
    let (code, e) = restore_fails(&s, &[]);
    assert_eq!(code, 65, "{e}");
    assert!(e.contains("not a saved VM: no state.bin"), "{e}");

    // Saving into a directory that is not empty is refused, and the
    // worker goes on running.
    let w = start(
        root.path(),
        &["--memory", "64M", "--guest", "probe:dirty,mib=4+verify"],
    );
    w.wait_generation(1);
    let e = w.refused(Save { dir: saved });
    assert!(e.message.contains("not empty"), "{e:?}");
    assert_eq!(w.status().state, VmState::Running);
    w.finish_and_verify();
}

#[test]
fn unknown_optional_fields_from_a_newer_writer_are_reported_and_restore_goes_on() {
    if !tern_test_support::kvm_available(
        "unknown_optional_fields_from_a_newer_writer_are_reported_and_restore_goes_on",
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let saved = root.path().join("saved");
    make_saved(root.path(), &saved, "64M", "1");
    as_newer_writer(&saved.join("state.bin"), &[], 1);
    let w = start(root.path(), &["--restore", saved.to_str().unwrap()]);
    let stderr = w.stderr();
    assert!(
        stderr.contains("field 2.60 (wire type 0) is unknown to this Tern"),
        "{stderr}"
    );
    assert!(
        stderr.contains("field 90 (wire type 0) is unknown"),
        "{stderr}"
    );
    w.finish_and_verify();
}

#[test]
fn memory_checkpoints_form_a_tree_revert_exactly_and_delete_cleanly() {
    if !tern_test_support::kvm_available(
        "memory_checkpoints_form_a_tree_revert_exactly_and_delete_cleanly",
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("checkpoints");
    let w = start(
        root.path(),
        &[
            "--vcpus",
            "2",
            "--memory",
            "64M",
            "--guest",
            WORKLOAD,
            "--checkpoint-dir",
            store.to_str().unwrap(),
        ],
    );
    w.wait_generation(2);
    w.call(Pause {});
    let at_one = w.progress();
    let c1 = w.call(checkpoint("one", true));
    assert_eq!(c1.checkpoint.id, 1);
    assert_eq!(c1.checkpoint.parent, 0);
    assert_eq!(w.progress(), at_one, "a paused VM stays paused");
    w.call(Resume {});
    w.wait_generation(at_one.0 + 2);
    let c2 = w.call(checkpoint("two", true));
    assert_eq!(c2.checkpoint.parent, 1);
    w.wait_generation(at_one.0 + 3);

    // Revert to one: memory and CPU state exactly as they were.
    w.call(Pause {});
    let r = w.call(CheckpointRevert { id: 1 });
    assert_eq!(r.state, VmState::Paused);
    assert_eq!(
        w.progress(),
        at_one,
        "revert did not restore the guest's progress"
    );
    w.call(Resume {});
    w.wait_generation(at_one.0 + 1);
    // A branch: three hangs from one, beside two.
    let c3 = w.call(checkpoint("three", false));
    assert_eq!(c3.checkpoint.parent, 1);
    let list = w.call(CheckpointList {});
    let parents: Vec<(u64, u64)> = list.checkpoints.iter().map(|c| (c.id, c.parent)).collect();
    assert_eq!(parents, [(1, 0), (2, 1), (3, 1)]);
    assert_eq!(list.current, 3);

    // Deleting one re-parents its children; its files go.
    w.call(CheckpointDelete { id: 1 });
    assert!(!store.join("1").exists());
    let list = w.call(CheckpointList {});
    let parents: Vec<(u64, u64)> = list.checkpoints.iter().map(|c| (c.id, c.parent)).collect();
    assert_eq!(parents, [(2, 0), (3, 0)]);
    let e = w.refused(CheckpointRevert { id: 1 });
    assert!(e.message.contains("no checkpoint 1"), "{e:?}");

    // Revert to two (taken later on the other branch) and finish there.
    w.call(CheckpointRevert { id: 2 });
    w.finish_and_verify();
}

// ---------------------------------------------------------------------
// Golden data: states and exports written by earlier formats, restored
// by every later Tern.

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/golden");
/// Files of golden data larger than this are stored as `NAME.pages`:
/// only their non-zero 4 KiB blocks (git keeps them small).
const PAGES_ABOVE: u64 = 64 << 10;
const PAGES_MAGIC: &[u8; 8] = b"TPAGES01";

/// `NAME.pages`: magic, the file's length, then (offset, 4 KiB block) for
/// every block that is not all zero.
fn compact(path: &Path) {
    let data = std::fs::read(path).unwrap();
    let mut out = PAGES_MAGIC.to_vec();
    out.extend((data.len() as u64).to_le_bytes());
    for (i, block) in data.chunks(4096).enumerate() {
        if block.iter().any(|&b| b != 0) {
            out.extend(((i * 4096) as u64).to_le_bytes());
            let mut full = block.to_vec();
            full.resize(4096, 0);
            out.extend(full);
        }
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".pages");
    std::fs::write(name, out).unwrap();
    std::fs::remove_file(path).unwrap();
}

/// Copies golden data into `to`, expanding `NAME.pages` back to `NAME`.
fn expand_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            expand_copy(&e.path(), &to.join(&name));
        } else if let Some(orig) = name.strip_suffix(".pages") {
            let b = std::fs::read(e.path()).unwrap();
            assert_eq!(&b[..8], PAGES_MAGIC, "{}", e.path().display());
            let len = u64::from_le_bytes(b[8..16].try_into().unwrap());
            let f = std::fs::File::create(to.join(orig)).unwrap();
            f.set_len(len).unwrap();
            for rec in b[16..].chunks(8 + 4096) {
                let off = u64::from_le_bytes(rec[..8].try_into().unwrap());
                let n = (len - off).min(4096) as usize;
                std::os::unix::fs::FileExt::write_all_at(&f, &rec[8..8 + n], off).unwrap();
            }
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

fn compact_large(dir: &Path) {
    for p in walk(dir) {
        if std::fs::metadata(&p).unwrap().len() > PAGES_ABOVE {
            compact(&p);
        }
    }
}

const GOLDEN_WORKLOAD: &str = "probe:dirty,mib=1,rate=20+verify";

/// Writes this version's golden data. Run by hand, once per format
/// version, into a new directory:
/// `cargo test -p tern --test saved_state -- --ignored write_golden`.
#[test]
#[ignore]
fn write_golden() {
    let version = format!("v{}", tern_snapshot::FORMAT_VERSION);
    let out = Path::new(GOLDEN).join(&version);
    assert!(
        !out.exists(),
        "{} exists: golden data of a released format is never rewritten",
        out.display()
    );
    let work = tempfile::tempdir().unwrap();

    // A saved state.
    let saved = work.path().join("saved");
    let w = start(
        work.path(),
        &["--memory", "20M", "--guest", GOLDEN_WORKLOAD],
    );
    w.wait_generation(2);
    w.call(Save { dir: saved.clone() });
    assert_eq!(w.finish(EXIT).0, 0);

    // An export with a disk and a checkpoint.
    let disk = work.path().join("disk.vhdx");
    vhdx::create(&disk, &vhdx::CreateOptions::dynamic(4 << 20))
        .unwrap()
        .close()
        .unwrap();
    let store = work.path().join("store");
    let w = start(
        work.path(),
        &[
            "--memory",
            "20M",
            "--guest",
            GOLDEN_WORKLOAD,
            "--disk",
            &format!("path={}", disk.display()),
            "--checkpoint-dir",
            store.to_str().unwrap(),
        ],
    );
    w.wait_generation(2);
    w.call(checkpoint("golden", true));
    w.wait_generation(3);
    let export = work.path().join("export");
    w.call(Export {
        dir: export.clone(),
    });
    w.finish_and_verify();

    std::fs::create_dir_all(&out).unwrap();
    copy_dir(&saved, &out.join("saved"));
    copy_dir(&export, &out.join("export"));
    compact_large(&out);
}

/// Every golden saved state restores (lazy and eager) and verifies.
#[test]
fn golden_saved_states_of_every_format_restore_and_verify() {
    if !tern_test_support::kvm_available("golden_saved_states_of_every_format_restore_and_verify") {
        return;
    }
    let versions: Vec<PathBuf> = walk_dirs(Path::new(GOLDEN));
    assert!(!versions.is_empty(), "no golden data under {GOLDEN}");
    for v in versions {
        for mode in ["--lazy", "--eager"] {
            let host = tempfile::tempdir().unwrap();
            let saved = host.path().join("saved");
            expand_copy(&v.join("saved"), &saved);
            let w = start(host.path(), &["--restore", saved.to_str().unwrap(), mode]);
            let (g0, _) = w.progress();
            assert!(g0 >= 2, "{}: generation {g0}", v.display());
            w.wait_generation(g0 + 1);
            let verify = w.finish_and_verify();
            assert!(verify.contains("pages=256"), "{}: {verify}", v.display());
        }
    }
}

/// Every golden export imports (its manifest checked), restores with its
/// checkpoint tree, reverts to its checkpoint and verifies.
#[test]
fn golden_exports_of_every_format_import_restore_and_revert() {
    if !tern_test_support::kvm_available("golden_exports_of_every_format_import_restore_and_revert")
    {
        return;
    }
    for v in walk_dirs(Path::new(GOLDEN)) {
        let host = tempfile::tempdir().unwrap();
        let export = host.path().join("export");
        expand_copy(&v.join("export"), &export);
        // A tampered and a partial copy are refused, and nothing is made.
        for (name, damage) in [("tampered", 0u8), ("partial", 1u8)] {
            let bad = host.path().join(name);
            copy_dir(&export, &bad);
            let mem = bad.join("vm/memory.bin");
            let mut b = std::fs::read(&mem).unwrap();
            if damage == 0 {
                b[(16 << 20) + 100] ^= 1;
            } else {
                b.truncate(b.len() / 2);
            }
            std::fs::write(&mem, b).unwrap();
            let to = host.path().join(format!("{name}-vm"));
            let out = import(&bad, &to);
            let e = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(65), "{e}");
            let want = if damage == 0 {
                "vm/memory.bin does not match its checksum"
            } else {
                "vm/memory.bin has 10485760 bytes, the manifest says 20971520"
            };
            assert!(e.contains(want), "{e}");
            assert!(!to.exists());
            let (code, e) = restore_fails(&bad, &[]);
            assert_eq!(code, 65, "{e}");
        }
        let dest = host.path().join("vm");
        let out = import(&export, &dest);
        assert!(
            out.status.success(),
            "{}: {}",
            v.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let w = start(
            host.path(),
            &[
                "--restore",
                dest.to_str().unwrap(),
                "--checkpoint-dir",
                dest.join("checkpoints").to_str().unwrap(),
            ],
        );
        let list = w.call(CheckpointList {});
        assert_eq!(list.checkpoints[0].name, "golden", "{list:?}");
        let (g0, _) = w.progress();
        w.wait_generation(g0 + 1);
        w.call(CheckpointRevert { id: 1 });
        let (g1, _) = w.progress();
        assert!(g1 < g0 + 1, "revert went back: {g1} vs {g0}");
        w.wait_generation(g1 + 1);
        w.finish_and_verify();
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Step index of the probe's workload.
fn step(w: &Worker) -> u64 {
    u64::from(w.probe().step)
}

fn wait_step(w: &Worker, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while step(w) != want {
        assert!(
            Instant::now() < deadline,
            "probe never reached step {want}: {}",
            w.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn disk_path(w: &Worker) -> PathBuf {
    w.status().disks[0].path.clone()
}

/// Whether the disk image at `path` (a chain is followed) holds the
/// probe's pattern in the sector at `offset`, or zeros.
fn sector_state(path: &Path, offset: u64) -> &'static str {
    let mut d = vhdx::Disk::open(path, false).unwrap();
    let mut buf = vec![0u8; 512];
    d.read_at(&mut buf, offset).unwrap();
    if buf == tern_probe_abi::blk::sector_bytes(offset / 512) {
        "pattern"
    } else if buf.iter().all(|&b| b == 0) {
        "zero"
    } else {
        "other"
    }
}

fn new_disk(path: &Path, size: u64) {
    vhdx::create(path, &vhdx::CreateOptions::dynamic(size))
        .unwrap()
        .close()
        .unwrap();
}

/// blk-verify 1 MiB, dirty, blk-verify 8 MiB, dirty, verify.
const DISK_WORKLOAD: &str =
    "probe:blk-verify,disk=0,mib=1+dirty,mib=4,rate=50+blk-verify,disk=0,mib=8+dirty,mib=4,rate=50+verify";

/// A worker running [`DISK_WORKLOAD`] on `--disk disk` with its
/// checkpoints in `store`.
fn start_disk_workload(root: &Path, disk: &str, store: &Path) -> Worker {
    start(
        root,
        &[
            "--memory",
            "64M",
            "--guest",
            DISK_WORKLOAD,
            "--disk",
            disk,
            "--checkpoint-dir",
            store.to_str().unwrap(),
        ],
    )
}

#[test]
fn disk_checkpoint_revert_brings_disk_and_memory_back_and_delete_merges() {
    if !tern_test_support::kvm_available(
        "disk_checkpoint_revert_brings_disk_and_memory_back_and_delete_merges",
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base.vhdx");
    new_disk(&base, 32 << 20);
    let store = root.path().join("store");
    let w = start_disk_workload(root.path(), &format!("path={}", base.display()), &store);
    wait_step(&w, 1);
    w.wait_generation(1);
    w.call(Pause {});
    let at_checkpoint = w.progress();
    w.call(checkpoint("one-mib", true));
    let first_child = disk_path(&w);
    assert!(first_child.starts_with(store.canonicalize().unwrap()));
    w.call(Resume {});

    // Write more: the second blk-verify covers 8 MiB.
    w.probe_stop();
    wait_step(&w, 3);
    w.call(Pause {});
    assert_eq!(sector_state(&first_child, 4 << 20), "pattern");

    // Revert: memory, CPU and device state, and the disk as they were.
    w.call(CheckpointRevert { id: 1 });
    assert_eq!(w.progress(), at_checkpoint);
    assert_eq!(step(&w), 1);
    let reverted = disk_path(&w);
    assert_ne!(reverted, first_child);
    assert!(!first_child.exists(), "the abandoned child is deleted");
    assert_eq!(sector_state(&reverted, 0), "pattern");
    assert_eq!(sector_state(&reverted, 4 << 20), "zero");
    w.call(Resume {});

    // The guest's driver goes on with the restored queues: write 8 MiB
    // again, then delete the checkpoint while it runs.
    w.probe_stop();
    wait_step(&w, 3);
    let r = w.call(CheckpointDelete { id: 1 });
    assert_eq!(r.merged_disks, 1, "{r:?}");
    assert_eq!(
        disk_path(&w).canonicalize().unwrap(),
        base.canonicalize().unwrap()
    );
    assert!(!reverted.exists(), "the merged child is deleted");
    let stderr = w.finish_and_verify();
    let log = w.stderr();
    let passes = log
        .lines()
        .filter(|l| l.contains("blk-verify disk=0") && l.contains("result=pass"))
        .count();
    assert_eq!(passes, 3, "{stderr}\n{log}");
    // The merged data stays in the base image.
    assert_eq!(sector_state(&base, 4 << 20), "pattern");
    assert_eq!(sector_state(&base, 12 << 20), "zero");
}

#[test]
fn saved_vm_with_a_disk_continues_its_io_on_another_host_and_a_missing_parent_is_refused() {
    if !tern_test_support::kvm_available(
        "saved_vm_with_a_disk_continues_its_io_on_another_host_and_a_missing_parent_is_refused",
    ) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base.vhdx");
    new_disk(&base, 32 << 20);
    let child = root.path().join("child.avhdx");
    vhdx::create(&child, &vhdx::CreateOptions::differencing(&base))
        .unwrap()
        .close()
        .unwrap();
    let w = start(
        root.path(),
        &[
            "--memory",
            "64M",
            "--guest",
            DISK_WORKLOAD,
            "--disk",
            &format!("path={}", child.display()),
        ],
    );
    wait_step(&w, 1);
    w.wait_generation(1);
    let saved = root.path().join("saved");
    w.call(Save { dir: saved.clone() });
    assert_eq!(w.finish(EXIT).0, 0);

    let host_b = tempfile::tempdir().unwrap();
    let w = start(host_b.path(), &["--restore", saved.to_str().unwrap()]);
    assert_eq!(step(&w), 1);
    w.probe_stop();
    wait_step(&w, 3);
    w.finish_and_verify();
    assert_eq!(sector_state(&child, 4 << 20), "pattern");

    // The differencing disk's parent goes missing: refused, nothing changed.
    std::fs::rename(&base, root.path().join("moved-away.vhdx")).unwrap();
    let before = fingerprint(&saved);
    let (code, e) = restore_fails(&saved, &[]);
    assert_ne!(code, 0, "{e}");
    assert!(e.contains("child.avhdx"), "{e}");
    assert!(e.contains("parent"), "{e}");
    assert_eq!(fingerprint(&saved), before);
}

/// A VHDX whose name does not say so (`disk.img`, attached with
/// `format=vhdx`) is a VHDX to checkpoints and exports too: the checkpoint
/// is taken (not refused as a raw disk), and the export holds the disk as
/// a VHDX (flattened, named `.vhdx`), not a byte copy named `.img`.
#[test]
fn a_vhdx_named_img_checkpoints_and_exports_as_vhdx() {
    if !tern_test_support::kvm_available("a_vhdx_named_img_checkpoints_and_exports_as_vhdx") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("disk.img");
    new_disk(&base, 32 << 20);
    let store = root.path().join("store");
    let w = start_disk_workload(
        root.path(),
        &format!("path={},format=vhdx", base.display()),
        &store,
    );
    wait_step(&w, 1);
    w.call(Pause {});
    let c = w.call(checkpoint("named-img", false));
    assert_eq!(c.checkpoint.name, "named-img");
    // The VM now writes to a differencing child of disk.img.
    assert_ne!(disk_path(&w), base);
    let out = root.path().join("export");
    w.call(Export { dir: out.clone() });
    w.call(Resume {});
    let disks = out.join("disks");
    let names: Vec<String> = std::fs::read_dir(&disks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "disk0.vhdx"),
        "exported disks: {names:?}"
    );
    // Flattened: a VHDX with no parent, readable on its own.
    let exported = vhdx::Disk::open(disks.join("disk0.vhdx"), false).unwrap();
    assert!(
        exported.parent_path().is_none(),
        "the exported disk still has a parent"
    );
}
