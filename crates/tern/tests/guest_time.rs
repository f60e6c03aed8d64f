//! Guest time across save and restore, end to end: a saved state whose vCPU
//! TSC is rewritten far ahead of this host's, or far behind it, restores and
//! the probe guest makes progress within a second; the guest-visible TSC and
//! kvmclock are read from a second save and checked for continuity where the
//! host honours the saved TSC (a loud SKIP names the figures where it
//! measurably does not, as KVM PVM; see `docs/saved-state.md`).

use std::mem::offset_of;
use std::path::Path;
use std::time::{Duration, Instant};

use tern_probe_abi::{Status, STATUS_ADDR};
use tern_snapshot::file;
use tern_snapshot::proto::Snapshot;
use tern_test_support::proto::requests::Save;
use tern_test_support::proto::VmState;
use tern_test_support::{tern_run, Worker};

/// IA32_TSC.
const MSR_IA32_TSC: u32 = 0x10;

/// Paced, so the guest waits on TSC deadlines all the time: 16 MiB at
/// 50 MiB/s is a pass every 0.32 s.
const WORKLOAD: &str = "probe:dirty,mib=16,rate=50+verify";

/// Starts a worker in `cwd` (the harness kills it, and whatever it
/// started, when the test ends, by panic too).
fn start(cwd: &Path, args: &[&str]) -> Worker {
    let mut cmd = tern_run();
    cmd.current_dir(cwd).args(args).args(["--serial", "null"]);
    Worker::start("guest-time", cmd, &cwd.join("ctl.sock"))
}

/// Saves into `dir`, which stops the worker.
fn save(w: &Worker, dir: &Path) {
    let r = w.call(Save { dir: dir.into() });
    assert_eq!(r.state, VmState::Saved, "{r:?}");
    let (code, stderr) = w.finish(Duration::from_secs(60));
    assert_eq!(code, 0, "save must stop the worker: {stderr}");
}

fn read_state(dir: &Path) -> Snapshot {
    file::read::<Snapshot>(&dir.join("state.bin"))
        .unwrap()
        .message
}

/// Every vCPU's saved IA32_TSC.
fn saved_tscs(snap: &Snapshot) -> Vec<u64> {
    let st = snap.state.as_ref().expect("a VM state");
    st.vcpus
        .iter()
        .map(|v| {
            v.msrs
                .iter()
                .find(|m| m.index == MSR_IA32_TSC)
                .expect("IA32_TSC is saved")
                .value
        })
        .collect()
}

/// Makes a saved state look as if it was written on a host whose TSC read
/// `shift` ticks more than this one's: every vCPU's IA32_TSC moves by
/// `shift`, and the guest's clock correction the other way (its raw
/// readings came from that host, so its own time and its deadlines stay
/// what they were). The correction is the one word of the guest's clock
/// that pairs with the host's TSC (see `probe-guest/src/clock.rs`).
/// Returns the new IA32_TSC of vCPU 0.
fn shift_saved_tsc(dir: &Path, shift: u64) -> u64 {
    let path = dir.join("state.bin");
    let mut snap = read_state(dir);
    let old = saved_tscs(&snap);
    for v in &mut snap.state.as_mut().unwrap().vcpus {
        for m in &mut v.msrs {
            if m.index == MSR_IA32_TSC {
                m.value = m.value.wrapping_add(shift);
            }
        }
    }
    file::write(&path, &snap).unwrap();
    let new = saved_tscs(&read_state(dir));
    let want: Vec<u64> = old.iter().map(|t| t.wrapping_add(shift)).collect();
    assert_eq!(new, want);

    assert_ne!(
        status_u64(dir, offset_of!(Status, clock_last)),
        0,
        "the guest's clock has a reading"
    );
    let adjust = status_u64(dir, offset_of!(Status, clock_adjust));
    write_status_u64(
        dir,
        offset_of!(Status, clock_adjust),
        adjust.wrapping_sub(shift),
    );
    new[0]
}

fn write_status_u64(dir: &Path, offset: usize, value: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("memory.bin"))
        .unwrap();
    f.write_all_at(&value.to_le_bytes(), STATUS_ADDR + offset as u64)
        .unwrap();
}

/// A u64 of the probe's status page in a saved memory image (RAM regions
/// back to back from guest-physical 0, so the page is at its address).
fn status_u64(dir: &Path, offset: usize) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(dir.join("memory.bin")).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, STATUS_ADDR + offset as u64)
        .unwrap();
    u64::from_le_bytes(b)
}

