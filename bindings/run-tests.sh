#!/usr/bin/env bash
# Runs every binding's own test suite against a built kvpages tree:
#   Rust (cargo test, with the newest toolchain and again with the declared minimum, Rust 1.63),
#   Go (go vet, go test, go test -tags debug), Zig (zig build test),
#   Python (pytest).
# The build tree is first installed into <build dir>/bindings/prefix, and each binding links it the way
# a user would: Rust, Go and Zig through pkg-config (PKG_CONFIG_PATH), Python through
# KVPAGES_LIBRARY; LD_LIBRARY_PATH points the loader at the prefix. Build caches go under the
# build dir, nothing is written into the source tree.
# Usage: bindings/run-tests.sh <configured and built build dir>
set -uo pipefail
build=$(cd "${1:?usage: run-tests.sh <build dir>}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
# A fixed prefix under the build dir: the Go and Zig build caches remember include and library
# paths, so the prefix must not move between runs.
work="$build/bindings"
rm -rf "$work/prefix"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null || { echo "bindings: install failed"; exit 1; }
lib=$(find "$work/prefix" -name 'libkvpages.so.1' | head -n1)
pc=$(find "$work/prefix" -name kvpages.pc | head -n1)
[ -n "$lib" ] && [ -n "$pc" ] || { echo "bindings: installed tree lacks libkvpages.so.1 or kvpages.pc"; exit 1; }
export PKG_CONFIG_PATH="$(dirname "$pc")"
export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KVPAGES_LIBRARY="$lib"
export KVPAGES_INCLUDE_DIRS="$work/prefix/include"
# rustup's toolchain (the newest) before a system one; Debian's Rust is tested as the MSRV below.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
echo "bindings: testing against $(pkg-config --modversion kvpages) installed in $work/prefix"

failed=()
run() {  # <name> <command...>
  local name=$1 t0=$SECONDS
  shift
  echo "---- bindings: $name"
  if "$@"; then
    echo "---- bindings: $name ok ($((SECONDS - t0)) s)"
  else
    echo "---- bindings: $name FAILED ($((SECONDS - t0)) s)"
    failed+=("$name")
  fi
}

rust() {
  command -v cargo >/dev/null || { echo "cargo not found"; return 1; }
  (cd "$here/rust" && CARGO_TARGET_DIR="$build/bindings/rust-target" cargo test --offline --workspace &&
    for ex in kvpages/examples/*.rs; do  # the examples run, not only compile: they assert what they show
      CARGO_TARGET_DIR="$build/bindings/rust-target" cargo run --offline --quiet -p kvpages --example "$(basename "$ex" .rs)" \
        >/dev/null || { echo "example $ex failed"; exit 1; }
    done)
}
# The minimum Rust version the crates declare (rust-version in Cargo.toml), built and tested with
# that exact compiler: Debian bookworm's rustc 1.63 (scripts/install-deps.sh installs it). Elsewhere
# the step says it is skipped. KVP_MSRV_RUSTC / KVP_MSRV_CARGO / KVP_MSRV_RUSTDOC point at another.
rust_msrv() {
  local msrv rustc=${KVP_MSRV_RUSTC:-/usr/bin/rustc} cargo=${KVP_MSRV_CARGO:-/usr/bin/cargo}
  local rustdoc=${KVP_MSRV_RUSTDOC:-/usr/bin/rustdoc}
  msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' "$here/rust/kvpages/Cargo.toml")
  [ -n "$msrv" ] || { echo "no rust-version in bindings/rust/kvpages/Cargo.toml"; return 1; }
  if ! "$rustc" --version 2>/dev/null | grep -q "^rustc $msrv\."; then
    echo "skipped: $rustc is not Rust $msrv"
    return 0
  fi
  echo "with $("$rustc" --version) and $("$cargo" --version)"
  (cd "$here/rust" && RUSTC="$rustc" RUSTDOC="$rustdoc" CARGO_TARGET_DIR="$build/bindings/rust-msrv-target" \
    "$cargo" test --offline --workspace)
}
# Go: vet and test the package (also with -tags debug), run the new-user example, then the
# README quick start (go_readme).
go_tests() {
  command -v go >/dev/null || { echo "go not found"; return 1; }
  (export GOFLAGS=-mod=mod GOPROXY=off GOCACHE="${GOCACHE:-$build/bindings/go-cache}" &&
    cd "$here/go/kvpages" && go vet ./... && go test -count=1 ./... && go test -count=1 -tags debug ./... &&
    cd "$here/go/examples" && go vet ./... && go run ./newuser) || return 1
  go_readme
}
# bindings/go/README.md's quick start, run verbatim (the sh block after its go-quickstart marker)
# in a fresh directory, with only KVPAGES_SRC and KVPAGES_PREFIX set as the README asks and
# neither PKG_CONFIG_PATH nor LD_LIBRARY_PATH inherited, offline (GOPROXY=off).
go_readme() {
  local dir script
  dir=$(mktemp -d) || return 1
  script=$(awk '/<!-- go-quickstart/ {m=1; next} m && /^```sh$/ {b=1; next} b && /^```$/ {exit} b' "$here/go/README.md")
  [ -n "$script" ] || { echo "bindings/go/README.md has no go-quickstart block"; rm -rf "$dir"; return 1; }
  (cd "$dir" && env -u PKG_CONFIG_PATH -u LD_LIBRARY_PATH -u CGO_LDFLAGS KVPAGES_SRC="$here/.." \
    KVPAGES_PREFIX="$work/prefix" GOFLAGS=-mod=mod GOPROXY=off GOCACHE="${GOCACHE:-$build/bindings/go-cache}" \
    bash -euo pipefail -c "$script")
  local rc=$?
  rm -rf "$dir"
  return $rc
}
zig_tests() {
  local zig
  if command -v zig >/dev/null; then zig=(zig); else zig=(python3 -m ziglang); fi
  "${zig[@]}" version >/dev/null 2>&1 || { echo "zig not found (pip install ziglang)"; return 1; }
  (cd "$here/zig" && "${zig[@]}" build test --summary all --cache-dir "$build/bindings/zig-cache")
}
python_tests() {
  python3 -c 'import numpy, pytest' || { echo "python3 needs numpy and pytest"; return 1; }
  python3 -m pytest -q -p no:cacheprovider "$here/python/tests"
}

run rust rust
run rust-msrv rust_msrv
run go go_tests
run zig zig_tests
run python python_tests

if [ ${#failed[@]} -gt 0 ]; then
  echo "bindings: FAILED: ${failed[*]}"
  exit 1
fi
echo "bindings: all passed (rust, rust-msrv, go, zig, python)"
