//! The SCSI workloads, on the polling virtio-scsi driver ([`crate::scsi`]).
//!
//! - `scsi-verify`: first sends a command with an opcode no device knows,
//!   one to a LUN that does not exist and a read past the end (each must
//!   get sense data, and the VM runs on), then writes the pattern of
//!   [`tern_probe_abi::blk`] over `mib` MiB (0: all) of LUN `lun`,
//!   synchronizes the cache, reads it back and counts bad sectors.
//! - `scsi-dvd-read`: reads the whole medium of DVD drive `lun` and
//!   reports its FNV-1a hash.
//! - `scsi-watch`: until STOP, reports events and unit attentions (and a
//!   disk's new capacity after CAPACITY DATA HAS CHANGED); `prevent=1`
//!   holds PREVENT MEDIUM REMOVAL, `prevent=2` also allows it at the end.
//! - `scsi-pr`: runs `ops` ([`tern_probe_abi::scsi::PrOp`]).
//!
//! Unit attentions a command meets are reported and the command retried
//! (at most [`UA_RETRIES`] times). Reports:
//!
//! ```text
//! scsi-verify lun=0 sense-checks bad_opcode=5/20/00 bad_lun=5/25/00 past_end=5/21/00
//! scsi-verify lun=0 bytes=B capacity=B bad_sectors=N result=pass
//! scsi-dvd-read lun=1 bytes=B hash=0x... result=pass
//! scsi-watch event code=C lun=L reason=R
//! scsi-watch ua lun=L sense=6/2a/09
//! scsi-watch capacity lun=L bytes=B
//! scsi-watch tur lun=L response=0 status=0x02 sense=2/3a/01
//! scsi-watch lun=L events=N attentions=N result=pass
//! scsi-pr lun=L op=NAME key=K response=0 status=0x18 sense=0/00/00 [keys=a,b]
//! scsi-pr lun=L ops=N result=pass
//! ```

use super::{Ctx, MIB};
use crate::report::report;
use crate::scsi::{Data, Error, Outcome, Scsi, DATA_AREA, DATA_AREA_LEN};
use crate::{boot, clock, status};
use core::fmt::Write as _;
use core::ptr;
use tern_probe_abi::blk::{check_sector, fill_sector, SECTOR_SIZE, WORDS_PER_SECTOR};
use tern_probe_abi::scsi::{fnv1a64, pr_ops, PrOp, FNV_START};
use tern_probe_abi::workload::Step;

/// Most unit attentions one command is retried past.
const UA_RETRIES: u32 = 8;
/// Bytes per data transfer.
const CHUNK: u64 = MIB;
const _: () = assert!(CHUNK <= DATA_AREA_LEN);

fn open(ctx: &Ctx, name: &str, lun: u64) -> Result<(Scsi, u16), ()> {
    let Ok(l) = u16::try_from(lun) else {
        report!("{name} lun={lun} result=fail reason=bad-lun");
        return Err(());
    };
    match Scsi::open(boot::info(), ctx.ticks_per_sec()) {
        Ok(s) => Ok((s, l)),
        Err(e) => {
            report!("{name} lun={lun} result=fail {e}");
            Err(())
        }
    }
}

