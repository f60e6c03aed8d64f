//! Boot sources found in images made by the real tools: `sgdisk` and
//! `mkfs.vfat`/`mcopy` (an ESP with BLS entries), `mkfs.ext4 -d` (a
//! `/boot` with grub.cfg) and `xorriso` (ISOs with grub.cfg and with a
//! Debian-installer-style isolinux.cfg). Each test skips loudly without
//! its tools.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tern_bootsrc::{from_disk, from_dvd, BootError, Limits, Medium};
use tern_test_support::tool;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tools(test: &str, names: &[&str]) -> bool {
    names.iter().all(|t| tool(test, t).is_some())
}

fn medium(p: &Path) -> Arc<dyn Medium> {
    Arc::new(std::fs::File::open(p).unwrap())
}

/// A 64 MiB GPT disk: partition 1 an ESP (FAT, 32 MiB), partition 2 Linux.
fn gpt_disk(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("sgdisk")
        .args([
            "-n",
            "1:2048:+32M",
            "-t",
            "1:ef00",
            "-n",
            "2:0:0",
            "-t",
            "2:8300",
        ])
        .arg(&img));
    img
}

fn esp_fat(dir: &Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    let fat = dir.join("esp.fat");
    std::fs::File::create(&fat)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    run(Command::new("mkfs.vfat").args(["-F", "16"]).arg(&fat));
    for (path, data) in files {
        let local = dir.join("f");
        std::fs::write(&local, data).unwrap();
        let mut parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        parts.pop();
        let mut d = String::new();
        for p in parts {
            d.push('/');
            d.push_str(p);
            let _ = Command::new("mmd")
                .arg("-i")
                .arg(&fat)
                .arg(format!("::{d}"))
                .output();
        }
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&fat)
            .arg(&local)
            .arg(format!("::{path}")));
    }
    fat
}

/// Writes `part` into `img` at byte `at`.
fn place(img: &Path, part: &Path, at: u64) {
    run(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", img.display()))
        .args(["bs=1M", "conv=notrunc", "status=none"])
        .arg(format!("seek={}", at >> 20)));
}

