//! A stable-toolchain mutation fuzzer over the same entry point as the
//! cargo-fuzz target (`vhdx::fuzzing::open_and_read`): starts from valid
//! disks made by `vhdx` (dynamic, fixed, differencing-shaped, dirty log),
//! mutates bytes, lengths and structure fields, and stops at the first
//! panic. Usage: `fuzz_open [seconds] [seed]`; prints a JSON summary.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use vhdx::{CreateOptions, MemStorage};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for opts in [
        CreateOptions::dynamic(8 << 20).block_size(1 << 20),
        CreateOptions::fixed(4 << 20)
            .block_size(1 << 20)
            .sectors(4096, 4096),
    ] {
        let mem = MemStorage::default();
        let mut d = vhdx::create::create_on(Box::new(mem.clone()), &opts, None).unwrap();
        d.write_at(&[0x5a; 70_000], 1 << 20).unwrap();
        d.flush().unwrap();
        // Dropping without close leaves the log live: a dirty-log seed.
        let dirty = mem.snapshot();
        d.close().unwrap();
        out.push(dirty);
        out.push(mem.snapshot());
    }
    // Keep seeds small: cut the unallocated tail (the interesting bytes are
    // in the first few MiB).
    out.iter_mut().for_each(|s| s.truncate(6 << 20));
    out
}

/// Offsets where the structures live, to aim mutations at.
const HOT: [u64; 8] = [
    0,
    64 << 10,
    128 << 10,
    192 << 10,
    256 << 10,
    1 << 20,
    2 << 20,
    3 << 20,
];

fn mutate(r: &mut Rng, s: &mut Vec<u8>) {
    for _ in 0..1 + r.below(8) {
        let base = if r.below(4) == 0 {
            r.below(s.len() as u64)
        } else {
            HOT[r.below(8) as usize] + r.below(4096)
        };
        let at = (base as usize).min(s.len().saturating_sub(8));
        match r.below(6) {
            0 => s[at] ^= 1 << r.below(8),
            1 => s[at] = r.next() as u8,
            2 => s[at..at + 8].copy_from_slice(&r.next().to_le_bytes()),
            3 => s[at..at + 4].copy_from_slice(&[0xff; 4]),
            4 => {
                let n = r.below(s.len() as u64) as usize;
                s.truncate(n.max(1));
            }
            _ => s[at..at + 8].copy_from_slice(&(r.below(1 << 20) << 12).to_le_bytes()),
        }
        if s.len() < 8 {
            break;
        }
    }
    // Often fix the checksum of a mutated header or region table, so the
    // mutation reaches the parsers behind it.
    if r.below(2) == 0 {
        for (off, len) in [
            (64usize << 10, 4096usize),
            (128 << 10, 4096),
            (192 << 10, 65536),
            (256 << 10, 65536),
        ] {
            if s.len() >= off + len {
                let b = &mut s[off..off + len];
                b[4..8].fill(0);
                let c = vhdx::crc::crc32c(b);
                b[4..8].copy_from_slice(&c.to_le_bytes());
            }
        }
    }
}

/// The input being run, for the panic hook (release builds abort on panic).
static CURRENT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn main() {
    std::panic::set_hook(Box::new(|info| {
        let path = "/tmp/vhdx-fuzz-crash.bin";
        if let Ok(c) = CURRENT.try_lock() {
            let _ = std::fs::write(path, &*c);
        }
        eprintln!("panic: {info}; input saved to {path}");
    }));
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let mut r = Rng(args.next().and_then(|a| a.parse().ok()).unwrap_or(0x5eed) | 1);
    let seeds = seeds();
    let start = Instant::now();
    let (mut execs, mut opened) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        let mut s = seeds[r.below(seeds.len() as u64) as usize].clone();
        mutate(&mut r, &mut s);
        CURRENT.lock().unwrap().clone_from(&s);
        match std::panic::catch_unwind(move || vhdx::fuzzing::open_and_read(&s)) {
            Ok(o) => opened += o as u64,
            Err(_) => std::process::exit(1),
        }
        execs += 1;
    }
    println!(
        "{{\"fuzzer\":\"fuzz_open\",\"seconds\":{},\"executions\":{execs},\"opened\":{opened},\"panics\":0}}",
        start.elapsed().as_secs()
    );
}
