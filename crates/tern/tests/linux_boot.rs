//! End to end: `tern run --kernel` boots Debian's distribution kernel
//! (package `linux-image-amd64`, `/boot/vmlinuz-*`, or `TERN_TEST_KERNEL`)
//! and the kernel's own log on the serial port shows the exact command line
//! Tern passed and the e820 map Tern promised (`e820_map`).
//!
//! Under KVM PVM (the development and CI machines, see ARCHITECTURE.md) the
//! kernel runs at CPL 0 in an instruction emulator: it gets through
//! `setup_arch`, which prints both, and stops later; the test reads the log
//! and then kills the worker, so it checks only what PVM allows.
//!
//! The bzImage's own decompressor is too slow to run in that emulator (XZ
//! over ~60 MiB at a few million instructions per second), so on PVM the
//! kernel is booted as the ELF `vmlinux` inside the very same bzImage,
//! decompressed on the host with `xz`; the bzImage itself is booted only on
//! a host with hardware virtualization. Both go through `tern run` and the
//! same loader (`tern_vmm::boot::linux`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tern_test_support::{tern_run, Worker};

#[path = "support/boot_image.rs"]
mod boot_image;
use boot_image::{debian_vmlinux, tool_run};

use tern_vmm::boot::linux::{e820_map, parse_cmdline_log, parse_e820_log, E820Entry};
use tern_vmm::memory::ram_regions;

/// How long the kernel may take to print its memory map. Measured under PVM:
/// about 20 s for the vmlinux on an idle machine; the margin is for a loaded
/// one.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// True on KVM PVM, where guest CPL 0 code is emulated.
fn is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// What the kernel printed before it had shown its command line and the
/// whole e820 map (or the timeout passed, or the worker exited).
struct Boot {
    serial: String,
    stderr: String,
    exited: Option<std::process::ExitStatus>,
    elapsed: Duration,
}

fn boot(dir: &Path, kernel: &Path, memory: &str, cmdline: &str) -> Boot {
    boot_until(dir, kernel, &["--memory", memory], cmdline, &|text| {
        // The map is complete once a line after it has been printed.
        parse_cmdline_log(text).is_some() && e820_complete(text)
    })
}

/// Boots `kernel` with `args` until `done` holds for the serial log.
fn boot_until(
    dir: &Path,
    kernel: &Path,
    args: &[&str],
    cmdline: &str,
    done: &dyn Fn(&str) -> bool,
) -> Boot {
    let name = args.join("");
    let mut all: Vec<std::ffi::OsString> = vec!["--kernel".into(), kernel.into()];
    all.extend(args.iter().map(Into::into));
    all.extend(["--cmdline".into(), cmdline.into()]);
    run_until(dir, &name, &all, done)
}

