//! Every table Tern builds, disassembled by ACPICA's `iasl -d` and the
//! DSDT compiled back from its disassembly: any error or warning either
//! reports fails the test (the RSDP, which iasl does not take on its own,
//! is checked by the unit tests). Without `iasl` (package acpica-tools) the test
//! is a counted SKIP.

use std::path::Path;
use std::process::Command;

use tern_acpi::{build, Ged, IoApic, Machine, PmRegisters, Serial, VirtioMmio};

fn machine(vcpus: u32, windows: u32) -> Machine {
    Machine {
        vcpus,
        ioapic: IoApic {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0,
            pins: 24,
        },
        serial: Some(Serial {
            port: 0x3f8,
            gsi: 4,
        }),
        virtio_mmio: (0..windows)
            .map(|i| VirtioMmio {
                base: 0xd000_0000 + u64::from(i) * 0x1000,
                len: 0x1000,
                gsi: 16 + i,
            })
            .collect(),
        pm: PmRegisters { base: 0x600 },
        ged: Ged { gsi: 9 },
    }
}

/// Runs iasl with `args` in `dir`; returns its output, failing on a
/// non-zero status or any error/warning line.
fn iasl(iasl: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(iasl)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run iasl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl {args:?} failed:\n{text}");
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            if l.contains(" errors, ") {
                // The compiler's summary: "... 0 Errors, 0 Warnings, N Remarks".
                !l.contains(" 0 errors, 0 warnings")
            } else {
                l.contains("error") || l.contains("warning") || l.contains("invalid")
            }
        })
        .collect();
    assert!(bad.is_empty(), "iasl {args:?} reported:\n{text}");
    text
}

/// The value iasl prints for the field named `name` in a disassembled
/// data table (`NAME : VALUE`).
fn field<'a>(dsl: &'a str, name: &str) -> &'a str {
    dsl.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(" : ")?;
            k.trim_end().ends_with(name).then(|| v.trim())
        })
        .unwrap_or_else(|| panic!("no field '{name}' in:\n{dsl}"))
}

#[test]
fn iasl_disassembles_every_table_cleanly() {
    let Some(tool) = tern_test_support::tool("iasl_disassembles_every_table_cleanly", "iasl")
    else {
        return;
    };
    for (vcpus, windows) in [(1, 0), (2, 2), (4, 8)] {
        let dir = tempfile::tempdir().unwrap();
        let tables = build(&machine(vcpus, windows), 0xe0000, 0x20000).unwrap();
        // iasl takes no bare RSDP ("does not contain a valid ACPI table");
        // its checksums and pointer are the unit tests' part.
        for t in tables.tables().iter().filter(|t| &t.signature != b"RSD ") {
            let name = String::from_utf8_lossy(&t.signature).to_lowercase();
            let file = format!("{name}.dat");
            std::fs::write(dir.path().join(&file), &t.bytes).unwrap();
            iasl(&tool, dir.path(), &["-d", &file]);
            let dsl = std::fs::read_to_string(dir.path().join(format!("{name}.dsl"))).unwrap();
            match name.as_str() {
                "facp" => {
                    assert_eq!(field(&dsl, "Hardware Reduced (V5)"), "1", "{dsl}");
                    assert_eq!(field(&dsl, "CMOS RTC Not Present (V5)"), "1", "{dsl}");
                    assert_eq!(field(&dsl, "VGA Not Present (V4)"), "1", "{dsl}");
                    assert_eq!(
                        field(&dsl, "8042 Present on ports 60/64 (V2)"),
                        "0",
                        "{dsl}"
                    );
                }
                "apic" => {
                    let n = dsl.matches("Processor Local APIC").count();
                    assert_eq!(n as u32, vcpus, "{dsl}");
                }
                "dsdt" => {
                    assert_eq!(dsl.matches("\"LNRO0005\"").count() as u32, windows, "{dsl}");
                    assert!(dsl.contains("Notify (\\_SB.PWRB, 0x80)"), "{dsl}");
                    // The disassembly compiles back without complaint.
                    iasl(&tool, dir.path(), &["-p", "recompiled", "dsdt.dsl"]);
                    let again = std::fs::read(dir.path().join("recompiled.aml")).unwrap();
                    assert_eq!(&again[..4], b"DSDT");
                }
                _ => {}
            }
        }
    }
}
