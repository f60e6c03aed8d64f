#!/usr/bin/env bash
# Installs the host packages Tern's tests use as oracles and workloads.
# Idempotent: installs only what is missing (apt-get update runs only then).
set -euo pipefail

# package:command-or-path that proves it is installed
wanted=(
  "qemu-utils:qemu-img"
  "libvhdi-utils:vhdiinfo"
  "linux-image-amd64:/boot/vmlinuz-*"
  "fio:fio"
  "xz-utils:xz"
  "iproute2:tc"
  # the NIC tests ping the guest
  "iputils-ping:ping"
  # virtual switches: port guards are nftables rules, tests watch ports with tcpdump
  "nftables:nft"
  "tcpdump:tcpdump"
  "g++:g++"
  # ACPI tables: iasl disassembles and recompiles them (tern-acpi tests)
  "acpica-tools:iasl"
  # the nested tier (scripts/nested): L1/L2 initramfs tools and a console client
  "busybox-static:busybox"
  "cpio:cpio"
  "socat:socat"
  # the official Prometheus client's OpenMetrics parser judges ternd's /metrics
  "python3-prometheus-client:/usr/lib/python3/dist-packages/prometheus_client"
  # the web page's browser test (crates/tern/tests/web.rs): Playwright (npm,
  # from web/package-lock.json) drives Debian's Chromium headless
  "chromium:chromium"
  "nodejs:node"
  "npm:npm"
  # the iSCSI target is judged by libiscsi's iscsi-test-cu against Debian's tgt
  "libiscsi-bin:iscsi-test-cu"
  "tgt:tgtd"
  # the SCSI DVD test reads an ISO made with xorriso
  "xorriso:xorriso"
  # boot sources (tern-bootsrc tests): GPT disks with an ESP and an ext4 /boot
  "gdisk:sgdisk" "dosfstools:mkfs.vfat" "mtools:mcopy" "e2fsprogs:mkfs.ext4"
  # Secure Boot (tern-secureboot tests): oracles, the Debian CA, OVMF's keys
  "sbsigntool:sbverify" "pesign:pesign" "osslsigncode:osslsigncode" "efitools:cert-to-efi-sig-list" "shim-unsigned:/usr/share/shim/debian-uefi-ca.der" "ovmf:/usr/share/ovmf/PkKek-1-snakeoil.key"
  # clustering: real etcd members (tests, demo); protoc builds the etcd-client crate
  "etcd-server:etcd" "etcd-client:etcdctl" "protobuf-compiler:protoc"
)

missing=()
for w in "${wanted[@]}"; do
  pkg=${w%%:*}
  probe=${w#*:}
  if [[ $probe == /* ]]; then
    compgen -G "$probe" >/dev/null || missing+=("$pkg")
  else
    command -v "$probe" >/dev/null || missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# schemathesis (PyPI) checks the REST API against its OpenAPI document
# (crates/tern-daemon/tests/schemathesis.rs); pinned, installed with the
# CPython 3.11 pip only when that version is missing.
SCHEMATHESIS_VERSION=4.32.5
if ! schemathesis --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  echo "setup: installing schemathesis $SCHEMATHESIS_VERSION"
  python3.11 -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

# The nested tier's L1 (scripts/nested) runs under QEMU 7.2's software
# emulator, bookworm's: under QEMU 10's the L2 guest's kvm-clock stops and it
# never reaches /init. It is unpacked beside the system's packages (not
# installed: Debian's qemu-utils 10 breaks qemu-system-common older than 8);
# its libraries are ordinary packages. scripts/nested/lib.sh looks for it here.
qdir=${TERN_NESTED_QEMU_DIR:-/var/cache/tern-nested/qemu}
if [[ ! -x $qdir/usr/bin/qemu-system-x86_64 ]]; then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  qemu72() { apt-cache madison qemu-system-x86 | awk '$3 ~ /^1:7\.2/ { print $3; exit }'; }
  qv=$(qemu72)
  [[ -n $qv ]] || { $SUDO apt-get update -q && qv=$(qemu72); }
  if [[ -z $qv ]]; then
    echo "setup: no QEMU 7.2 in this machine's apt sources; the nested tier will be skipped"
  else
    echo "setup: unpacking QEMU $qv into $qdir (for the nested tier)"
    dl=$(mktemp -d)
    dv=$(apt-cache madison qemu-system-data | awk -v v="${qv%+b*}" '$3 == v { print $3; exit }')
    sv=$(apt-cache madison seabios | awk '$3 ~ /^1\.16\.2/ { print $3; exit }')
    (cd "$dl" && apt-get download -q "qemu-system-x86=$qv" "qemu-system-common=$qv" \
      "qemu-system-data=${dv:-$qv}" ${sv:+"seabios=$sv"})
    $SUDO mkdir -p "$qdir"
    for deb in "$dl"/*.deb; do $SUDO dpkg-deb -x "$deb" "$qdir"; done
    mapfile -t libs < <(for deb in "$dl"/qemu-system-x86_*.deb "$dl"/qemu-system-common_*.deb; do
      dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/([^)]*)//; s/|.*//; s/ //g' | grep '^lib'
    done | sort -u | while read -r l; do
      # only what is missing: installing a present one would upgrade it
      dpkg-query -W -f='${Status}\n' "$l" 2>/dev/null | grep -q '^install ok installed' || echo "$l"
    done)
    if ((${#libs[@]})); then
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends --no-remove "${libs[@]}"
    fi
    rm -rf "$dl"
  fi
fi

# cargo-deb (crates.io; not in Debian) builds the Debian package
# (scripts/build-deb.sh, crates/tern/tests/package.rs). Pinned; about 3 CPU
# minutes to build, only when that version is missing.
CARGO_DEB_VERSION=3.8.0
cargo_deb=${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb
if ! "$cargo_deb" --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
  echo "setup: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install -q --locked cargo-deb --version "=$CARGO_DEB_VERSION"
fi
