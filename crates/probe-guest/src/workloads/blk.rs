//! The block workloads, on the polling virtio-blk driver ([`crate::blk`]).
//!
//! - `blk-verify`: writes the pattern of [`tern_probe_abi::blk`] over the
//!   first `mib` MiB (0: all) of the disk, flushes, reads it back and
//!   reports every mismatching sector (the first few one by one).
//! - `blk-check`: the read half of `blk-verify` alone: checks that pattern
//!   over the first `mib` MiB (0: all), writing nothing (a disk that moved
//!   still holds what the guest wrote).
//! - `blk-iops`: keeps `qd` requests of `bs` bytes in flight for `secs`
//!   seconds; one report line per second and a summary, each with raw and
//!   normalized IOPS (storage QoS counts every 8 KiB as one I/O). Writes
//!   carry the same pattern, so a disk stays verifiable.
//! - `blk-capacity`: until STOP, watches ConfigGeneration and reports every
//!   capacity change (also in `Status.blk_capacity{,_changes}`).
//! - `blk-trim`: discards from `from` MiB to the end and lowers
//!   `Status.blk_in_use_end` to there.
//!
//! Every failure is one report line, `NAME disk=N result=fail reason=WORD
//! ...`, and a failed step; no wait is unbounded.
//!
//! Reports (each step's summary is its only line with `result=`; other
//! lines carry no `result=`, so a test can pick the summary by it):
//!
//! ```text
//! blk-verify disk=0 bytes=B capacity=B sectors=N bad_sectors=N write_ms=T read_ms=T result=pass
//! blk-verify mismatch disk=0 sector=S word=W expected=0x.. found=0x.. found_sector=S found_magic=0x..
//! blk-iops disk=0 second=K iops=N norm_iops=N in_flight=N
//! blk-iops disk=0 mix=M bs=B qd=N secs=S ios=N iops=N norm_iops=N errors=0 result=pass
//! blk-capacity disk=0 change=K changes_total=N capacity=B previous=B generation=G config_interrupt=0|1
//! blk-capacity disk=0 changes=N capacity=B generation=G result=pass
//! blk-trim disk=0 from=B discarded_bytes=B capacity=B in_use_end=B result=pass
//! ```
//!
//! `iops` counts requests completed OK within the `secs` window (or within
//! second K), `norm_iops` the same in normalized I/Os; requests that fail
//! are counted in `errors` and fail the step (which still runs to its end).

use super::{Ctx, MIB};
use crate::blk::{Blk, Error, Op, DATA_AREA, DATA_AREA_LEN};
use crate::report::{println, report};
use crate::{boot, clock, status};
use core::hint::spin_loop;
use core::sync::atomic::Ordering;
use tern_probe_abi::blk::{
    check_sector, fill_sector, normalized_ios, SECTOR_SIZE, WORDS_PER_SECTOR,
};
use tern_probe_abi::workload::{Mix, Step};

/// Sectors per `blk-verify` request (1 MiB).
const VERIFY_CHUNK: u64 = MIB / SECTOR_SIZE;
/// `blk-verify` requests in flight.
const VERIFY_DEPTH: usize = 4;
/// Most mismatching sectors `blk-verify` reports one by one.
const MAX_MISMATCH_REPORTS: u64 = 8;

const _: () = assert!(VERIFY_CHUNK * SECTOR_SIZE * VERIFY_DEPTH as u64 <= DATA_AREA_LEN);

