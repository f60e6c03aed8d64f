#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, build, all tests.
# Tests that cannot run here (no /dev/kvm, a missing tool) print a loud SKIP
# line; they are counted and reported at the end, never as passes.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build (the probe guest must exist before the tests run)"
cargo build --workspace

TERN_SKIP_LOG=$(mktemp)
export TERN_SKIP_LOG
log=$(mktemp)
trap 'rm -f "$TERN_SKIP_LOG" "$log"' EXIT

echo "== cargo test"
set +e
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# The nested tier: real Linux guests in one QEMU TCG L1 (docs/nested-tier.md).
# Its SKIPs go to TERN_SKIP_LOG and its last line is a cargo-style
# "test result:" line, so the totals below count it.
echo "== nested tier (scripts/nested/run.sh)"
set +e
scripts/nested/run.sh 2>&1 | tee -a "$log"
((PIPESTATUS[0] == 0)) || status=1
set -e

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
