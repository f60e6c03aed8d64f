#!/usr/bin/env bash
# The nested tier: real Linux guests under Tern, on a real KVM, on machines
# whose own /dev/kvm cannot run a guest kernel. ONE QEMU TCG machine (L1) runs
# this machine's Debian kernel with kvm-amd; Tern's release binaries boot the
# same kernel inside it (L2) for every check in checks.txt. See
# docs/nested-tier.md.
#
# Usage: scripts/nested/run.sh [--only GROUP,...] [--no-build] [--bin-dir DIR] [--timeout SECONDS]
#   --only      run only these groups of checks.txt (probe, peer, cpu, blk, blklive, acpi,
#               console, lifecycle, pending)
#   --no-build  use target/release as it is (no cargo build)
#   --bin-dir   take tern and probe-guest from DIR (e.g. target/debug, which
#               test.sh has built already); implies --no-build
#   --timeout   L1's time limit (default 600 s, or $TERN_NESTED_TIMEOUT)
# Exit status: 0 when nothing failed (skips included), 1 otherwise.
# With TERN_SKIP_LOG set (scripts/test.sh) every SKIP is appended to it and
# the last line is a cargo-style "test result:" line for test.sh's totals.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

only=
build=1
bin_dir=$REPO_DIR/target/release
limit=${TERN_NESTED_TIMEOUT:-600}
while (($#)); do
  case $1 in
    --only) only=$2; shift ;;
    --no-build) build=0 ;;
    --bin-dir) bin_dir=$(realpath "$2"); build=0; shift ;;
    --timeout) limit=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

t_start=$(date +%s)
mkdir -p "$WORK_DIR"
results=$WORK_DIR/results.txt
: >"$results"