/// Opens disk `disk` and publishes its capacity; reports a failure.
/// Returns the driver, the config generation and the capacity in bytes.
fn open(ctx: &Ctx, name: &str, disk: u64) -> Result<(Blk, u32, u64), ()> {
    let opened = Blk::open(boot::info(), disk, ctx.ticks_per_sec()).and_then(|mut blk| {
        let (generation, capacity) = blk.config()?;
        // The id is only shown: a device that refuses GET_ID is no failure,
        // one that does not answer it is.
        let id = match blk.id() {
            Ok(id) => id,
            Err(Error::Io { .. }) => [0; 20],
            Err(e) => return Err(e),
        };
        Ok((blk, generation, capacity, id))
    });
    match opened {
        Ok((blk, generation, capacity, id)) => {
            status::blk_capacity().store(capacity, Ordering::Release);
            let len = id.iter().position(|&b| b == 0).unwrap_or(id.len());
            let id = core::str::from_utf8(&id[..len]).unwrap_or("?");
            println!(
                "{name}: disk {disk} id='{id}' capacity={capacity} read_only={} flush={} discard={}",
                u8::from(blk.read_only()),
                u8::from(blk.has(crate::blk::feature::FLUSH)),
                u8::from(blk.has(crate::blk::feature::DISCARD))
            );
            Ok((blk, generation, capacity))
        }
        Err(e) => {
            report!("{name} disk={disk} result=fail {e}");
            Err(())
        }
    }
}

/// Milliseconds between two TSC readings (0 if the TSC rate is unknown).
fn ms_between(ctx: &Ctx, start: u64, end: u64) -> u64 {
    if ctx.tsc_hz == 0 {
        0
    } else {
        u64::try_from(u128::from(end - start) * 1000 / u128::from(ctx.tsc_hz)).unwrap_or(u64::MAX)
    }
}

/// Sector `i` of a data buffer at `addr`.
///
/// # Safety
/// `addr + 512 * (i + 1)` must lie in the driver's data area, and no
/// request in flight may use that sector of the buffer.
unsafe fn buf_sector<'a>(addr: u64, i: u64) -> &'a mut [u64; WORDS_PER_SECTOR] {
    // SAFETY: the caller's guarantees; the area is identity-mapped RAM only
    // the driver uses, 512-byte aligned per sector.
    unsafe { &mut *((addr + i * SECTOR_SIZE) as *mut [u64; WORDS_PER_SECTOR]) }
}

/// Raises `Status.blk_in_use_end` to `end` (never lowers it).
fn use_up_to(end: u64) {
    status::blk_in_use_end().fetch_max(end, Ordering::AcqRel);
}

/// Runs requests over sectors `0..total` in pieces of `chunk` sectors, at
/// most `depth` at once, slot `i` using the buffer at `DATA_AREA + i *
/// stride`. `make(sector, sectors, buf)` builds each request; `done(sector,
/// sectors, buf)` sees each one that completed OK.
fn stream(
    blk: &mut Blk,
    total: u64,
    chunk: u64,
    depth: usize,
    stride: u64,
    mut make: impl FnMut(u64, u64, u64) -> Op,
    mut done: impl FnMut(u64, u64, u64),
) -> Result<(), Error> {
    let mut pieces = [(0u64, 0u64); crate::blk::MAX_SLOTS];
    let mut next = 0u64;
    loop {
        let mut submitted = false;
        while next < total {
            let Some(slot) = blk.free_slot(depth) else {
                break;
            };
            let n = chunk.min(total - next);
            let buf = DATA_AREA + slot as u64 * stride;
            let op = make(next, n, buf);
            blk.submit(slot, op);
            pieces[slot] = (next, n);
            next += n;
            submitted = true;
        }
        if submitted {
            blk.kick();
        }
        if blk.in_flight() == 0 {
            return Ok(());
        }
        let mut d = Some(blk.wait()?);
        while let Some(c) = d {
            let c = blk.check(c)?;
            let (sector, n) = pieces[c.slot];
            done(sector, n, DATA_AREA + c.slot as u64 * stride);
            d = blk.poll()?;
        }
    }
}

