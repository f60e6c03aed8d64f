#!/usr/bin/env bash
# Builds a fuzz target with libFuzzer on the stable toolchain (coverage
# through LLVM's sancov passes; see fuzz/README.md) and runs it.
#
#   scripts/fuzz.sh TARGET SECONDS   build TARGET, fuzz it for SECONDS
#   scripts/fuzz.sh --build          build every target
#   scripts/fuzz.sh --list           print the target names
#
# The corpus is fuzz/corpus/TARGET: a target fills it with its crate's
# seeds when it is empty (open_read starts from nothing). A crash, leak or
# timeout exits non-zero and leaves the input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

targets=(open_read virtio_blk migrate_frames state_file worker_proto api_json scsi_cdb iscsi_pdu secure_boot)
triple=x86_64-unknown-linux-gnu

usage() {
  echo "usage: scripts/fuzz.sh TARGET SECONDS | --build | --list (targets: ${targets[*]})" >&2
  exit 2
}

build() {
  # --target keeps the instrumentation off build scripts and proc macros.
  RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
    cargo build --release --target "$triple" "$@"
}

case "${1:-}" in
--list)
  printf '%s\n' "${targets[@]}"
  exit 0
  ;;
--build)
  build --bins
  exit 0
  ;;
"" | -*) usage ;;
esac

target=$1
secs=${2:-}
[[ " ${targets[*]} " == *" $target "* ]] || usage
[[ "$secs" =~ ^[0-9]+$ ]] || usage

build --bin "$target"
mkdir -p "corpus/$target" "artifacts/$target"
case "$target" in
open_read) max_len=4300000 ;;
# A raw chunk is a whole 1 MiB window of pages.
migrate_frames) max_len=1200000 ;;
*) max_len=65536 ;;
esac
exec "target/$triple/release/$target" -max_total_time="$secs" -max_len="$max_len" \
  -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="artifacts/$target/" "corpus/$target"
