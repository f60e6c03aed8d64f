#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, build, all tests.
# Tests that cannot run here (no /dev/kvm, a missing tool) print a loud SKIP
# line; they are counted and reported at the end, never as passes.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-deps.sh

# The probe guest is a no_std binary and builds only with panic = "abort"
# (the dev profile's setting). Everything else is built here with unwinding,
# the strategy the test harness needs anyway, so the build and the tests
# share one build of every dependency instead of compiling each twice.
# The binaries still end on any panic (tern_error::abort_on_panic).
UNWIND=(--config 'profile.dev.panic="unwind"')
# The previous-release test builds that release the same way, so it reuses
# these dependencies (tern_test_support::prev_release).
export TERN_CARGO_PANIC=unwind

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy "${UNWIND[@]}" --workspace --exclude probe-guest --all-targets -- -D warnings
cargo clippy -p probe-guest --all-targets -- -D warnings
echo "== cargo build (the probe guest must exist before the tests run)"
cargo build -p probe-guest
cargo build "${UNWIND[@]}" --workspace --exclude probe-guest

TERN_SKIP_LOG=$(mktemp)
export TERN_SKIP_LOG
log=$(mktemp)
trap 'rm -f "$TERN_SKIP_LOG" "$log"' EXIT

# Every process the tests start inherits this tag; after them, a `tern` or
# `ternd` process that still carries it was left behind (leak_check).
TERN_TEST_RUN="$$-$(date +%s%N)"
export TERN_TEST_RUN

# Prints "PID COMMAND LINE" for each live tern/ternd process of this run.
leaked() {
  local d pid comm state env
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    comm=$(cat "$d/comm" 2>/dev/null) || continue
    [[ $comm == tern || $comm == ternd ]] || continue
    state=$(sed 's/.*) //' "$d/stat" 2>/dev/null | cut -c1) || continue
    [[ $state == Z || -z $state ]] && continue
    env=$(tr '\0' '\n' <"$d/environ" 2>/dev/null) || continue
    grep -qxF "TERN_TEST_RUN=$TERN_TEST_RUN" <<<"$env" || continue
    echo "$pid $(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)"
  done
}

# Fails the run, naming them, if processes it started outlived the tests;
# then kills them.
leaks=0
leak_check() {
  local found
  found=$(leaked)
  [[ -z $found ]] && return 0
  leaks=$(wc -l <<<"$found")
  echo
  echo "== FAIL: ${leaks} tern/ternd process(es) the tests started are still alive:"
  sed 's/^/   /' <<<"$found"
  awk '{ print $1 }' <<<"$found" | xargs -r kill -KILL 2>/dev/null || true
}

echo "== cargo test"
set +e
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test "${UNWIND[@]}" --workspace --exclude probe-guest --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
leak_check
if ((leaks)) && ((status == 0)); then
  status=1
fi

# Fuzz targets, a few seconds each (scripts/fuzz.sh; fuzz/README.md): each
# counts as one test, written to the log in cargo's result format so the
# totals below include them.
echo "== fuzz targets (${TERN_FUZZ_SECONDS:-3} s each)"
fuzz_ok=0
fuzz_bad=0
if scripts/fuzz.sh --build >"$log.fuzz" 2>&1; then
  for target in $(scripts/fuzz.sh --list); do
    if scripts/fuzz.sh "$target" "${TERN_FUZZ_SECONDS:-3}" >"$log.fuzz" 2>&1; then
      echo "fuzz $target ... ok ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log.fuzz" | grep -o '[0-9]*$') runs)"
      fuzz_ok=$((fuzz_ok + 1))
    else
      echo "fuzz $target ... FAILED (input in fuzz/artifacts/$target/):"
      tail -n 30 "$log.fuzz" | sed 's/^/   /'
      fuzz_bad=$((fuzz_bad + 1))
    fi
  done
else
  echo "fuzz targets do not build:"
  tail -n 30 "$log.fuzz" | sed 's/^/   /'
  fuzz_bad=$(scripts/fuzz.sh --list | wc -l)
fi
rm -f "$log.fuzz"
echo "test result: fuzz. ${fuzz_ok} passed; ${fuzz_bad} failed" >>"$log"
if ((fuzz_bad)); then status=1; fi

# The nested tier: real Linux guests in one QEMU TCG L1 (docs/nested-tier.md).
# Its SKIPs go to TERN_SKIP_LOG and its last line is a cargo-style "test
# result:" line, so the totals below count it. Where QEMU 7.2 or the kernel
# is missing it reports every check as a counted SKIP. TERN_NESTED=0 leaves
# it out (then it says so, loudly, and counts one skip).
if [[ ${TERN_NESTED:-1} != 0 ]]; then
  echo "== nested tier (scripts/nested/run.sh)"
  set +e
  scripts/nested/run.sh --bin-dir target/debug --timeout "${TERN_NESTED_TIMEOUT:-900}" 2>&1 | tee -a "$log"
  ((PIPESTATUS[0] == 0)) || status=1
  set -e
else
  echo "*** SKIP nested tier: TERN_NESTED=0 ***" | tee -a "$log"
  echo "SKIP nested tier: TERN_NESTED=0" >>"$TERN_SKIP_LOG"
  echo "test result: nested tier skipped. 1 passed; 0 failed; 0 ignored" >>"$log"
fi

sum() { awk -v k="$1" '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ "^" k) n += $i } END { print n + 0 }' "$log"; }
passed=$(sum passed)
failed=$(sum failed)
skipped=$(wc -l <"$TERN_SKIP_LOG")
echo
if ((skipped)); then
  echo "== skipped tests (they returned early; not counted as passed):"
  sed 's/^/   /' "$TERN_SKIP_LOG"
fi
echo "tests: $((passed - skipped)) passed, ${failed} failed, ${skipped} skipped"
exit "$status"