/// `blk-verify` (`write`), or `blk-check` (reads only).
pub(super) fn verify(ctx: &Ctx, step: &Step, write: bool) -> bool {
    let name = if write { "blk-verify" } else { "blk-check" };
    let disk = step.disk;
    let Ok((mut blk, _, capacity)) = open(ctx, name, disk) else {
        return false;
    };
    let bytes = if step.mib == 0 {
        capacity
    } else {
        step.mib.saturating_mul(MIB)
    };
    if bytes > capacity || bytes == 0 {
        let reason = if capacity == 0 {
            "empty-disk"
        } else {
            "too-large"
        };
        report!("{name} disk={disk} bytes={bytes} capacity={capacity} result=fail reason={reason}");
        return false;
    }
    if write && blk.read_only() {
        report!("{name} disk={disk} result=fail {}", Error::ReadOnly);
        return false;
    }
    let sectors = bytes / SECTOR_SIZE;
    // Claimed before the first write: a shrink must not cut into it even
    // while it is being written.
    use_up_to(sectors * SECTOR_SIZE);

    let t0 = clock::now();
    let stride = VERIFY_CHUNK * SECTOR_SIZE;
    let written = if !write {
        Ok(())
    } else {
        stream(
            &mut blk,
            sectors,
            VERIFY_CHUNK,
            VERIFY_DEPTH,
            stride,
            |sector, n, buf| {
                for i in 0..n {
                    // SAFETY: sector i of this slot's buffer (n <= VERIFY_CHUNK,
                    // inside the data area by the assertion above); the slot is
                    // free, so no request uses it.
                    fill_sector(unsafe { buf_sector(buf, i) }, sector + i);
                }
                Op::Write {
                    sector,
                    addr: buf,
                    len: (n * SECTOR_SIZE) as u32,
                }
            },
            |_, _, _| {},
        )
        .and_then(|()| blk.flush())
    };
    if let Err(e) = written {
        report!("{name} disk={disk} phase=write result=fail {e}");
        return false;
    }
    let t1 = clock::now();

    let mut bad = 0u64;
    let read = stream(
        &mut blk,
        sectors,
        VERIFY_CHUNK,
        VERIFY_DEPTH,
        stride,
        |sector, n, buf| Op::Read {
            sector,
            addr: buf,
            len: (n * SECTOR_SIZE) as u32,
        },
        |sector, n, buf| {
            for i in 0..n {
                // SAFETY: as above; the read into this slot completed.
                let data = unsafe { buf_sector(buf, i) };
                if let Some(word) = check_sector(data, sector + i) {
                    bad += 1;
                    if bad <= MAX_MISMATCH_REPORTS {
                        report_mismatch(name, disk, sector + i, word, data);
                    }
                }
            }
        },
    );
    if let Err(e) = read {
        report!("{name} disk={disk} phase=read result=fail {e}");
        return false;
    }
    let t2 = clock::now();
    let result = if bad == 0 { "pass" } else { "fail" };
    report!(
        "{name} disk={disk} bytes={bytes} capacity={capacity} sectors={sectors} bad_sectors={bad} \
         write_ms={} read_ms={} result={result}",
        ms_between(ctx, t0, t1),
        ms_between(ctx, t1, t2)
    );
    bad == 0
}

/// Out of line: formatting is large and rare.
#[inline(never)]
fn report_mismatch(
    name: &str,
    disk: u64,
    sector: u64,
    word: usize,
    data: &[u64; WORDS_PER_SECTOR],
) {
    report!(
        "{name} mismatch disk={disk} sector={sector} word={word} expected={:#018x} \
         found={:#018x} found_sector={} found_magic={:#018x}",
        tern_probe_abi::blk::blk_pattern(sector, word),
        data[word],
        data[0],
        data[1]
    );
}

