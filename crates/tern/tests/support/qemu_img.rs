//! Judging a disk image from the host: qemu-img converts it to raw and
//! every sector must hold the probe guest's pattern (shared by the
//! virtio-blk and virtio-scsi tests).

use std::path::Path;
use std::process::Command;

use tern_probe_abi::blk::sector_bytes;

/// Converts `img` to raw with qemu-img and checks every sector of the
/// first `len` bytes holds the probe's pattern.
pub fn check_pattern_with_qemu_img(qemu_img: &Path, img: &Path, fmt: &str, len: u64) -> Vec<u8> {
    let out = img.with_extension("converted.raw");
    let st = Command::new(qemu_img)
        .args(["convert", "-f", fmt, "-O", "raw"])
        .arg(img)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "qemu-img convert {}: {}",
        img.display(),
        String::from_utf8_lossy(&st.stderr)
    );
    let data = std::fs::read(&out).unwrap();
    for s in 0..len / 512 {
        let got = &data[(s * 512) as usize..(s * 512 + 512) as usize];
        assert!(
            got == sector_bytes(s),
            "{}: sector {s} does not hold the guest's pattern",
            img.display()
        );
    }
    data
}