fn host_tsc() -> u64 {
    // SAFETY: `rdtsc` has no preconditions; it reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Saves a running guest, shifts its saved TSC by `shift(saved TSC, hz)`
/// (as if saved on a host that far ahead), restores it and checks it
/// progresses within a second; then saves it again and checks the
/// guest-visible TSC and kvmclock for continuity; then restores that and
/// verifies every page. `direction`: the jump the guest sees where the
/// host does not continue its TSC.
fn restore_with_tsc(test: &str, direction: &str, shift: impl Fn(u64, u64) -> u64) {
    if !tern_test_support::kvm_available(test) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let first = root.path().join("first");
    let w = start(
        root.path(),
        &["--vcpus", "2", "--memory", "64M", "--guest", WORKLOAD],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.progress().0 < 2 {
        assert!(Instant::now() < deadline, "no progress: {}", w.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    save(&w, &first);
    drop(w);

    let snap = read_state(&first);
    let st = snap.state.as_ref().unwrap();
    let hz = st.tsc_khz * 1000;
    assert!(hz > 0, "the state records the TSC frequency");
    let saved = saved_tscs(&snap)[0];
    let saved_clock = st.clock;
    let tsc = shift_saved_tsc(&first, shift(saved, hz));
    let before = (
        status_u64(&first, offset_of!(Status, generation)),
        status_u64(&first, offset_of!(Status, cursor)),
    );

    // Restore: the guest must move within a second of the worker being up.
    let started = Instant::now();
    let host_before = host_tsc();
    let w = start(root.path(), &["--restore", first.to_str().unwrap()]);
    let up = Instant::now();
    let moved = loop {
        let p = w.progress();
        if p != before {
            break up.elapsed();
        }
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "TSC {direction}: no progress after restore (at {p:?}): {}",
            w.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("TSC {direction}: the guest moved {moved:?} after the worker was up");
    assert!(
        moved < Duration::from_secs(1),
        "TSC {direction}: the guest took {moved:?} to move: {}",
        w.stderr()
    );
    // Runs a while, paced: several passes prove the pacing did not stall.
    let g = w.progress().0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.progress().0 < g + 2 {
        assert!(
            Instant::now() < deadline,
            "TSC {direction}: pacing stalled after restore: {}",
            w.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = root.path().join("second");
    save(&w, &second);
    let ran = started.elapsed();
    let host_now = host_tsc();
    let stderr = w.stderr();
    drop(w);

    // What the guest read (its raw TSC), what KVM says its TSC is, and
    // kvmclock, all at the second save.
    let guest_seen = status_u64(&second, offset_of!(Status, tsc));
    let jumps = status_u64(&second, offset_of!(Status, clock_jumps));
    let snap2 = read_state(&second);
    let kvm_tsc = saved_tscs(&snap2)[0];
    let clock2 = snap2.state.as_ref().unwrap().clock;
    let ran_ticks = u64::try_from(ran.as_nanos() * u128::from(hz) / 1_000_000_000).unwrap();
    let second_ticks = hz;
    eprintln!(
        "TSC {direction}: saved {saved}, rewritten to {tsc}; after {ran:?}: guest read {guest_seen}, \
         KVM IA32_TSC {kvm_tsc}, host {host_now}, clock jumps the guest took out {jumps}"
    );

    // kvmclock continues from the saved value: it advanced by at most the
    // time the restored VM existed, and did not go back.
    let clock_step = clock2.wrapping_sub(saved_clock) as i64;
    if clock_step >= 0 && (clock_step as u128) <= ran.as_nanos() + 1_000_000_000 {
        eprintln!("TSC {direction}: kvmclock continued (+{clock_step} ns)");
    } else {
        tern_test_support::skip(
            test,
            &format!(
                "kvmclock continuity: this host's KVM does not honour KVM_SET_CLOCK \
                 (saved {saved_clock} ns, {clock2} ns {ran:?} later)"
            ),
        );
    }

    // Continuity of the TSC where the host honours it: KVM's IA32_TSC and
    // what the guest read both lie in [target, target + time run + 1 s].
    let continued = |t: u64| {
        let d = t.wrapping_sub(tsc) as i64;
        d >= 0 && (d as u64) <= ran_ticks + second_ticks
    };
    if continued(kvm_tsc) {
        assert!(
            continued(guest_seen),
            "TSC {direction}: KVM continued the TSC ({kvm_tsc}) but the guest read {guest_seen}"
        );
        assert_eq!(jumps, 0, "TSC {direction}: the guest saw a jump: {stderr}");
    } else {
        // Not honoured: measurably so (the guest's TSC is this host's),
        // and the guest's clock took the jump out.
        // Read between the restore's start and the second save's end.
        let hosts = host_before..=host_now;
        assert!(
            hosts.contains(&kvm_tsc) && hosts.contains(&guest_seen),
            "TSC {direction}: neither continued ({tsc}) nor the host's \
             ({host_before}..{host_now}): KVM {kvm_tsc}, guest {guest_seen}"
        );
        assert!(
            jumps >= 1 && stderr.contains(&format!("clock jump direction={direction}")),
            "TSC {direction}: the guest did not report the jump it took out: {stderr}"
        );
        tern_test_support::skip(
            test,
            &format!(
                "TSC continuity: this host's KVM does not let the VMM set the guest TSC \
                 (rewritten to {tsc}, the guest read {guest_seen}, the host's {host_now}); \
                 checked instead that the probe's clock took the jump out"
            ),
        );
    }

    // The memory is intact: a last restore runs the verify step.
    let w = start(root.path(), &["--restore", second.to_str().unwrap()]);
    w.finish_and_verify();
}

#[test]
fn a_saved_tsc_far_ahead_of_the_host_restores_and_the_guest_progresses_within_a_second() {
    restore_with_tsc(
        "a_saved_tsc_far_ahead_of_the_host_restores_and_the_guest_progresses_within_a_second",
        "back",
        // Saved ten hours ahead of this host's TSC: resumed here, the guest
        // sees its TSC go back where the host cannot offset it.
        |saved, hz| host_tsc().wrapping_sub(saved).wrapping_add(36_000 * hz),
    );
}

#[test]
fn a_saved_tsc_far_behind_the_host_restores_and_the_guest_progresses_within_a_second() {
    restore_with_tsc(
        "a_saved_tsc_far_behind_the_host_restores_and_the_guest_progresses_within_a_second",
        "ahead",
        // Saved a second after its host booted (this one has been up
        // longer): the guest sees its TSC leap ahead.
        |saved, hz| hz.wrapping_sub(saved),
    );
}