/// `blk-trim`.
pub(super) fn trim(ctx: &Ctx, step: &Step) -> bool {
    const NAME: &str = "blk-trim";
    let disk = step.disk;
    let Ok((mut blk, _, capacity)) = open(ctx, NAME, disk) else {
        return false;
    };
    let from = step.from.saturating_mul(MIB);
    if from > capacity {
        report!("{NAME} disk={disk} from={from} capacity={capacity} result=fail reason=too-large");
        return false;
    }
    if blk.read_only() {
        report!("{NAME} disk={disk} result=fail {}", Error::ReadOnly);
        return false;
    }
    if !blk.has(crate::blk::feature::DISCARD) {
        report!(
            "{NAME} disk={disk} result=fail {}",
            Error::DiscardUnsupported
        );
        return false;
    }
    let first = from / SECTOR_SIZE;
    let sectors = capacity / SECTOR_SIZE - first;
    let chunk = u64::from(blk.max_discard_sectors());
    let discarded = stream(
        &mut blk,
        sectors,
        chunk,
        8,
        0,
        |sector, n, _| Op::Discard {
            sector: first + sector,
            sectors: n as u32,
        },
        |_, _, _| {},
    )
    .and_then(|()| blk.flush());
    if let Err(e) = discarded {
        report!("{NAME} disk={disk} result=fail {e}");
        return false;
    }
    // Only now: the tail is released once it is discarded.
    status::blk_in_use_end().fetch_min(from, Ordering::AcqRel);
    report!(
        "{NAME} disk={disk} from={from} discarded_bytes={} capacity={capacity} in_use_end={} result=pass",
        sectors * SECTOR_SIZE,
        status::blk_in_use_end().load(Ordering::Acquire)
    );
    true
}

/// `blk-capacity`: polls ConfigGeneration about every millisecond (each
/// read exits to the VMM) and re-reads the capacity when it moves.
pub(super) fn capacity(ctx: &Ctx, step: &Step) -> bool {
    const NAME: &str = "blk-capacity";
    let disk = step.disk;
    let Ok((blk, mut generation, mut capacity)) = open(ctx, NAME, disk) else {
        return false;
    };
    println!("{NAME} disk={disk} watching capacity={capacity} generation={generation}");
    let period = ctx.ticks_per_sec() / 1000;
    let mut next = clock::now();
    let mut seen = 0u32;
    loop {
        if status::take_stop() {
            report!(
                "{NAME} disk={disk} changes={seen} capacity={capacity} generation={generation} result=pass"
            );
            return true;
        }
        let now = clock::now();
        // `next - now > period`: the TSC went back (a restore elsewhere).
        if now < next && next - now <= period {
            spin_loop();
            continue;
        }
        next = now + period;
        if blk.config_generation() == generation {
            continue;
        }
        let interrupt = blk.ack_config_interrupt();
        let device_status = blk.mmio().read(crate::virtio::reg::STATUS);
        if device_status & crate::virtio::status::DEVICE_NEEDS_RESET != 0 {
            report!(
                "{NAME} disk={disk} result=fail {}",
                Error::NeedsReset {
                    status: device_status
                }
            );
            return false;
        }
        let (g, cap) = match blk.config() {
            Ok(c) => c,
            Err(e) => {
                report!("{NAME} disk={disk} result=fail {e}");
                return false;
            }
        };
        generation = g;
        if cap == capacity {
            continue;
        }
        // The capacity before the count: a VMM that sees the count move
        // reads the new capacity.
        status::blk_capacity().store(cap, Ordering::Release);
        let total = status::blk_capacity_changes().fetch_add(1, Ordering::AcqRel) + 1;
        seen += 1;
        report!(
            "{NAME} disk={disk} change={seen} changes_total={total} capacity={cap} previous={capacity} \
             generation={g} config_interrupt={}",
            u8::from(interrupt)
        );
        capacity = cap;
    }
}

