//! Helpers shared by the vhdx integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// Runs a command and returns (success, output).
pub fn try_run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("spawn tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Reads the whole virtual disk through `vhdx`.
pub fn read_all(d: &mut vhdx::Disk) -> Vec<u8> {
    let mut v = vec![0u8; d.virtual_size() as usize];
    // Odd-sized reads exercise block-crossing paths.
    let step = 3 * 1024 * 1024 + 4096 + 512 + 7;
    let mut pos = 0;
    while pos < v.len() {
        let n = step.min(v.len() - pos);
        d.read_at(&mut v[pos..pos + n], pos as u64).unwrap();
        pos += n;
    }
    v
}

/// First differing offset of two buffers, for readable failures.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = first_diff(got, want) {
        panic!(
            "{what}: differs at byte {i} (len {} vs {}): got {:?} want {:?}",
            got.len(),
            want.len(),
            got.get(i..(i + 8).min(got.len())),
            want.get(i..(i + 8).min(want.len()))
        );
    }
}

/// Converts a VHDX to raw with qemu-img and returns the bytes.
pub fn qemu_raw(qemu_img: &Path, vhdx: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join(format!(
        "{}.qemu.raw",
        vhdx.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&raw);
    run(Command::new(qemu_img)
        .args(["convert", "-f", "vhdx", "-O", "raw"])
        .arg(vhdx)
        .arg(&raw));
    std::fs::read(&raw).unwrap()
}

/// `qemu-img check` must report no errors.
pub fn qemu_check(qemu_img: &Path, vhdx: &Path) {
    let out = run(Command::new(qemu_img)
        .args(["check", "-f", "vhdx"])
        .arg(vhdx));
    assert!(out.contains("No errors"), "qemu-img check: {out}");
}

/// A raw image with a recognisable pattern: random runs, zero holes.
pub fn patterned(size: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut v = vec![0u8; size];
    let mut pos = 0;
    while pos < size {
        let len = (r.below(3 << 20) as usize + 1).min(size - pos);
        if r.below(3) != 0 {
            r.fill(&mut v[pos..pos + len]);
        }
        pos += len;
    }
    v
}