/// Runs `tern run ARGS` (serial to a file) until `done` holds for the
/// serial log, the worker exits or [`BOOT_TIMEOUT`] passes.
fn run_until(
    dir: &Path,
    name: &str,
    args: &[std::ffi::OsString],
    done: &dyn Fn(&str) -> bool,
) -> Boot {
    let serial = dir.join(format!("serial-{name}.log"));
    let mut cmd = tern_run();
    cmd.args(args)
        .arg(format!("--serial=file:{}", serial.display()));
    // Killed when dropped, so a failing assertion leaves no VM behind.
    let worker = Worker::with_control("linux", cmd, &dir.join(format!("control-{name}.sock")));
    let start = Instant::now();
    let mut exited = None;
    let mut text = String::new();
    while start.elapsed() < BOOT_TIMEOUT {
        text = std::fs::read(&serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if done(&text) {
            break;
        }
        if let Some(st) = worker.exited() {
            exited = Some(st);
            text = std::fs::read_to_string(&serial).unwrap_or_default();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = start.elapsed();
    let stderr = worker.stderr();
    drop(worker);
    Boot {
        serial: text,
        stderr,
        exited,
        elapsed,
    }
}

/// True once a complete line follows the last "BIOS-e820:" line.
fn e820_complete(text: &str) -> bool {
    text.rfind("BIOS-e820: [mem ").is_some_and(|at| {
        text[at..]
            .split_inclusive('\n')
            .nth(1)
            .is_some_and(|l| l.ends_with('\n'))
    })
}

fn check_boot(test: &str, kernel: &Path, memory: &str, bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    // A marker no kernel or default could produce, so the line printed is
    // certainly the one passed.
    let marker = format!(
        "tern.e2e={}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let cmdline = format!(
        "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=t panic=-1 {marker}  spaces-kept"
    );
    let b = boot(dir.path(), kernel, memory, &cmdline);
    let context = format!(
        "{test}: {} with {memory} after {:.1} s, worker {:?}\n--- stderr ---\n{}\n--- serial (last 4000 bytes) ---\n{}",
        kernel.display(),
        b.elapsed.as_secs_f64(),
        b.exited,
        b.stderr,
        &b.serial[b.serial.len().saturating_sub(4000)..]
    );
    assert_eq!(
        parse_cmdline_log(&b.serial),
        Some(cmdline.as_str()),
        "kernel did not print the command line Tern passed\n{context}"
    );
    let want: Vec<E820Entry> = e820_map(&ram_regions(bytes));
    assert_eq!(
        parse_e820_log(&b.serial),
        want,
        "kernel's e820 map differs from Tern's\n{context}"
    );
    eprintln!(
        "{test}: command line and e820 map ({} entries) confirmed after {:.1} s",
        want.len(),
        b.elapsed.as_secs_f64()
    );
}

#[test]
fn debian_vmlinux_shows_cmdline_and_e820() {
    let test = "debian_vmlinux_shows_cmdline_and_e820";
    let Some((_dir, vmlinux)) = debian_vmlinux(test) else {
        return;
    };
    check_boot(test, &vmlinux, "512M", 512 << 20);
}

/// A guest larger than the space below the MMIO hole: the map must carry
/// RAM above 4 GiB. Memory is allocated lazily, so 5 GiB costs little.
#[test]
fn debian_vmlinux_e820_with_high_memory() {
    let test = "debian_vmlinux_e820_with_high_memory";
    let Some((_dir, vmlinux)) = debian_vmlinux(test) else {
        return;
    };
    check_boot(test, &vmlinux, "5G", 5 << 30);
}

#[test]
fn debian_bzimage_shows_cmdline_and_e820() {
    let test = "debian_bzimage_shows_cmdline_and_e820";
    if !tern_test_support::kvm_available(test) {
        return;
    }
    if is_pvm() {
        tern_test_support::skip(
            test,
            "KVM PVM emulates guest CPL 0: the bzImage decompressor would take minutes (the vmlinux tests boot the same kernel)",
        );
        return;
    }
    let Some(kernel) = tern_test_support::debian_kernel(test) else {
        return;
    };
    check_boot(test, &kernel, "512M", 512 << 20);
}

/// The kernel finds Tern's ACPI tables (the RSDP where `boot_params` and the
/// BIOS-area scan say), accepts their checksums and takes its CPUs and
/// IOAPIC from the MADT: under PVM the boot gets that far (`setup_arch`).
#[test]
fn debian_vmlinux_finds_the_acpi_tables() {
    let test = "debian_vmlinux_finds_the_acpi_tables";
    let Some((dir, vmlinux)) = debian_vmlinux(test) else {
        return;
    };
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=t panic=-1";
    let b = boot_until(
        dir.path(),
        &vmlinux,
        &["--memory", "512M", "--vcpus", "3"],
        cmdline,
        &|text| {
            text.find("smpboot: Allowing")
                .is_some_and(|at| text[at..].contains('\n'))
        },
    );
    let context = format!(
        "{test}: after {:.1} s, worker {:?}\n--- stderr ---\n{}\n--- serial (last 4000 bytes) ---\n{}",
        b.elapsed.as_secs_f64(),
        b.exited,
        b.stderr,
        &b.serial[b.serial.len().saturating_sub(4000)..]
    );
    for want in [
        "ACPI: RSDP 0x00000000000E0000 000024 (v02 TERN  )",
        "ACPI: XSDT 0x00000000000E0030",
        "ACPI: FACP 0x00000000000E0070",
        "ACPI: APIC ",
        "ACPI: DSDT ",
        "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23",
        "ACPI: Using ACPI (MADT) for SMP configuration information",
        "smpboot: Allowing 3 CPUs, 0 hotplug CPUs",
    ] {
        assert!(
            b.serial.contains(want),
            "no '{want}' in the kernel's log\n{context}"
        );
    }
    for bad in [
        "ACPI Error",
        "ACPI BIOS Error",
        "ACPI Warning",
        "ACPI BIOS Warning",
    ] {
        assert!(
            !b.serial.contains(bad),
            "the kernel reported '{bad}'\n{context}"
        );
    }
    eprintln!(
        "{test}: RSDP, XSDT, FADT, MADT and DSDT found, 3 CPUs from the MADT, after {:.1} s",
        b.elapsed.as_secs_f64()
    );
}

/// A command line with a marker no default could produce.
fn marked_cmdline(tag: &str) -> String {
    format!(
        "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=t panic=-1 tern.{tag}={}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

/// Boots with `args` until the kernel printed its command line; checks it
/// is `cmdline` and that the worker said where it found the kernel.
fn check_found_boot(
    test: &str,
    dir: &Path,
    args: &[std::ffi::OsString],
    cmdline: &str,
    source: &str,
) {
    let b = run_until(dir, test, args, &|t| parse_cmdline_log(t).is_some());
    let context = format!(
        "{test}: after {:.1} s, worker {:?}\n--- stderr ---\n{}\n--- serial (last 3000 bytes) ---\n{}",
        b.elapsed.as_secs_f64(),
        b.exited,
        b.stderr,
        &b.serial[b.serial.len().saturating_sub(3000)..]
    );
    assert_eq!(parse_cmdline_log(&b.serial), Some(cmdline), "{context}");
    assert!(
        b.stderr.contains(source),
        "the worker did not name the source\n{context}"
    );
    eprintln!(
        "{test}: the kernel printed the configured command line after {:.1} s",
        b.elapsed.as_secs_f64()
    );
}

#[test]
fn a_gpt_disk_boots_by_its_esp_entry_after_a_missing_dvd() {
    let test = "a_gpt_disk_boots_by_its_esp_entry_after_a_missing_dvd";
    let Some((dir, vmlinux)) = debian_vmlinux(test) else {
        return;
    };
    if !boot_image::esp_tools(test) {
        return;
    }
    let d = dir.path();
    let cmdline = marked_cmdline("bls");
    let img = boot_image::esp_disk(d, &vmlinux, &cmdline);
    let args: Vec<std::ffi::OsString> = vec![
        "--boot".into(),
        "dvd,disk".into(),
        "--disk".into(),
        format!("path={}", img.display()).into(),
    ];
    check_found_boot(
        test,
        d,
        &args,
        &cmdline,
        "partition 1 (FAT), /loader/entries/tern.conf",
    );
}

#[test]
fn a_dvd_boots_by_its_isolinux_cfg() {
    let test = "a_dvd_boots_by_its_isolinux_cfg";
    let Some((dir, vmlinux)) = debian_vmlinux(test) else {
        return;
    };
    if tern_test_support::tool(test, "xorriso").is_none() {
        return;
    }
    let d = dir.path();
    let cmdline = marked_cmdline("iso");
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("isolinux")).unwrap();
    std::fs::create_dir_all(tree.join("install.amd")).unwrap();
    std::fs::rename(&vmlinux, tree.join("install.amd/vmlinux")).unwrap();
    std::fs::write(
        tree.join("isolinux/isolinux.cfg"),
        format!("default vesamenu.c32\nlabel install\n\tmenu label ^Install\n\tkernel /install.amd/vmlinux\n\tappend {cmdline}\n"),
    )
    .unwrap();
    let iso = d.join("boot.iso");
    tool_run(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
            .arg(&iso)
            .arg(&tree),
    );
    let args: Vec<std::ffi::OsString> = vec![
        "--boot".into(),
        "dvd".into(),
        "--scsi".into(),
        format!("dvd={}", iso.display()).into(),
    ];
    check_found_boot(
        test,
        d,
        &args,
        &cmdline,
        "ISO 9660, /isolinux/isolinux.cfg entry 'install'",
    );
}
