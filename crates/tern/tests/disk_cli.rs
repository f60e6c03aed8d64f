//! `tern disk`: every subcommand end to end, human and `--json` output,
//! exit codes, with qemu-img checking the files where it is installed.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const MIB: u64 = 1 << 20;

fn tern(args: &[&str]) -> Output {
    let mut cmd = Command::new(tern_test_support::tern_exe());
    cmd.arg("disk").args(args);
    tern_test_support::procs::output(&mut cmd).expect("run tern")
}

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = tern(&a);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tern disk {args:?} failed ({:?}): {text} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // Data in some megabytes, holes in others.
    for (i, c) in v.chunks_mut(MIB as usize).enumerate() {
        if i % 3 != 1 {
            for (j, b) in c.iter_mut().enumerate() {
                *b = (j as u8)
                    .wrapping_mul(31)
                    .wrapping_add(i as u8)
                    .wrapping_add(seed)
                    | 1;
            }
        }
    }
    v
}

fn qemu_check(test: &str, img: &Path) {
    if let Some(q) = tern_test_support::tool(test, "qemu-img") {
        let out = Command::new(q)
            .args(["check", "-f", "vhdx"])
            .arg(img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu-img check: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn create_info_convert_resize_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = d.join("a.vhdx");
    let v = json(&["create", p(&img), "--size", "24M", "--block-size", "1M"]);
    assert_eq!(v["type"], "dynamic");
    assert_eq!(v["virtual_size"], 24 * MIB);
    let v = json(&["info", p(&img)]);
    assert_eq!(v["allocated_blocks"], 0);
    assert_eq!(v["block_size"], MIB);
    // Human output names the type and size.
    let out = tern(&["info", p(&img)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("dynamic VHDX") && text.contains(&(24 * MIB).to_string()),
        "{text}"
    );

    // raw -> dynamic -> fixed -> raw keeps the bytes.
    let raw = d.join("src.raw");
    let data = pattern(20 * MIB as usize, 3);
    std::fs::write(&raw, &data).unwrap();
    let dynv = d.join("dyn.vhdx");
    let v = json(&[
        "convert",
        p(&raw),
        p(&dynv),
        "--format",
        "dynamic",
        "--block-size",
        "1M",
    ]);
    assert_eq!(v["virtual_size"], 20 * MIB);
    let v = json(&["info", p(&dynv)]);
    assert_eq!(v["type"], "dynamic");
    assert!(
        v["allocated_blocks"].as_u64().unwrap() < v["total_blocks"].as_u64().unwrap(),
        "holes were allocated: {v}"
    );
    let fixed = d.join("fixed.vhdx");
    json(&["convert", p(&dynv), p(&fixed), "--format", "fixed"]);
    assert_eq!(json(&["info", p(&fixed)])["type"], "fixed");
    let back = d.join("back.raw");
    json(&["convert", p(&fixed), p(&back), "--format", "raw"]);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "round trip changed the bytes"
    );
    qemu_check("create_info_convert_resize_round_trip", &dynv);
    qemu_check("create_info_convert_resize_round_trip", &fixed);

    // Grow, then shrink: refused over data (exit 65), allowed with --discard-beyond-end.
    let v = json(&["resize", p(&dynv), "64M"]);
    assert_eq!(
        (v["old_size"].as_u64(), v["new_size"].as_u64()),
        (Some(20 * MIB), Some(64 * MIB))
    );
    let out = tern(&["resize", p(&dynv), "8M"]);
    assert_eq!(
        out.status.code(),
        Some(65),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("discard"));
    assert_eq!(json(&["info", p(&dynv)])["virtual_size"], 64 * MIB);
    json(&["resize", p(&dynv), "8M", "--discard-beyond-end"]);
    assert_eq!(json(&["info", p(&dynv)])["virtual_size"], 8 * MIB);
    qemu_check("create_info_convert_resize_round_trip", &dynv);
    let back8 = d.join("back8.raw");
    json(&["convert", p(&dynv), p(&back8), "--format", "raw"]);
    assert!(std::fs::read(&back8).unwrap() == data[..8 * MIB as usize]);

    // Raw disks resize too, with the same refusal.
    let out = tern(&["resize", p(&raw), "1M"]);
    assert_eq!(out.status.code(), Some(65));
    json(&["resize", p(&raw), "30M"]);
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 30 * MIB);
}

#[test]
fn differencing_create_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("base.raw");
    let base_data = pattern(12 * MIB as usize, 1);
    std::fs::write(&raw, &base_data).unwrap();
    let base = d.join("base.vhdx");
    json(&["convert", p(&raw), p(&base), "--format", "dynamic"]);
    let child = d.join("child.vhdx");
    let v = json(&["create", p(&child), "--parent", p(&base)]);
    assert_eq!(v["type"], "differencing");
    assert_eq!(v["virtual_size"], 12 * MIB);
    let v = json(&["info", p(&child)]);
    assert_eq!(v["parent"], p(&base));
    assert!(v["parent_locator"]["parent_linkage"].is_string(), "{v}");
    // An empty child shows the parent's bytes.
    let flat = d.join("flat.raw");
    json(&["convert", p(&child), p(&flat), "--format", "raw"]);
    assert!(std::fs::read(&flat).unwrap() == base_data);
    // Write into the child through the library, then merge with the CLI.
    let mut c = vhdx::Disk::open(&child, true).unwrap();
    c.write_at(&[0xAB; 5000], 3 * MIB - 100).unwrap();
    c.close().unwrap();
    let mut want = base_data.clone();
    want[3 * MIB as usize - 100..3 * MIB as usize + 4900].fill(0xAB);
    let v = json(&["merge", p(&child)]);
    assert_eq!(v["parent"], p(&base));
    assert!(!child.exists(), "child not removed");
    let merged = d.join("merged.raw");
    json(&["convert", p(&base), p(&merged), "--format", "raw"]);
    assert!(std::fs::read(&merged).unwrap() == want, "merge lost data");
    qemu_check("differencing_create_and_merge", &base);
    // Merging a non-differencing disk is refused.
    let out = tern(&["merge", p(&base)]);
    assert_eq!(out.status.code(), Some(65));
}

