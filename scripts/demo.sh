#!/usr/bin/env bash
# The quickstart: builds everything and runs a demo on the embedded defaults.
#   1. the probe guest boots in a KVM VM (tern run, the VM worker);
#   2. two host daemons (ternd A and B) start on this machine;
#   3. on A: a VHDX volume in a directory both daemons reach (shared
#      storage), and a VM on it that writes a pattern to its disk, then
#      dirties 64 MiB at 50 MiB/s; shown running;
#   4. live-migrated to B with its disk; on B the guest checks every page
#      it wrote and writes and reads its disk again; B owns the volume.
set -euo pipefail
cd "$(dirname "$0")/.."

# The demo talks to worker control sockets and reads JSON with python3; the
# build needs protoc (the etcd-client crate compiles etcd's protobufs).
missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

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
"$bin/tern-bench" boot --runs 10 | tail -n 1

step "2. two host daemons on this machine, sharing a disk directory"
mkdir -p "$work/shared"
for h in a b; do
  $bin/ternd --state-dir "$work/$h" --socket "$work/$h.sock" --disk-dir "$work/shared" >"$work/$h.log" 2>&1 &
  pids+=($!)
done
for h in a b; do
  for _ in $(seq 100); do [[ -S $work/$h.sock ]] && break; sleep 0.05; done
done
A=unix:$work/a.sock
B=unix:$work/b.sock
$tern host --host "$A"

step "3. on A: a VHDX volume and a VM on it: writes a pattern over 16 MiB of its disk, then dirties 64 MiB at 50 MiB/s"
$tern volume create data --size 64M --host "$A"
$tern vm create m1 --vcpus 2 --memory 256M --disk data \
  --guest 'probe:blk-verify,mib=16+dirty,mib=64,rate=50+verify+blk-verify,mib=16' --start --host "$A"
sleep 1
echo "-- on A:"; $tern vm list --host "$A"; $tern volume list --host "$A"

step "4. live migration of m1 with its disk from A to B"
$tern vm migrate m1 --to "$B" --host "$A"
echo "-- on A:"; $tern vm list --host "$A"; $tern volume list --host "$A"
echo "-- on B:"; $tern vm list --host "$B"; $tern volume list --host "$B"
id=$($tern vm show m1 --json --host "$B" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "-- the guest on B stops dirtying, verifies every page it wrote, then writes and reads its disk:"
ctl "$work/b/run/$id.ctl" '{"cmd":"probe-stop"}' >/dev/null
for _ in $(seq 200); do
  $tern vm show m1 --host "$B" | grep -q 'state: *stopped' && break
  sleep 0.1
done
$tern vm show m1 --host "$B" | grep -E 'state|reason'
grep -h 'verify pages' "$work/b/logs/$id.log" | tail -n 1
grep -h 'blk-verify.*result=' "$work/b/logs/$id.log" | tail -n 1
$tern disk info "$work/shared/data.vhdx"

