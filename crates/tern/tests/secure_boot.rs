//! `tern boot verify` and `tern run --secure-boot` on Debian's signed
//! kernel, with `sbverify`'s verdict on the same files in the same run:
//! exit codes, the deciding rule, and the `--json` document.

use std::path::Path;
use std::process::Command;

use tern_test_support::procs::output;
use tern_test_support::{debian_kernel, skip, tern_exe, tool};

const DEBIAN_CA: &str = "/usr/share/shim/debian-uefi-ca.der";

fn sbverify_debian(dir: &Path, image: &Path) -> bool {
    let pem = dir.join("debian.pem");
    let st = Command::new("openssl")
        .args(["x509", "-inform", "der", "-in", DEBIAN_CA, "-out"])
        .arg(&pem)
        .status()
        .expect("openssl");
    assert!(st.success());
    Command::new("sbverify")
        .arg("--cert")
        .arg(&pem)
        .arg(image)
        .output()
        .expect("sbverify")
        .status
        .success()
}

#[test]
fn boot_verify_exit_codes_and_json_match_sbverify() {
    let test = "boot_verify_exit_codes_and_json_match_sbverify";
    let Some(kernel) = debian_kernel(test) else {
        return;
    };
    if tool(test, "sbverify").is_none() || tool(test, "openssl").is_none() {
        return;
    }
    if !Path::new(DEBIAN_CA).exists() {
        skip(
            test,
            "no /usr/share/shim/debian-uefi-ca.der (apt-get install shim-unsigned)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ok = output(
        Command::new(tern_exe())
            .args(["boot", "verify", "--template", "debian"])
            .arg(&kernel),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{text}");
    assert!(
        text.contains("allowed: signature 0 by \"CN=Debian Secure Boot Signer"),
        "{text}"
    );
    assert!(sbverify_debian(dir.path(), &kernel));

    let json = output(
        Command::new(tern_exe())
            .args(["boot", "verify", "--json", "--template", "debian"])
            .arg(&kernel),
    )
    .unwrap();
    let report: tern_secureboot::Report =
        serde_json::from_slice(&json.stdout).expect("typed report");
    assert_eq!(report.version, tern_secureboot::verdict::REPORT_VERSION);
    assert!(report.verdict.allowed());

    // One .text byte changed: refused (exit 1), as sbverify refuses.
    let mut bytes = std::fs::read(&kernel).unwrap();
    let text_at = {
        use object::{Object, ObjectSection};
        let f = object::File::parse(&*bytes).unwrap();
        let (start, len) = f.section_by_name(".text").unwrap().file_range().unwrap();
        (start + len / 2) as usize
    };
    bytes[text_at] ^= 0x80;
    let changed = dir.path().join("changed");
    std::fs::write(&changed, &bytes).unwrap();
    let bad = output(
        Command::new(tern_exe())
            .args(["boot", "verify", "--json", "--template", "debian"])
            .arg(&changed),
    )
    .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let report: tern_secureboot::Report = serde_json::from_slice(&bad.stdout).unwrap();
    assert!(matches!(
        report.verdict,
        tern_secureboot::Verdict::Denied {
            rule: tern_secureboot::verdict::DenyRule::NoTrustedSignature { .. }
        }
    ));
    assert!(!sbverify_debian(dir.path(), &changed));

    // Bad arguments and files.
    let usage = output(
        Command::new(tern_exe())
            .args(["boot", "verify", "--template", "nope"])
            .arg(&kernel),
    )
    .unwrap();
    assert_eq!(usage.status.code(), Some(64));
    let missing =
        output(Command::new(tern_exe()).args(["boot", "verify", "/nonexistent"])).unwrap();
    assert_eq!(missing.status.code(), Some(66));
    let bad_db = dir.path().join("bad.esl");
    std::fs::write(&bad_db, b"not a list").unwrap();
    let bad = output(
        Command::new(tern_exe())
            .args(["boot", "verify", "--db"])
            .arg(&bad_db)
            .arg(&kernel),
    )
    .unwrap();
    assert_eq!(bad.status.code(), Some(66));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not an EFI_SIGNATURE_LIST"),
        "{bad:?}"
    );
}

#[test]
fn run_refuses_an_untrusted_kernel_before_the_vm_starts() {
    let test = "run_refuses_an_untrusted_kernel_before_the_vm_starts";
    let Some(kernel) = debian_kernel(test) else {
        return;
    };
    // An empty db: refused before KVM is touched (so no /dev/kvm needed).
    let out = output(
        Command::new(tern_exe())
            .args([
                "run",
                "--memory",
                "64M",
                "--serial",
                "null",
                "--secure-boot",
                "custom",
                "--kernel",
            ])
            .arg(&kernel),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(err.contains("secure boot refuses kernel"), "{err}");
    assert!(err.contains("not in db"), "{err}");
}