# The checks to expect: those of the selected groups (and the host's own).
expected=()
groups=()
while read -r g name _; do
  [[ -z $g || $g == \#* ]] && continue
  if [[ -z $only || $g == host || ,$only, == *,$g,* ]]; then
    expected+=("$name")
    groups+=("$g")
  fi
done <"$NESTED_DIR/checks.txt"
if [[ -n $only ]]; then
  for g in ${only//,/ }; do
    grep -qE "^$g[[:space:]]" "$NESTED_DIR/checks.txt" || { echo "run.sh: no group '$g' in checks.txt" >&2; exit 64; }
  done
fi

record() { echo "$1 $2 ${3:-}" >>"$results"; }

summary() {
  local pass fail skip v name detail
  pass=$(grep -c '^PASS ' "$results" || true)
  fail=$(grep -c '^FAIL ' "$results" || true)
  skip=$(grep -c '^SKIP ' "$results" || true)
  echo
  echo "== nested tier results"
  while read -r v name detail; do
    printf '  %-4s %-22s %s\n' "$v" "$name" "$detail"
  done <"$results"
  if ((skip)); then
    echo
    while read -r v name detail; do
      [[ $v == SKIP ]] || continue
      echo "*** SKIP nested:$name: $detail ***"
      if [[ -n ${TERN_SKIP_LOG:-} ]]; then echo "SKIP nested:$name: $detail" >>"$TERN_SKIP_LOG"; fi
    done <"$results"
  fi
  if [[ -n ${log:-} ]] && grep -q '^TIER-INFO RETRY ' "$log"; then
    echo
    grep '^TIER-INFO RETRY ' "$log" | sed 's/^TIER-INFO RETRY \([^:]*\): /*** RETRY nested:\1: /; s/$/ ***/'
  fi
  echo
  echo "nested tier: $pass passed, $fail failed, $skip skipped${retries:+, $retries group(s) run twice} (wall $(($(date +%s) - t_start)) s${timing:+; $timing})"
  if [[ -n ${TERN_SKIP_LOG:-} ]]; then
    # test.sh counts skips in "passed" and subtracts its skip log, as it does
    # for cargo tests that return early.
    echo "test result: nested tier. $((pass + skip)) passed; $fail failed; 0 ignored"
  fi
  ((fail == 0))
}

skip_all() {
  local n
  for n in "${expected[@]}"; do record SKIP "$n" "$1"; done
  summary
}

timing=
reasons=$(missing_tools)
if [[ -n $reasons ]]; then
  skip_all "cannot run here: $(echo "$reasons" | paste -sd ';' -)"
  exit
fi

if ((build)); then
  t=$(date +%s)
  say "cargo build --release -p tern -p probe-guest"
  (cd "$REPO_DIR" && nice -n 5 cargo build --release -q -p tern -p probe-guest)
  timing="release build $(($(date +%s) - t)) s"
fi
t=$(date +%s)
with_qemu=()
if [[ -z $only || ,$only, == *,peer,* ]]; then with_qemu=(--with-qemu); fi
"$NESTED_DIR/build.sh" "${with_qemu[@]}" --bin-dir "$bin_dir"
timing="${timing:+$timing, }payload build $(($(date +%s) - t)) s"
find_kernel

cmdline="console=ttyS0,115200 rdinit=/init quiet panic=-1 tier.mode=checks${only:+ tier.only=$only}"
l1_qemu "$WORK_DIR/l1.cpio" "$cmdline"
say "L1: ${L1_CMD[*]} (limit ${limit} s)"
run_l1() {
  t=$(date +%s)
  set +e
  timeout -k 10 "$limit" "${L1_CMD[@]}" </dev/null 2>"$WORK_DIR/qemu.err" |
    sed -u 's/\r$//' | tee "$WORK_DIR/l1.log" | grep --line-buffered -E '^TIER-(CHECK|INFO L1|INFO RETRY)' >&2
  qemu_rc=${PIPESTATUS[0]}
  set -e
  l1_secs=$(($(date +%s) - t))
}
run_l1
log=$WORK_DIR/l1.log
l1_retry=
# L1 itself (the emulated machine and its Debian kernel, not Tern) can die
# under the emulator: a kernel panic in KVM_RUN ("BUG: TASK stack guard page
# was hit"), or a silent reset (QEMU exits 0 with -no-reboot before
# TIER-END); each seen once on 2026-12-03. Nothing in user space may crash
# or reset a kernel, so this is no verdict on Tern: L1 runs once more, the
# first attempt's log is kept and the retry is listed loudly. A second death
# fails the tier; running out of time (timeout) is never retried.
if ! grep -q '^TIER-END' "$log" && ((qemu_rc != 124 && qemu_rc != 137)) && grep -q '^TIER-' "$log"; then
  l1_retry=$(grep -v '^TIER-' "$log" | grep -m1 -E 'BUG:|Kernel panic' | sed 's/^\[[ 0-9.]*\] //' || true)
  l1_retry=${l1_retry:-"it reset without a message (QEMU exit $qemu_rc) after: $(grep '^TIER-CHECK' "$log" | tail -1 | cut -c1-80)"}
  cp "$log" "$WORK_DIR/l1-attempt1.log"
  echo "TIER-INFO RETRY L1: L1 died ($l1_retry); L1 runs again (first log: target/nested/l1-attempt1.log)" | tee "$WORK_DIR/l1-retry.txt" >&2
  run_l1
  cat "$WORK_DIR/l1-retry.txt" >>"$log"
fi
rm -f "$WORK_DIR/l1-retry.txt"
timing="${timing:+$timing, }L1 run $l1_secs s${l1_retry:+ (second attempt)}"
retries=$(grep -c '^TIER-INFO RETRY ' "$log" || true)
((retries)) || retries=

if ! grep -q '^TIER-' "$log" && [[ -s $WORK_DIR/qemu.err ]]; then
  # QEMU did not start at all (no L1 output): this machine cannot run it.
  skip_all "QEMU cannot run here: $(head -3 "$WORK_DIR/qemu.err" | paste -sd ' ' -)"
  exit
fi

# L2 consoles by run, for the warning scan and for reading after a failure.
rm -rf "$WORK_DIR/l2-logs"
mkdir -p "$WORK_DIR/l2-logs"
awk -v dir="$WORK_DIR/l2-logs" '/^TIER-L2 / { run = $2; sub(/\|$/, "", run); line = $0; sub(/^TIER-L2 [^|]*\| ?/, "", line); print line >> (dir "/" run ".log") }' "$log"

bad='WARNING:|BUG:|Oops|Call Trace|general protection fault|Kernel panic'
# Tern's L2 consoles (peer-*: the QEMU/KVM peer's).
tern_logs=()
for f in "$WORK_DIR"/l2-logs/*.log; do
  [[ -e $f && $(basename "$f") != peer-* ]] && tern_logs+=("$f")
done
for i in "${!expected[@]}"; do
  name=${expected[$i]}
  case $name in
    l1-finished)
      if ((qemu_rc == 124 || qemu_rc == 137)); then
        record FAIL "$name" "L1 did not finish within ${limit} s (killed); last line: $(grep -v '^TIER-L2' "$log" | tail -1)"
      elif ! grep -q '^TIER-END' "$log"; then
        record FAIL "$name" "L1 ended (QEMU exit $qemu_rc) before its checks were done; last line: $(tail -1 "$log")"
      else
        record PASS "$name" "L1 ran all its checks in $l1_secs s"
      fi
      ;;
    l2-no-kernel-warning)
      # Tern's guests against the peer's (QEMU/KVM in the same L1): a line
      # the peer's guest prints too, once timestamps, CPU/PID numbers and
      # code offsets are taken out, comes from the emulated L1.
      norm() { sed -E 's/^[^:]*:[0-9]+:\[[ 0-9.]+\] //; s/^\[[ 0-9.]+\] //; s/CPU: [0-9]+ PID: [0-9]+/CPU: N PID: N/; s/\+0x[0-9a-f]+\/0x[0-9a-f]+//g; s/^[[:space:]]+//'; }
      peer_hits=
      if compgen -G "$WORK_DIR/l2-logs/peer-*.log" >/dev/null; then
        peer_hits=$(grep -ahE "$bad" "$WORK_DIR"/l2-logs/peer-*.log | norm || true)
      fi
      if ((${#tern_logs[@]} == 0)); then
        record SKIP "$name" "no L2 console of Tern came out of L1"
      elif ! hits=$(grep -aHnE "$bad" "${tern_logs[@]}"); then
        record PASS "$name" "${#tern_logs[@]} L2 consoles, no WARNING/BUG/oops/Call Trace"
      else
        own=
        shared=0
        while IFS= read -r h; do
          n=$(printf '%s\n' "$h" | norm)
          if [[ -n $peer_hits ]] && grep -qxF -- "$n" <<<"$peer_hits"; then
            shared=$((shared + 1))
          elif [[ -z $own ]]; then
            own=$h
          fi
        done <<<"$hits"
        if [[ -n $own ]]; then
          record FAIL "$name" "$(echo "$hits" | wc -l) line(s), first not printed by the QEMU/KVM peer: $(echo "$own" | sed "s|$WORK_DIR/||")"
        else
          record PASS "$name" "${#tern_logs[@]} L2 consoles; their $shared warning line(s) are printed the same by QEMU/KVM's guest in this L1 (from the emulated L1, not Tern), first: $(echo "$hits" | head -1 | sed "s|$WORK_DIR/||; s/^[^ ]* //")"
        fi
      fi
      ;;
    l2-no-acpi-error)
      acpi_bad='ACPI Error|ACPI BIOS Error|ACPI Warning|ACPI BIOS Warning'
      if ((${#tern_logs[@]} == 0)); then
        record SKIP "$name" "no L2 console of Tern came out of L1"
      elif hits=$(grep -aHnE "$acpi_bad" "${tern_logs[@]}"); then
        record FAIL "$name" "$(echo "$hits" | wc -l) line(s), first: $(echo "$hits" | head -1 | sed "s|$WORK_DIR/||")"
      else
        record PASS "$name" "${#tern_logs[@]} L2 consoles, no ACPI error or warning about Tern's tables"
      fi
      ;;
    *)
      line=$(grep -m1 "^TIER-CHECK $name " "$log" || true)
      if [[ -z $line ]]; then
        record FAIL "$name" "no result from L1 (group ${groups[$i]})"
      else
        read -r _ _ v detail <<<"$line"
        case $v in
          PASS | FAIL | SKIP) record "$v" "$name" "$detail" ;;
          *) record FAIL "$name" "unreadable result: $line" ;;
        esac
      fi
      ;;
  esac
done

if grep -q '^FAIL ' "$results"; then
  echo
  echo "== L1 log: $log; L2 consoles: $WORK_DIR/l2-logs/"
  if compgen -G "$WORK_DIR/l2-logs/*.log" >/dev/null; then
    grep -aHnE "$bad" "$WORK_DIR"/l2-logs/*.log | head -20 | sed "s|$WORK_DIR/||" || true
  fi
  grep -v '^TIER-L2' "$log" | tail -25
fi
summary
