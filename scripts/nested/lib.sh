# Shared by the nested tier's host scripts (sourced, not run).
# The tier boots this machine's Debian kernel in QEMU's software emulator
# (L1, with kvm-amd giving it a real /dev/kvm) and runs Tern there against
# the same kernel as an L2 guest. See docs/nested-tier.md.

NESTED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$NESTED_DIR/../.." && pwd)
# Everything built or logged goes here (ignored by git, beside the cargo build).
WORK_DIR=${TERN_NESTED_WORK:-$REPO_DIR/target/nested}

# L1's modules: kvm-amd needs kvm (which needs irqbypass) and ccp.
L1_MODULES=(irqbypass ccp kvm kvm_amd)
# L2's modules: Debian builds virtio-mmio and virtio-blk as modules.
# The ACPI power button check needs the button driver and evdev.
L2_MODULES=(virtio_ring virtio virtio_mmio virtio_blk evdev button)

say() { echo "nested: $*" >&2; }

# The newest installed Debian kernel: sets KVER and KERNEL (a bzImage).
find_kernel() {
  KERNEL=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
  [[ -n $KERNEL && -r $KERNEL ]] || return 1
  KVER=${KERNEL#/boot/vmlinuz-}
  [[ -d /lib/modules/$KVER ]]
}

# L1's emulator: QEMU 7.2 (Debian bookworm's), unpacked beside the system's
# packages by scripts/setup-test-deps.sh. Under QEMU 10's TCG the L2 guest's
# kvm-clock stops early in its boot and it never reaches /init.
L1_QEMU_DIR=${TERN_NESTED_QEMU_DIR:-/var/cache/tern-nested/qemu}
L1_QEMU=$L1_QEMU_DIR/usr/bin/qemu-system-x86_64

# Reasons this machine cannot run the tier (one per line; nothing when it can).
missing_tools() {
  local t
  [[ -x $L1_QEMU ]] || echo "no QEMU 7.2 at $L1_QEMU (scripts/setup-test-deps.sh unpacks it there)"
  for t in cpio socat; do
    command -v "$t" >/dev/null || echo "$t is not installed (scripts/setup-test-deps.sh installs it)"
  done
  if ! command -v busybox >/dev/null; then
    echo "busybox is not installed (package busybox-static)"
  elif ldd "$(command -v busybox)" >/dev/null 2>&1; then
    echo "$(command -v busybox) is dynamically linked; the tier needs busybox-static"
  fi
  find_kernel || echo "no Debian kernel with modules in /boot and /lib/modules (package linux-image-amd64)"
}

# copy_libs ROOT FILE: every shared library ldd lists for FILE (and the
# dynamic loader) at the same path under ROOT.
copy_libs() {
  local root=$1 lib
  while read -r lib; do
    [[ -e $root$lib ]] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done < <(ldd "$2" 2>/dev/null | awk '/=>/ && $3 ~ /^\// { print $3 } /^\t\// { print $1 }')
}

# copy_bin ROOT FILE...: FILE at the same path under ROOT, with its libraries.
copy_bin() {
  local root=$1 f
  shift
  for f in "$@"; do
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
    copy_libs "$root" "$f"
  done
}

# A root with static busybox and every applet linked to it.
busybox_root() {
  local root=$1 a
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,lib/modules}
  cp -L "$(command -v busybox)" "$root/bin/busybox"
  for a in $("$root/bin/busybox" --list); do
    [[ -e $root/bin/$a ]] || ln -s busybox "$root/bin/$a"
  done
}

# copy_modules ROOT NAME...: the kernel's modules, flat in ROOT/lib/modules.
copy_modules() {
  local root=$1 m f
  shift
  for m in "$@"; do
    f=$(modinfo -k "$KVER" -n "$m") || return 1
    case $f in
      *.ko) cp "$f" "$root/lib/modules/$m.ko" ;;
      *.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
      *) say "module $m: unexpected file $f"; return 1 ;;
    esac
  done
}

# make_cpio ROOT OUT: an uncompressed newc archive owned by root (the kernel
# unpacks it faster than a compressed one under the emulator).
make_cpio() {
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$2"
}

# The L1 QEMU command line: ONE L1, software-emulated AMD CPU with SVM and
# nested paging (`-cpu max` under TCG), serial console on stdout.
l1_qemu() {
  local initrd=$1 cmdline=$2
  L1_CMD=(nice -n 10 "$L1_QEMU" -L "$L1_QEMU_DIR/usr/share/qemu" -L "$L1_QEMU_DIR/usr/share/seabios" -accel tcg,thread=multi -cpu max -smp 2 -m 3G
    -nodefaults -no-user-config -display none -serial stdio -no-reboot
    -kernel "$KERNEL" -initrd "$initrd" -append "$cmdline")
}

# The L2 kernel command line (Tern's DSDT describes its virtio-mmio devices).
L2_CMDLINE_BASE="console=ttyS0,115200 reboot=k panic=-1 rdinit=/init"