#[test]
fn check_finds_and_repairs_a_damaged_header() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.vhdx");
    json(&[
        "create",
        p(&img),
        "--size",
        "16M",
        "--type",
        "fixed",
        "--block-size",
        "4M",
    ]);
    let v = json(&["check", p(&img)]);
    assert_eq!(v["errors"], 0, "{v}");
    // Damage the second header copy and the first region table copy.
    let mut b = std::fs::read(&img).unwrap();
    b[128 * 1024 + 100] ^= 0xff;
    b[192 * 1024 + 40] ^= 0xff;
    std::fs::write(&img, &b).unwrap();
    let out = tern(&["check", p(&img), "--json"]);
    assert_eq!(out.status.code(), Some(65));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["errors"].as_u64().unwrap() >= 2, "{v}");
    let v = json(&["check", p(&img), "--repair"]);
    assert_eq!(v["errors"], 0, "{v}");
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["repaired"] == true),
        "{v}"
    );
    let v = json(&["check", p(&img)]);
    assert_eq!(v["errors"], 0, "{v}");
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    qemu_check("check_finds_and_repairs_a_damaged_header", &img);
}

#[test]
fn bad_arguments_and_missing_files_have_distinct_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.vhdx");
    assert_eq!(
        tern(&["create", p(&img), "--size", "10Q"]).status.code(),
        Some(64)
    );
    assert_eq!(
        tern(&["create", p(&img), "--size", "10M", "--block-size", "3M"])
            .status
            .code(),
        Some(64)
    );
    assert!(!img.exists(), "failed create left a file");
    assert_eq!(
        tern(&["info", p(&dir.path().join("none.vhdx"))])
            .status
            .code(),
        Some(66)
    );
    // Garbage that claims to be a VHDX: a data error, JSON says why.
    let mut junk = b"vhdxfile".to_vec();
    junk.resize(400 * 1024, 0x5a);
    std::fs::write(&img, &junk).unwrap();
    let out = tern(&["info", p(&img), "--json"]);
    assert_eq!(out.status.code(), Some(65));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("header"), "{v}");
}