/// A small, fast generator for random offsets (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `blk-iops`.
pub(super) fn iops(ctx: &Ctx, step: &Step) -> bool {
    const NAME: &str = "blk-iops";
    let (disk, bs, secs, mix) = (step.disk, step.bs, step.secs, step.mix);
    let fail = |reason: core::fmt::Arguments<'_>| {
        report!(
            "{NAME} disk={disk} mix={} bs={bs} qd={} result=fail {reason}",
            mix.name(),
            step.qd
        );
        false
    };
    if ctx.tsc_hz == 0 {
        return fail(format_args!("reason=no-tsc-frequency"));
    }
    if bs % SECTOR_SIZE != 0 || bs > DATA_AREA_LEN {
        return fail(format_args!("reason=bad-bs max={DATA_AREA_LEN}"));
    }
    let Ok((mut blk, _, capacity)) = open(ctx, NAME, disk) else {
        return false;
    };
    let writes = matches!(mix, Mix::Write | Mix::RandWrite);
    let random = matches!(mix, Mix::RandRead | Mix::RandWrite);
    if writes && blk.read_only() {
        return fail(format_args!("{}", Error::ReadOnly));
    }
    let max_qd = (blk.slots() as u64).min(DATA_AREA_LEN / bs);
    if step.qd > max_qd {
        return fail(format_args!("reason=qd-too-large max={max_qd}"));
    }
    let qd = step.qd as usize;
    let blocks = capacity / bs;
    if blocks == 0 {
        return fail(format_args!("reason=too-large capacity={capacity}"));
    }
    let bs_sectors = bs / SECTOR_SIZE;
    let norm = normalized_ios(bs);
    let hz = ctx.tsc_hz;

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ disk);
    let mut cursor = 0u64;
    let (mut ios, mut ios_second, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let start = clock::now();
    let end = start + secs * hz;
    let (mut second, mut second_end) = (0u64, start + hz);
    let mut stall = blk.timeout();
    let mut failure = None;
    loop {
        let now = clock::now();
        while now >= second_end && second < secs {
            second += 1;
            report!(
                "{NAME} disk={disk} second={second} iops={ios_second} norm_iops={} in_flight={}",
                ios_second * norm,
                blk.in_flight()
            );
            ios_second = 0;
            second_end += hz;
        }
        if now >= end {
            break;
        }
        let mut submitted = false;
        while let Some(slot) = blk.free_slot(qd) {
            let block = if random {
                rng.next() % blocks
            } else {
                let b = cursor;
                cursor = (cursor + 1) % blocks;
                b
            };
            let sector = block * bs_sectors;
            let addr = DATA_AREA + slot as u64 * bs;
            let len = bs as u32;
            let op = if writes {
                for i in 0..bs_sectors {
                    // SAFETY: sector i of this free slot's buffer, inside
                    // the data area (qd * bs <= DATA_AREA_LEN, checked).
                    fill_sector(unsafe { buf_sector(addr, i) }, sector + i);
                }
                use_up_to((block + 1) * bs);
                Op::Write { sector, addr, len }
            } else {
                Op::Read { sector, addr, len }
            };
            blk.submit(slot, op);
            submitted = true;
        }
        if submitted {
            blk.kick();
        }
        let mut got = match blk.wait_until(second_end.min(end), &mut stall) {
            Ok(d) => d,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let now = clock::now();
        while let Some(d) = got {
            stall = blk.timeout();
            if let Err(e) = blk.check(d) {
                errors += 1;
                first_error.get_or_insert(e);
            } else if now < end {
                ios += 1;
                ios_second += 1;
            }
            got = match blk.poll() {
                Ok(d) => d,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
        }
        if failure.is_some() {
            break;
        }
    }
    // Let what is still in flight finish (not counted).
    while failure.is_none() && blk.in_flight() > 0 {
        match blk.wait() {
            Ok(d) => {
                if let Err(e) = blk.check(d) {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
            Err(e) => failure = Some(e),
        }
    }
    let elapsed_ms = ms_between(ctx, start, clock::now());
    if let Some(e) = failure {
        return fail(format_args!("ios={ios} elapsed_ms={elapsed_ms} {e}"));
    }
    let (iops, norm_iops) = (ios / secs, ios * norm / secs);
    match first_error {
        None => {
            report!(
                "{NAME} disk={disk} mix={} bs={bs} qd={qd} secs={secs} ios={ios} iops={iops} \
                 norm_iops={norm_iops} errors=0 result=pass",
                mix.name()
            );
            true
        }
        Some(e) => fail(format_args!("ios={ios} iops={iops} errors={errors} {e}")),
    }
}
