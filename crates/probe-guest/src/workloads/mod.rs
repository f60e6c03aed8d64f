//! Running the workload: vCPU 0 runs the parsed steps in order; the other
//! vCPUs only check in (for `vcpus`) and park.

mod blk;
mod dirty;
mod net;
mod scsi;
mod touch;
mod vsock;

use crate::report::{println, report};
use crate::{boot, clock, io, status};
use core::hint::spin_loop;
use core::sync::atomic::Ordering;
use tern_probe_abi::stamp::{check_page, fill_page, PageCheck, WORDS_PER_PAGE};
use tern_probe_abi::workload::{parse, Step, WorkloadKind};
use tern_probe_abi::{
    phase, MemRegion, EXIT_BAD_WORKLOAD, EXIT_FAIL, EXIT_PASS, PAGE_SIZE, STATUS_MAGIC,
};

const MIB: u64 = 1 << 20;
/// Data pages in one MiB.
const PAGES_PER_MIB: u64 = MIB / PAGE_SIZE;

/// What every step needs to know about the machine.
struct Ctx {
    /// vCPUs the VMM started.
    vcpus: u32,
    /// Guest RAM.
    regions: &'static [MemRegion],
    /// TSC ticks per second (0 if the VMM did not know).
    tsc_hz: u64,
    /// Whether vCPU 0 already counted itself in `checked_in`.
    checked_in: bool,
}

impl Ctx {
    /// Runs one step; `false` if it failed.
    fn run(&mut self, step: &Step) -> bool {
        match step.kind {
            WorkloadKind::Hello => {
                println!("Hello from the Tern probe guest!");
                report!("hello result=pass");
                true
            }
            WorkloadKind::Vcpus => self.vcpus(),
            WorkloadKind::Dirty => dirty::dirty(self, step),
            WorkloadKind::Verify => dirty::verify(self),
            WorkloadKind::Touch => touch::touch(self, step),
            WorkloadKind::BlkVerify => blk::verify(self, step, true),
            WorkloadKind::BlkCheck => blk::verify(self, step, false),
            WorkloadKind::BlkIops => blk::iops(self, step),
            WorkloadKind::BlkCapacity => blk::capacity(self, step),
            WorkloadKind::BlkTrim => blk::trim(self, step),
            WorkloadKind::Echo => echo(),
            WorkloadKind::Net => net::net(self, step),
            WorkloadKind::ScsiVerify => scsi::verify(self, step),
            WorkloadKind::ScsiDvdRead => scsi::dvd_read(self, step),
            WorkloadKind::ScsiWatch => scsi::watch(self, step),
            WorkloadKind::ScsiPr => scsi::pr(self, step),
            WorkloadKind::Vsock => vsock::vsock(self, step),
        }
    }

    /// TSC ticks per second for timeouts (see [`clock::ticks_per_sec`]).
    fn ticks_per_sec(&self) -> u64 {
        clock::ticks_per_sec()
    }

    /// Waits until every vCPU (this one included) has checked in.
    fn vcpus(&mut self) -> bool {
        let checked_in = status::checked_in();
        if !self.checked_in {
            checked_in.fetch_add(1, Ordering::AcqRel);
            self.checked_in = true;
        }
        // No timeout: the host side of a test has one.
        let n = loop {
            let n = checked_in.load(Ordering::Acquire);
            if n >= self.vcpus {
                break n;
            }
            spin_loop();
        };
        let result = if n == self.vcpus { "pass" } else { "fail" };
        report!(
            "vcpus checked_in={n} expected={} result={result}",
            self.vcpus
        );
        n == self.vcpus
    }
}

