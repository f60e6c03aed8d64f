#!/usr/bin/env bash
# Boot benchmark in the nested tier's L1 (on demand; not part of test.sh):
# wall time from starting the VMM to the L2 kernel's /init, for Tern and for
# QEMU with KVM in L1 (-machine microvm and q35, -kernel boot), same kernel,
# initramfs and command line; median of 5 (REPS=N to change). Prints JSON
# lines: one per VMM, then the L1 run's total time.
# Usage: scripts/nested/bench-boot.sh [--no-build] [--bin-dir DIR] [--timeout SECONDS]
#   --bin-dir  take tern and probe-guest from DIR (e.g. target/debug); the
#              JSON says which build ran
set -euo pipefail
. "$(dirname "$0")/lib.sh"

build=1
bin_dir=$REPO_DIR/target/release
limit=900
while (($#)); do
  case $1 in
    --no-build) build=0 ;;
    --bin-dir) bin_dir=$(realpath "$2"); build=0; shift ;;
    --timeout) limit=$2; shift ;;
    *) echo "bench-boot.sh: unknown option $1" >&2; exit 64 ;;
  esac
  shift
done

reasons=$(missing_tools)
if [[ -n $reasons ]]; then
  echo "*** SKIP bench-boot: $(echo "$reasons" | paste -sd ';' -) ***" >&2
  exit 0
fi
if ((build)); then
  (cd "$REPO_DIR" && nice -n 5 cargo build --release -q -p tern -p probe-guest)
fi
"$NESTED_DIR/build.sh" --with-qemu --bin-dir "$bin_dir"
find_kernel
l1_qemu "$WORK_DIR/l1.cpio" "console=ttyS0,115200 rdinit=/init quiet panic=-1 tier.mode=bench tier.reps=${REPS:-5}"
log=$WORK_DIR/bench-l1.log
t0=$(date +%s.%N)
set +e
timeout -k 10 "$limit" "${L1_CMD[@]}" </dev/null 2>"$WORK_DIR/qemu.err" | sed -u 's/\r$//' | tee "$log" | grep --line-buffered '^TIER-INFO bench' >&2
rc=${PIPESTATUS[0]}
set -e
t1=$(date +%s.%N)
sed -n 's/^TIER-BENCH //p' "$log" | sed "s|}\$|,\"tern_build\":\"$(basename "$bin_dir")\"}|"
grep '^TIER-BENCH-SKIP' "$log" | sed 's/^TIER-BENCH-SKIP/*** SKIP bench-boot:/; s/$/ ***/' >&2 || true
printf '{"bench":"nested-l1-run","wall_s":%.1f,"qemu_exit":%d,"finished":%s}\n' \
  "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$rc" "$(grep -q '^TIER-END' "$log" && echo true || echo false)"