#[test]
fn esp_with_bls_entries_boots_the_default_entry() {
    let test = "esp_with_bls_entries_boots_the_default_entry";
    if !tools(test, &["sgdisk", "mkfs.vfat", "mcopy", "mmd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_disk(dir.path());
    let fat = esp_fat(
        dir.path(),
        &[
            ("/loader/loader.conf", b"timeout 3\ndefault old*\n"),
            ("/loader/entries/new-6.10.conf", b"title New\nlinux /new/vmlinuz\noptions root=/dev/vda2 new\n"),
            ("/loader/entries/old-6.1.conf", b"title Old\nlinux /old/vmlinuz\ninitrd /old/a.img\ninitrd /old/b.img\noptions root=/dev/vda2 old\n"),
            ("/new/vmlinuz", b"NEWKERNEL"),
            ("/old/vmlinuz", b"OLDKERNEL"),
            ("/old/a.img", b"AAA"),
            ("/old/b.img", b"BBB"),
        ],
    );
    place(&img, &fat, 1 << 20);
    let b = from_disk(medium(&img), Limits::default()).unwrap();
    assert_eq!(b.kernel, b"OLDKERNEL");
    assert_eq!(b.initrd, b"AAABBB");
    assert_eq!(b.cmdline, "root=/dev/vda2 old");
    assert!(
        b.source.contains("partition 1 (FAT)") && b.source.contains("old-6.1.conf"),
        "{}",
        b.source
    );
    // A default whose kernel is missing falls through to the next entry.
    let fat = esp_fat(
        dir.path(),
        &[
            ("/loader/loader.conf", b"default gone*\n"),
            ("/loader/entries/gone.conf", b"linux /nothere\n"),
            ("/loader/entries/ok.conf", b"linux /k\noptions x=1\n"),
            ("/k", b"K"),
        ],
    );
    place(&img, &fat, 1 << 20);
    let b = from_disk(medium(&img), Limits::default()).unwrap();
    assert_eq!(
        (b.kernel.as_slice(), b.cmdline.as_str()),
        (&b"K"[..], "x=1")
    );
    // A kernel over the limit is refused by name.
    let e = from_disk(medium(&img), Limits { max_boot_bytes: 0 }).unwrap_err();
    let BootError::NothingBootable { tried } = &e else {
        panic!("{e}")
    };
    assert!(
        tried
            .iter()
            .any(|t| t.contains("/k is 1 bytes, more than the 0 allowed")),
        "{e}"
    );
}

#[test]
fn ext4_boot_with_grub_cfg() {
    let test = "ext4_boot_with_grub_cfg";
    if !tools(test, &["sgdisk", "mkfs.ext4", "mkfs.vfat"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = gpt_disk(dir.path());
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("boot/grub")).unwrap();
    std::fs::write(root.join("boot/vmlinuz-6.1.0-18-amd64"), b"DEBIANKERNEL").unwrap();
    std::fs::write(root.join("boot/initrd.img-6.1.0-18-amd64"), b"INITRD").unwrap();
    std::fs::write(
        root.join("boot/grub/grub.cfg"),
        "set default=\"0\"\ninsmod part_gpt\nmenuentry 'Debian GNU/Linux' --class debian {\n\tsearch --no-floppy --fs-uuid --set=root abcd\n\tlinux\t/boot/vmlinuz-6.1.0-18-amd64 root=/dev/vda2 ro quiet\n\tinitrd\t/boot/initrd.img-6.1.0-18-amd64\n}\n",
    )
    .unwrap();
    let ext = dir.path().join("root.ext4");
    std::fs::File::create(&ext)
        .unwrap()
        .set_len(31 << 20)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&ext));
    // An empty ESP first: nothing there, then the Linux partition.
    let fat = dir.path().join("esp.fat");
    std::fs::File::create(&fat)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    run(Command::new("mkfs.vfat").args(["-F", "16"]).arg(&fat));
    place(&img, &fat, 1 << 20);
    place(&img, &ext, 33 << 20);
    let b = from_disk(medium(&img), Limits::default()).unwrap();
    assert_eq!(b.kernel, b"DEBIANKERNEL");
    assert_eq!(b.initrd, b"INITRD");
    assert_eq!(b.cmdline, "root=/dev/vda2 ro quiet");
    assert!(b.source.contains("partition 2 (ext4)"), "{}", b.source);
}

#[test]
fn isos_with_grub_and_isolinux() {
    let test = "isos_with_grub_and_isolinux";
    if !tools(test, &["xorriso"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("isolinux")).unwrap();
    std::fs::create_dir_all(tree.join("install.amd")).unwrap();
    std::fs::write(tree.join("install.amd/vmlinuz"), b"INSTALLER").unwrap();
    std::fs::write(tree.join("install.amd/initrd.gz"), b"INITRDGZ").unwrap();
    std::fs::write(
        tree.join("isolinux/isolinux.cfg"),
        "path \ninclude menu.cfg\ndefault vesamenu.c32\nprompt 0\ntimeout 0\n",
    )
    .unwrap();
    std::fs::write(
        tree.join("isolinux/menu.cfg"),
        "menu hshift 4\ninclude txt.cfg\n",
    )
    .unwrap();
    std::fs::write(
        tree.join("isolinux/txt.cfg"),
        "default install\nlabel install\n\tmenu label ^Install\n\tkernel /install.amd/vmlinuz\n\tappend vga=788 initrd=/install.amd/initrd.gz --- quiet\n",
    )
    .unwrap();
    let iso = dir.path().join("d.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
        .arg(&iso)
        .arg(&tree));
    let b = from_dvd(medium(&iso), Limits::default()).unwrap();
    assert_eq!(b.kernel, b"INSTALLER");
    assert_eq!(b.initrd, b"INITRDGZ");
    assert_eq!(b.cmdline, "vga=788 --- quiet");

    // grub.cfg wins over isolinux; a plain ISO (no Rock Ridge, no Joliet)
    // still resolves by upper-case 8.3 names.
    std::fs::create_dir_all(tree.join("boot/grub")).unwrap();
    std::fs::write(
        tree.join("boot/grub/grub.cfg"),
        "menuentry 'Install' {\n\tlinux /install.amd/vmlinuz priority=low\n\tinitrd /install.amd/initrd.gz\n}\n",
    )
    .unwrap();
    let iso2 = dir.path().join("plain.iso");
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(&iso2)
        .arg(&tree));
    let b = from_dvd(medium(&iso2), Limits::default()).unwrap();
    assert_eq!(b.cmdline, "priority=low");
    assert_eq!(b.kernel, b"INSTALLER");

    // Not an ISO at all: a clear error, no panic.
    let junk = dir.path().join("junk.iso");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    let e = from_dvd(medium(&junk), Limits::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no ISO 9660 primary volume descriptor"), "{e}");
}

#[test]
fn damaged_images_are_refused_without_a_panic() {
    // Random bytes, truncations and a GPT whose entries point outside the
    // disk: errors, never a panic.
    let mut seed = 0x1234_5678u64;
    for len in [0usize, 511, 4096, 1 << 16] {
        let mut d = vec![0u8; len];
        for b in &mut d {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (seed >> 56) as u8;
        }
        let m: Arc<dyn Medium> = Arc::new(d);
        assert!(from_disk(m.clone(), Limits::default()).is_err());
        assert!(from_dvd(m, Limits::default()).is_err());
    }
}