/// vCPU 0: checks the boot info, runs every step, exits with the result.
pub fn run_primary() -> ! {
    let info = boot::info();
    if let Err(reason) = boot::validate(info) {
        report!(
            "boot result=fail magic={:#x} version={} reason={reason}",
            info.magic,
            info.version
        );
        io::exit(EXIT_BAD_WORKLOAD);
    }
    // Lets the other vCPUs read the boot info (see `run_secondary`) and tells
    // the VMM the guest is alive.
    status::magic().store(STATUS_MAGIC, Ordering::Release);

    let Some(text) = boot::workload(info) else {
        report!("workload result=fail reason=not-utf8");
        io::exit(EXIT_BAD_WORKLOAD);
    };
    println!(
        "tern probe guest: {} vCPUs, {} MiB, workload '{text}'",
        info.vcpus,
        boot::ram_bytes(info) / MIB
    );
    let steps = match parse(text) {
        Ok(steps) => steps,
        Err(e) => {
            report!("workload result=fail reason=bad-workload error={e}");
            io::exit(EXIT_BAD_WORKLOAD);
        }
    };

    let mut ctx = Ctx {
        vcpus: info.vcpus,
        regions: boot::regions(info),
        tsc_hz: info.tsc_khz.saturating_mul(1000),
        checked_in: false,
    };
    // A first reading marks the status page as written by a probe with the
    // continuous clock (the VMM paces images without one after a restore).
    clock::now();
    status::phase().store(phase::RUNNING, Ordering::Release);
    let mut passed = true;
    for (i, step) in steps.as_slice().iter().enumerate() {
        status::step().store(i as u32, Ordering::Release);
        passed &= ctx.run(step);
    }
    status::phase().store(phase::DONE, Ordering::Release);
    println!("tern probe guest: {}", if passed { "pass" } else { "fail" });
    io::exit(if passed { EXIT_PASS } else { EXIT_FAIL })
}

/// Every other vCPU: checks in if the workload has a `vcpus` step, then parks.
pub fn run_secondary(cpu: u32) -> ! {
    // vCPU 0 may start last; the boot info is known good once it wrote the
    // status magic.
    while status::magic().load(Ordering::Acquire) != STATUS_MAGIC {
        spin_loop();
    }
    let info = boot::info();
    let has_vcpus_step = boot::workload(info)
        .and_then(|text| parse(text).ok())
        .is_some_and(|steps| {
            steps
                .as_slice()
                .iter()
                .any(|s| s.kind == WorkloadKind::Vcpus)
        });
    if has_vcpus_step {
        status::checked_in().fetch_add(1, Ordering::AcqRel);
    }
    io::park(cpu)
}

/// Fails a step whose working set does not fit in guest RAM.
fn too_large(step: &str, pages: u64, available: u64) -> bool {
    report!("{step} pages={pages} available={available} result=fail reason=too-large");
    false
}

/// Guest-physical address of data page `index`, which the caller has checked
/// against [`data_pages`](tern_probe_abi::stamp::data_pages).
#[inline(always)]
fn data_page_addr(regions: &[MemRegion], index: u64) -> u64 {
    tern_probe_abi::stamp::data_page_addr(regions, index).expect("data page index within RAM")
}

/// Stamps data page `index` with (`index`, `generation`).
#[inline(always)]
fn fill_data_page(regions: &[MemRegion], index: u64, generation: u64) {
    let addr = data_page_addr(regions, index);
    // SAFETY: data pages are identity-mapped guest RAM at or above DATA_BASE,
    // above this image, its stacks and the VMM's pages, so nothing else in the
    // guest holds a reference to them. The VMM may read them concurrently;
    // the status fields that describe them are published afterwards.
    let page = unsafe { &mut *(addr as *mut [u64; WORDS_PER_PAGE]) };
    fill_page(page, index, generation);
}

/// Checks data page `index` against the stamp of `generation`.
#[inline(always)]
fn check_data_page(regions: &[MemRegion], index: u64, generation: u64) -> (u64, PageCheck) {
    let addr = data_page_addr(regions, index);
    // SAFETY: as in `fill_data_page`; only read here.
    let page = unsafe { &*(addr as *const [u64; WORDS_PER_PAGE]) };
    (addr, check_page(page, index, generation))
}

/// The UART's line status register and its data-ready bit.
const SERIAL_LSR: u16 = tern_probe_abi::PORT_SERIAL + 5;
const LSR_DATA_READY: u8 = 1;

/// `echo`: prints each line typed on the serial port back; `quit` ends.
/// Lines longer than the buffer are cut (the rest is dropped).
fn echo() -> bool {
    println!("echo: type a line ('quit' ends)");
    let mut line = [0u8; 128];
    let mut len = 0;
    let mut lines = 0u64;
    loop {
        if io::inb(SERIAL_LSR) & LSR_DATA_READY == 0 {
            spin_loop();
            continue;
        }
        match io::inb(tern_probe_abi::PORT_SERIAL) {
            b'\r' | b'\n' if len == 0 => {}
            b'\r' | b'\n' => {
                let text = &line[..len];
                io::serial_write(b"echo: ");
                io::serial_write(text);
                io::serial_write(b"\r\n");
                lines += 1;
                if text == b"quit" {
                    report!("echo lines={lines} result=pass");
                    return true;
                }
                len = 0;
            }
            b if len < line.len() => {
                line[len] = b;
                len += 1;
            }
            _ => {}
        }
    }
}