/// Runs a command, reporting and retrying past unit attentions.
fn run(s: &mut Scsi, name: &str, lun: u16, cdb: &[u8], data: Data) -> Result<Outcome, Error> {
    let mut left = UA_RETRIES;
    loop {
        let o = s.command(lun, cdb, data)?;
        if o.response == 0 && o.status == 2 && o.key == 6 && left > 0 {
            left -= 1;
            report!(
                "{name} ua lun={lun} sense={:x}/{:02x}/{:02x}",
                o.key,
                o.asc,
                o.ascq
            );
            continue;
        }
        return Ok(o);
    }
}

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [op, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

/// READ CAPACITY(10): (last LBA + 1, block length).
fn capacity(s: &mut Scsi, name: &str, lun: u16) -> Result<(u64, u64), Outcome> {
    let o = run(
        s,
        name,
        lun,
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        Data::In {
            addr: DATA_AREA,
            len: 8,
        },
    )
    .map_err(|_| Outcome {
        response: 0xFF,
        ..Outcome::default()
    })?;
    if !o.good() {
        return Err(o);
    }
    // SAFETY: the data area is driver memory the device finished writing.
    let b: [u8; 8] = unsafe { ptr::read_volatile(DATA_AREA as *const [u8; 8]) };
    let last = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let bl = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    Ok((u64::from(last) + 1, u64::from(bl)))
}

fn sense3(o: &Outcome) -> (u8, u8, u8) {
    (o.key, o.asc, o.ascq)
}

/// `scsi-verify`.
pub fn verify(ctx: &mut Ctx, step: &Step) -> bool {
    const NAME: &str = "scsi-verify";
    let Ok((mut s, lun)) = open(ctx, NAME, step.lun) else {
        return false;
    };
    let (blocks, bl) = match capacity(&mut s, NAME, lun) {
        Ok(c) => c,
        Err(o) => {
            report!("{NAME} lun={lun} result=fail reason=read-capacity {o}");
            return false;
        }
    };
    if bl != SECTOR_SIZE {
        report!("{NAME} lun={lun} result=fail reason=block-size block={bl}");
        return false;
    }
    // Malformed and impossible commands first: each must get sense.
    let checks = (|| -> Result<[(u8, u8, u8); 3], Error> {
        let bad_op = run(&mut s, NAME, lun, &[0xFF, 0, 0, 0, 0, 0], Data::None)?;
        let bad_lun = s.command(999, &[0, 0, 0, 0, 0, 0], Data::None)?;
        let past = run(
            &mut s,
            NAME,
            lun,
            &rw10(0x28, u32::try_from(blocks).unwrap_or(u32::MAX), 1),
            Data::In {
                addr: DATA_AREA,
                len: 512,
            },
        )?;
        Ok([sense3(&bad_op), sense3(&bad_lun), sense3(&past)])
    })();
    match checks {
        Ok([a, b, c]) => report!(
            "{NAME} lun={lun} sense-checks bad_opcode={:x}/{:02x}/{:02x} bad_lun={:x}/{:02x}/{:02x} past_end={:x}/{:02x}/{:02x}",
            a.0, a.1, a.2, b.0, b.1, b.2, c.0, c.1, c.2
        ),
        Err(e) => {
            report!("{NAME} lun={lun} result=fail phase=sense-checks {e}");
            return false;
        }
    }
    let capacity = blocks * SECTOR_SIZE;
    let bytes = if step.mib == 0 {
        capacity
    } else {
        (step.mib * MIB).min(capacity)
    };
    let sectors = bytes / SECTOR_SIZE;
    let per = CHUNK / SECTOR_SIZE;
    let start = clock::now();
    let mut sector = 0;
    while sector < sectors {
        let n = per.min(sectors - sector);
        for i in 0..n {
            // SAFETY: sector `i` of the chunk lies in the driver's data
            // area (CHUNK fits it); no command is in flight.
            let buf =
                unsafe { &mut *((DATA_AREA + i * SECTOR_SIZE) as *mut [u64; WORDS_PER_SECTOR]) };
            fill_sector(buf, sector + i);
        }
        let o = run(
            &mut s,
            NAME,
            lun,
            &rw10(0x2A, sector as u32, n as u16),
            Data::Out {
                addr: DATA_AREA,
                len: (n * SECTOR_SIZE) as u32,
            },
        );
        match o {
            Ok(o) if o.good() => {}
            Ok(o) => {
                report!("{NAME} lun={lun} result=fail phase=write sector={sector} {o}");
                return false;
            }
            Err(e) => {
                report!("{NAME} lun={lun} result=fail phase=write sector={sector} {e}");
                return false;
            }
        }
        sector += n;
    }
    match run(
        &mut s,
        NAME,
        lun,
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        Data::None,
    ) {
        Ok(o) if o.good() => {}
        Ok(o) => {
            report!("{NAME} lun={lun} result=fail phase=sync {o}");
            return false;
        }
        Err(e) => {
            report!("{NAME} lun={lun} result=fail phase=sync {e}");
            return false;
        }
    }
    let mut bad = 0u64;
    sector = 0;
    while sector < sectors {
        let n = per.min(sectors - sector);
        let o = run(
            &mut s,
            NAME,
            lun,
            &rw10(0x28, sector as u32, n as u16),
            Data::In {
                addr: DATA_AREA,
                len: (n * SECTOR_SIZE) as u32,
            },
        );
        match o {
            Ok(o) if o.good() => {}
            Ok(o) => {
                report!("{NAME} lun={lun} result=fail phase=read sector={sector} {o}");
                return false;
            }
            Err(e) => {
                report!("{NAME} lun={lun} result=fail phase=read sector={sector} {e}");
                return false;
            }
        }
        for i in 0..n {
            // SAFETY: as above; the device finished writing the chunk.
            let buf =
                unsafe { &*((DATA_AREA + i * SECTOR_SIZE) as *const [u64; WORDS_PER_SECTOR]) };
            if check_sector(buf, sector + i).is_some() {
                bad += 1;
            }
        }
        sector += n;
    }
    let ms = ms_between(ctx, start, clock::now());
    let result = if bad == 0 { "pass" } else { "fail" };
    report!(
        "{NAME} lun={lun} bytes={bytes} capacity={capacity} bad_sectors={bad} ms={ms} result={result}"
    );
    bad == 0
}

fn ms_between(ctx: &Ctx, start: u64, end: u64) -> u64 {
    if ctx.tsc_hz == 0 {
        0
    } else {
        u64::try_from(u128::from(end - start) * 1000 / u128::from(ctx.tsc_hz)).unwrap_or(u64::MAX)
    }
}

/// `scsi-dvd-read`.
pub fn dvd_read(ctx: &mut Ctx, step: &Step) -> bool {
    const NAME: &str = "scsi-dvd-read";
    let Ok((mut s, lun)) = open(ctx, NAME, step.lun) else {
        return false;
    };
    let (blocks, bl) = match capacity(&mut s, NAME, lun) {
        Ok(c) => c,
        Err(o) => {
            report!("{NAME} lun={lun} result=fail reason=read-capacity {o}");
            return false;
        }
    };
    if bl == 0 || !CHUNK.is_multiple_of(bl) {
        report!("{NAME} lun={lun} result=fail reason=block-size block={bl}");
        return false;
    }
    let per = CHUNK / bl;
    let mut h = FNV_START;
    let mut lba = 0;
    while lba < blocks {
        let n = per.min(blocks - lba);
        let len = (n * bl) as usize;
        match run(
            &mut s,
            NAME,
            lun,
            &rw10(0x28, lba as u32, n as u16),
            Data::In {
                addr: DATA_AREA,
                len: len as u32,
            },
        ) {
            Ok(o) if o.good() && o.data_len as usize == len => {}
            Ok(o) => {
                report!("{NAME} lun={lun} result=fail phase=read lba={lba} {o}");
                return false;
            }
            Err(e) => {
                report!("{NAME} lun={lun} result=fail phase=read lba={lba} {e}");
                return false;
            }
        }
        // SAFETY: the device finished writing `len` bytes of the data area.
        let data = unsafe { core::slice::from_raw_parts(DATA_AREA as *const u8, len) };
        h = fnv1a64(h, data);
        lba += n;
    }
    report!(
        "{NAME} lun={lun} bytes={} hash={h:#018x} result=pass",
        blocks * bl
    );
    true
}

/// `scsi-watch`.
pub fn watch(ctx: &mut Ctx, step: &Step) -> bool {
    const NAME: &str = "scsi-watch";
    let Ok((mut s, lun)) = open(ctx, NAME, step.lun) else {
        return false;
    };
    let prevent = |s: &mut Scsi, on: bool| -> Result<Outcome, Error> {
        run(s, NAME, lun, &[0x1E, 0, 0, 0, u8::from(on), 0], Data::None)
    };
    if step.prevent != 0 {
        match prevent(&mut s, true) {
            Ok(o) => report!("{NAME} prevent lun={lun} {o}"),
            Err(e) => {
                report!("{NAME} lun={lun} result=fail phase=prevent {e}");
                return false;
            }
        }
    }
    let (mut events, mut attentions) = (0u64, 0u64);
    let mut last_tur: Option<(u8, u8, u8, u8)> = None;
    let tick = ctx.ticks_per_sec() / 5;
    let mut next = clock::now();
    loop {
        match s.poll_event() {
            Ok(Some(e)) => {
                events += 1;
                report!(
                    "{NAME} event code={:#x} lun={} reason={:#x}",
                    e.code,
                    e.lun,
                    e.reason
                );
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                report!("{NAME} lun={lun} result=fail phase=event {e}");
                return false;
            }
        }
        if status::take_stop() {
            break;
        }
        if clock::now() < next {
            core::hint::spin_loop();
            continue;
        }
        next = clock::now() + tick;
        let o = match s.command(lun, &[0, 0, 0, 0, 0, 0], Data::None) {
            Ok(o) => o,
            Err(e) => {
                report!("{NAME} lun={lun} result=fail phase=tur {e}");
                return false;
            }
        };
        if o.response == 0 && o.status == 2 && o.key == 6 {
            attentions += 1;
            report!(
                "{NAME} ua lun={lun} sense={:x}/{:02x}/{:02x}",
                o.key,
                o.asc,
                o.ascq
            );
            if (o.asc, o.ascq) == (0x2A, 0x09) {
                if let Ok((blocks, bl)) = capacity(&mut s, NAME, lun) {
                    report!("{NAME} capacity lun={lun} bytes={}", blocks * bl);
                }
            }
            continue;
        }
        let now = (o.response, o.status, o.key, o.asc);
        if last_tur != Some(now) {
            last_tur = Some(now);
            report!("{NAME} tur lun={lun} {o}");
        }
    }
    if step.prevent == 2 {
        match prevent(&mut s, false) {
            Ok(o) => report!("{NAME} allow lun={lun} {o}"),
            Err(e) => {
                report!("{NAME} lun={lun} result=fail phase=allow {e}");
                return false;
            }
        }
    }
    report!("{NAME} lun={lun} events={events} attentions={attentions} result=pass");
    true
}

/// A PERSISTENT RESERVE OUT parameter list: reservation key, service
/// action reservation key.
fn pr_params(key: u64, sa_key: u64) {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    // SAFETY: the data area is driver memory; no command is in flight.
    unsafe { ptr::copy_nonoverlapping(p.as_ptr(), DATA_AREA as *mut u8, p.len()) };
}

fn pr_out(sa: u8, ty: u8) -> [u8; 10] {
    [0x5F, sa, ty, 0, 0, 0, 0, 0, 24, 0]
}

/// `scsi-pr`.
pub fn pr(ctx: &mut Ctx, step: &Step) -> bool {
    const NAME: &str = "scsi-pr";
    /// Write Exclusive - Registrants Only.
    const WERO: u8 = 5;
    let Some((ops, n)) = pr_ops(step.ops) else {
        report!(
            "{NAME} lun={} result=fail reason=bad-ops ops={}",
            step.lun,
            step.ops
        );
        return false;
    };
    let Ok((mut s, lun)) = open(ctx, NAME, step.lun) else {
        return false;
    };
    let (key, other) = (step.key, step.other);
    for op in &ops[..n] {
        let out = Data::Out {
            addr: DATA_AREA,
            len: 24,
        };
        let r = match op {
            PrOp::RegisterIgnore => {
                pr_params(0, key);
                run(&mut s, NAME, lun, &pr_out(6, 0), out)
            }
            PrOp::ReserveWeRo => {
                pr_params(key, 0);
                run(&mut s, NAME, lun, &pr_out(1, WERO), out)
            }
            PrOp::PreemptAbort => {
                pr_params(key, other);
                run(&mut s, NAME, lun, &pr_out(5, WERO), out)
            }
            PrOp::Write => {
                // SAFETY: sector 0 of the data area is driver memory; no
                // command is in flight.
                let buf = unsafe { &mut *(DATA_AREA as *mut [u64; WORDS_PER_SECTOR]) };
                fill_sector(buf, 1);
                run(
                    &mut s,
                    NAME,
                    lun,
                    &rw10(0x2A, 1, 1),
                    Data::Out {
                        addr: DATA_AREA,
                        len: 512,
                    },
                )
            }
            PrOp::Read => run(
                &mut s,
                NAME,
                lun,
                &rw10(0x28, 1, 1),
                Data::In {
                    addr: DATA_AREA,
                    len: 512,
                },
            ),
            PrOp::ReadKeys => run(
                &mut s,
                NAME,
                lun,
                &[0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0],
                Data::In {
                    addr: DATA_AREA,
                    len: 256,
                },
            ),
        };
        let o = match r {
            Ok(o) => o,
            Err(e) => {
                report!("{NAME} lun={lun} result=fail op={} {e}", op.name());
                return false;
            }
        };
        let mut keys = heapless_keys();
        if *op == PrOp::ReadKeys && o.good() {
            // SAFETY: the device finished writing the data area.
            let d = unsafe { core::slice::from_raw_parts(DATA_AREA as *const u8, 256) };
            let len = u32::from_be_bytes([d[4], d[5], d[6], d[7]]) as usize;
            let _ = keys.write_str(" keys=");
            for (i, k) in d[8..8 + len.min(248)].chunks_exact(8).enumerate() {
                let k = u64::from_be_bytes(k.try_into().unwrap_or([0; 8]));
                let _ = write!(keys, "{}{k:#x}", if i == 0 { "" } else { "," });
            }
        }
        report!(
            "{NAME} lun={lun} op={} key={key:#x} {o}{}",
            op.name(),
            keys.as_str()
        );
    }
    report!("{NAME} lun={lun} ops={n} result=pass");
    true
}

/// A small fixed buffer for a report's key list.
struct Line {
    buf: [u8; 256],
    len: usize,
}

fn heapless_keys() -> Line {
    Line {
        buf: [0; 256],
        len: 0,
    }
}

impl Line {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
