#!/usr/bin/env bash
# Builds Tern's Debian package with cargo-deb: tern, ternd, the probe image,
# the systemd unit (packaging/systemd/ternd.service), shell completions and
# man pages generated from the clap definitions.
#
# Usage: scripts/build-deb.sh [--profile release|dev] [--no-build] [--out DIR]
#   --profile   the cargo profile to package (default release)
#   --no-build  package what target/ has (the binaries must exist)
#   --out       where the .deb goes (default target/debian)
# Needs cargo-deb (scripts/setup-test-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
out=target/debian
while (($#)); do
  case $1 in
    --profile) profile=$2; shift ;;
    --no-build) build=0 ;;
    --out) out=$2; shift ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done
case $profile in
  release) dir=target/release ;;
  dev) dir=target/debug ;;
  *) echo "build-deb.sh: profile must be release or dev, not $profile" >&2; exit 64 ;;
esac

cargo_deb() {
  if command -v cargo-deb >/dev/null; then cargo-deb "$@"
  elif [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb ]]; then "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" "$@"
  else
    echo "build-deb.sh: cargo-deb is missing (scripts/setup-test-deps.sh installs it)" >&2
    exit 69
  fi
}

if ((build)); then
  cargo build --profile "$profile" -p tern -p probe-guest
fi
for b in tern ternd probe-guest; do
  [[ -x $dir/$b ]] || { echo "build-deb.sh: $dir/$b is missing (build it, or drop --no-build)" >&2; exit 66; }
done

# Generated assets, from the binaries being packaged.
pkg=target/pkg
rm -rf "$pkg"
mkdir -p "$pkg/completions" "$pkg/man"
"$dir/tern" completions bash >"$pkg/completions/tern"
"$dir/tern" completions bash --for ternd >"$pkg/completions/ternd"
"$dir/tern" completions zsh >"$pkg/completions/_tern"
"$dir/tern" completions zsh --for ternd >"$pkg/completions/_ternd"
"$dir/tern" completions fish >"$pkg/completions/tern.fish"
"$dir/tern" completions fish --for ternd >"$pkg/completions/ternd.fish"
"$dir/tern" man "$pkg/man"
# Debian policy: man pages are compressed, reproducibly (-n: no name, no time).
gzip -9n "$pkg"/man/*

mkdir -p "$out"
fast=()
# A dev build is packaged for tests: gzip, not xz, saves a minute of CPU.
[[ $profile == dev ]] && fast=(--fast)
cargo_deb -p tern --no-build --profile "$profile" "${fast[@]}" --output "$out"
