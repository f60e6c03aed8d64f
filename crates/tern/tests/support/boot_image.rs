//! Boot media for the Linux tests: the machine's Debian kernel as an ELF
//! `vmlinux` (what these PVM hosts can boot), and a GPT disk image whose
//! EFI System Partition holds it with a Boot Loader Specification entry.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The machine's Debian kernel as an ELF `vmlinux` in a scratch directory
/// (which must live as long as the file is used); `None`, after a recorded
/// skip, without KVM, the kernel or the decompressor.
pub fn debian_vmlinux(test: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if !tern_test_support::kvm_available(test) {
        return None;
    }
    let kernel = tern_test_support::debian_kernel(test)?;
    let dir = tempfile::tempdir().unwrap();
    let vmlinux = dir.path().join("vmlinux");
    extract_vmlinux(test, &kernel, &vmlinux)?;
    Some((dir, vmlinux))
}

/// Writes the ELF `vmlinux` inside bzImage `kernel` to `out` (`None`, with
/// a recorded skip, when the host lacks the decompressor).
pub fn extract_vmlinux(test: &str, kernel: &Path, out: &Path) -> Option<()> {
    let image = std::fs::read(kernel).unwrap();
    let setup_size = (match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    } + 1)
        * 512;
    // payload_offset is relative to the protected-mode code.
    let off = setup_size + le32(&image, 0x248) as usize;
    let payload = &image[off..off + le32(&image, 0x24c) as usize];
    let (tool, args): (&str, &[&str]) = if payload.starts_with(b"\xfd7zXZ\0") {
        ("xz", &["-dc", "--single-stream"])
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ("zstd", &["-dc"])
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        ("gzip", &["-dc"])
    } else {
        tern_test_support::skip(test, "kernel payload compression not handled here");
        return None;
    };
    let tool = tern_test_support::tool(test, tool)?;
    let compressed = out.with_extension("payload");
    std::fs::write(&compressed, payload).unwrap();
    // The build appends the decompressed size after the stream, which gzip
    // and zstd warn about; what matters is the ELF written to `out`.
    let _ = Command::new(tool)
        .args(args)
        .stdin(File::open(&compressed).unwrap())
        .stdout(File::create(out).unwrap())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut File::open(out).unwrap(), &mut magic).unwrap();
    assert_eq!(&magic, b"\x7fELF", "no ELF vmlinux in {}", kernel.display());
    Some(())
}

/// Whether the ESP tools are here (records a skip otherwise).
pub fn esp_tools(test: &str) -> bool {
    ["sgdisk", "mkfs.vfat", "mcopy", "mmd"]
        .iter()
        .all(|t| tern_test_support::tool(test, t).is_some())
}

/// Runs a tool; panics with its error output when it fails.
pub fn tool_run(cmd: &mut Command) {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 192 MiB raw GPT disk in `dir` whose partition 1, an ESP (FAT32 made
/// with mkfs.vfat, filled with mcopy, placed at 1 MiB), holds `kernel` as
/// `/vmlinux` and `/loader/entries/tern.conf` booting it with `cmdline`.
pub fn esp_disk(dir: &Path, kernel: &Path, cmdline: &str) -> PathBuf {
    let img = dir.join("disk.img");
    File::create(&img).unwrap().set_len(192 << 20).unwrap();
    tool_run(
        Command::new("sgdisk")
            .args(["-n", "1:2048:+160M", "-t", "1:ef00"])
            .arg(&img),
    );
    let fat = dir.join("esp.fat");
    File::create(&fat).unwrap().set_len(160 << 20).unwrap();
    tool_run(Command::new("mkfs.vfat").args(["-F", "32"]).arg(&fat));
    let entry = dir.join("tern.conf");
    std::fs::write(
        &entry,
        format!("title Tern test\nlinux /vmlinux\noptions {cmdline}\n"),
    )
    .unwrap();
    for d in ["::/loader", "::/loader/entries"] {
        tool_run(Command::new("mmd").arg("-i").arg(&fat).arg(d));
    }
    tool_run(
        Command::new("mcopy")
            .arg("-i")
            .arg(&fat)
            .arg(&entry)
            .arg("::/loader/entries/tern.conf"),
    );
    tool_run(
        Command::new("mcopy")
            .arg("-i")
            .arg(&fat)
            .arg(kernel)
            .arg("::/vmlinux"),
    );
    tool_run(
        Command::new("dd")
            .arg(format!("if={}", fat.display()))
            .arg(format!("of={}", img.display()))
            .args(["bs=1M", "seek=1", "conv=notrunc", "status=none"]),
    );
    std::fs::remove_file(&fat).unwrap();
    img
}
