#!/usr/bin/env bash
# Builds the nested tier's payloads into $WORK_DIR (target/nested):
#   l2.cpio  the L2 guest's initramfs: busybox, the virtio modules, l2-init.sh
#   l1.cpio  the L1 initramfs: busybox, kvm modules, Tern's release binaries
#            with their libraries, socat and qemu-img (oracles), the kernel
#            and l2.cpio as the L2 payload, the check scripts
# Usage: build.sh [--with-qemu] [--bin-dir DIR]
#   --with-qemu  also put qemu-system-x86_64 and its firmware in L1 (bench)
#   --bin-dir    where tern and probe-guest are (default target/release)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

with_qemu=0
bin_dir=$REPO_DIR/target/release
while (($#)); do
  case $1 in
    --with-qemu) with_qemu=1 ;;
    --bin-dir) bin_dir=$2; shift ;;
    *) echo "build.sh: unknown option $1" >&2; exit 64 ;;
  esac
  shift
done

find_kernel || { say "no kernel found"; exit 66; }
for b in tern probe-guest; do
  [[ -x $bin_dir/$b ]] || { say "$bin_dir/$b missing (cargo build --release -p tern -p probe-guest)"; exit 66; }
done

mkdir -p "$WORK_DIR"
rm -rf "$WORK_DIR/l1root" "$WORK_DIR/l2root"

# --- L2: what runs inside the guest Tern boots.
l2=$WORK_DIR/l2root
busybox_root "$l2"
copy_modules "$l2" "${L2_MODULES[@]}"
install -m 0755 "$NESTED_DIR/l2-init.sh" "$l2/init"
make_cpio "$l2" "$WORK_DIR/l2.cpio"

# --- L1: the emulated machine with KVM that runs Tern.
l1=$WORK_DIR/l1root
busybox_root "$l1"
copy_modules "$l1" "${L1_MODULES[@]}"
install -m 0755 "$NESTED_DIR/l1-init.sh" "$l1/init"
mkdir -p "$l1/tier"
install -m 0755 "$NESTED_DIR/l1-checks.sh" "$NESTED_DIR/l1-bench.sh" "$l1/tier/"
cp "$NESTED_DIR/checks.txt" "$l1/tier/checks.txt"
echo "L2_CMDLINE='$L2_CMDLINE_BASE'" >"$l1/tier/env"
cp "$KERNEL" "$l1/tier/vmlinuz"
cp "$WORK_DIR/l2.cpio" "$l1/tier/l2.cpio"
# tern looks for probe-guest beside itself. Debug info is not needed in L1
# (and would triple the archive).
for b in tern probe-guest; do
  if command -v strip >/dev/null; then
    strip --strip-debug -o "$l1/bin/$b" "$bin_dir/$b"
  else
    cp "$bin_dir/$b" "$l1/bin/$b"
  fi
done
copy_libs "$l1" "$l1/bin/tern"
copy_bin "$l1" "$(command -v socat)"
if command -v qemu-img >/dev/null; then
  copy_bin "$l1" "$(command -v qemu-img)"
fi
if ((with_qemu)); then
  # The same QEMU as L1's, at /usr/bin in L1, with the firmware for -machine
  # q35 (SeaBIOS, the -kernel option ROM) and microvm (qboot); -nodefaults
  # keeps NIC and VGA ROMs out.
  mkdir -p "$l1/usr/bin" "$l1/usr/share/qemu"
  cp "$L1_QEMU" "$l1/usr/bin/qemu-system-x86_64"
  copy_libs "$l1" "$L1_QEMU"
  for f in bios-256k.bin bios-microvm.bin qboot.rom linuxboot_dma.bin linuxboot.bin kvmvapic.bin pvh.bin; do
    for d in "$L1_QEMU_DIR/usr/share/qemu" "$L1_QEMU_DIR/usr/share/seabios"; do
      if [[ -e $d/$f ]]; then cp -L "$d/$f" "$l1/usr/share/qemu/$f"; break; fi
    done
  done
fi
make_cpio "$l1" "$WORK_DIR/l1.cpio"
say "built $WORK_DIR/l1.cpio ($(du -m "$WORK_DIR/l1.cpio" | cut -f1) MiB), l2.cpio ($(du -m "$WORK_DIR/l2.cpio" | cut -f1) MiB), kernel $KVER"
