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
