#!/usr/bin/env bash
# The quickstart: builds everything and runs a demo on the embedded defaults.
#   1. the probe guest boots in a KVM VM (tern run, the VM worker);
#   2. two host daemons (ternd A and B) start on this machine;
#   3. on A: a VHDX volume, and a VM that writes and verifies a pattern on it;
#   4. on A: a VM dirtying 64 MiB at 50 MiB/s, shown running, live-migrated
#      to B; on B its guest then checks every page it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace
bin=$PWD/target/release
tern=$bin/tern
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
ctl() { # ctl SOCKET JSON: one request to a worker's control socket
  python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall((sys.argv[2] + "\n").encode())
print(s.makefile().readline().strip())
PY
}

step "1. the probe guest boots (2 vCPUs, 512 MiB), then start-up time (median of 10)"
$tern run --vcpus 2 --memory 512M --guest probe:hello
$tern bench boot --runs 10 | tail -n 1

step "2. two host daemons on this machine"
for h in a b; do
  $bin/ternd --state-dir "$work/$h" --socket "$work/$h.sock" >"$work/$h.log" 2>&1 &
  pids+=($!)
done
for h in a b; do
  for _ in $(seq 100); do [[ -S $work/$h.sock ]] && break; sleep 0.05; done
done
A=unix:$work/a.sock
B=unix:$work/b.sock
$tern host --host "$A"

step "3. a VHDX volume, and a VM that writes a pattern over 16 MiB of it and reads it back"
$tern volume create data --size 64M --host "$A"
$tern vm create disky --memory 128M --disk data --guest 'probe:blk-verify,mib=16' --start --host "$A"
for _ in $(seq 100); do
  $tern vm show disky --host "$A" | grep -q 'state: *stopped' && break
  sleep 0.1
done
$tern vm show disky --host "$A" | grep -E 'state|reason'
$tern disk info "$work/a/disks/data.vhdx"

step "4. a VM dirtying 64 MiB at 50 MiB/s on A, live-migrated to B"
$tern vm create m1 --vcpus 2 --memory 256M --guest 'probe:dirty,mib=64,rate=50+verify' --start --host "$A"
sleep 1
echo "-- on A:"; $tern vm list --host "$A"
$tern vm migrate m1 --to "$B" --host "$A"
echo "-- on A:"; $tern vm list --host "$A"
echo "-- on B:"; $tern vm list --host "$B"
id=$($tern vm show m1 --json --host "$B" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "-- the guest on B stops dirtying and verifies every page it wrote:"
ctl "$work/b/run/$id.ctl" '{"cmd":"probe-stop"}' >/dev/null
for _ in $(seq 100); do
  $tern vm show m1 --host "$B" | grep -q 'state: *stopped' && break
  sleep 0.1
done
$tern vm show m1 --host "$B" | grep -E 'state|reason'
grep -h 'verify pages' "$work/b/logs/$id.log" | tail -n 1
