#!/usr/bin/env bash
# Builds the web page ternd serves (web/ -> web/dist, committed and embedded
# in ternd by crates/tern-daemon/src/web.rs) from the lock file, and records
# the SHA-256 of each source in web/dist/SOURCES.sha256; a test of
# tern-daemon (web::tests) fails when the sources no longer match it.
#
#   scripts/build-web.sh           build (npm ci && npm run build)
#   scripts/build-web.sh --check   build into a scratch copy and fail unless
#                                  it equals the committed web/dist (the
#                                  build is reproducible from the lock file)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# The files the build reads, relative to web/ (web::tests lists the same).
sources=(index.html package.json package-lock.json tsconfig.json vite.config.ts src)

build() { # DIR: a web/ tree to build in
  (cd "$1" && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build >/dev/null)
  (cd "$1" && find "${sources[@]}" -type f | LC_ALL=C sort | xargs sha256sum) >"$1/dist/SOURCES.sha256"
}

if [[ ${1:-} == --check ]]; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  (cd "$root/web" && cp -r "${sources[@]}" "$scratch/")
  build "$scratch"
  if diff -r "$root/web/dist" "$scratch/dist"; then
    echo "build-web: web/dist is the reproducible build of web/'s sources"
  else
    echo "build-web: web/dist differs from a fresh build: run scripts/build-web.sh and commit web/dist" >&2
    exit 1
  fi
else
  build "$root/web"
  echo "build-web: built web/dist ($(du -sh "$root/web/dist" | cut -f1))"
fi
