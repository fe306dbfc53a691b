#!/usr/bin/env bash
# Runs every binding's own test suite against a built kvpages tree:
#   Rust (cargo test, with the newest toolchain and again with the declared minimum, Rust 1.63),
#   Go (go vet, go test, go test -tags debug), Zig (zig build test),
#   Python (pip install ./bindings/python into a venv, an import check, new_user.py, pytest).
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
  local target="$build/bindings/rust-target"
  (cd "$here/rust" && CARGO_TARGET_DIR="$target" cargo test --offline --workspace &&
    for ex in kvpages/examples/*.rs; do  # the examples run, not only compile: they assert what they show
      CARGO_TARGET_DIR="$target" cargo run --offline --quiet -p kvpages --example "$(basename "$ex" .rs)" \
        >/dev/null || { echo "example $ex failed"; exit 1; }
    done &&
    # The install-prefix acceptance: only PKG_CONFIG_PATH, no LD_LIBRARY_PATH (the rpath finds the library).
    env -u LD_LIBRARY_PATH -u KVPAGES_LIBRARY CARGO_TARGET_DIR="$target" cargo run --offline --quiet -p kvpages \
      --example new_user >/dev/null || { echo "new_user without LD_LIBRARY_PATH failed (rpath)"; exit 1; } &&
    # The missing-library message names PKG_CONFIG_PATH.
    { out=$(env PKG_CONFIG_PATH=/nonexistent PKG_CONFIG_LIBDIR=/nonexistent CARGO_TARGET_DIR="$build/bindings/rust-notfound-target" \
        cargo build --offline -p kvpages-sys 2>&1); ! [ $? -eq 0 ] && grep -q "Set PKG_CONFIG_PATH" <<<"$out"; } ||
      { echo "a missing kvpages.pc did not fail with a PKG_CONFIG_PATH message"; exit 1; } &&
    # The bundled feature: the C library built from this tree by CMake (its own target dir under the
    # build dir, so a rerun only rebuilds what changed), no pkg-config, no LD_LIBRARY_PATH.
    env -u PKG_CONFIG_PATH -u LD_LIBRARY_PATH CARGO_TARGET_DIR="$build/bindings/rust-bundled-target" \
      cargo test --offline -p kvpages --features bundled --test library --test coverage)
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
# The Zig version the binding states (minimum_zig_version in build.zig.zon, also in the README and
# docs/bindings.md) is the one tested: `zig` on PATH or PyPI's ziglang, whichever is that version.
zig_tests() {
  local want have zig=()
  want=$(sed -n 's/^ *\.minimum_zig_version = "\(.*\)",$/\1/p' "$here/zig/build.zig.zon")
  [ -n "$want" ] || { echo "no minimum_zig_version in bindings/zig/build.zig.zon"; return 1; }
  for candidate in "zig" "python3 -m ziglang"; do
    have=$($candidate version 2>/dev/null) || continue
    if [ "$have" = "$want" ]; then read -ra zig <<<"$candidate"; break; fi
    echo "$candidate is Zig $have, not $want"
  done
  [ ${#zig[@]} -gt 0 ] || { echo "Zig $want not found (pip install ziglang==$want)"; return 1; }
  echo "with Zig $want (${zig[*]})"
  (cd "$here/zig" && "${zig[@]}" build test --summary all --cache-dir "$build/bindings/zig-cache")
}
# Python: a venv under the build dir (made once, then reused; pip's cache keeps reinstalls fast)
# gets the package the way a user installs it, `pip install ./bindings/python` (scikit-build-core
# builds libkvpages from this tree into the wheel; its CMake build dir is kept for incremental
# rebuilds), plus numpy, pytest and ml_dtypes (pinned). With LD_LIBRARY_PATH and
# KVPAGES_LIBRARY unset, an import round-trips a value and examples/new_user.py runs against the
# installed wheel. Then pytest runs the source tree against the installed prefix
# (KVPAGES_LIBRARY), in the same venv.
python_venv="$build/bindings/python-venv"
python_tests() {
  local py="$python_venv/bin/python" t0
  [ -x "$py" ] || python3 -m venv "$python_venv" || { echo "python3 -m venv failed"; return 1; }
  t0=$SECONDS
  (cd "$here/.." && env -u LD_LIBRARY_PATH -u KVPAGES_LIBRARY "$py" -m pip install -q --disable-pip-version-check \
    ./bindings/python "numpy>=1.22" "pytest>=7" "ml_dtypes==0.5.4" \
    --config-settings=build-dir="$build/bindings/python-wheel-build") || { echo "pip install ./bindings/python failed"; return 1; }
  echo "pip install ./bindings/python: $((SECONDS - t0)) s"
  (cd "$build" && env -u LD_LIBRARY_PATH -u KVPAGES_LIBRARY -u PYTHONPATH "$py" -c '
import numpy as np, kvpages
assert kvpages.library_path == kvpages._ffi.BUNDLED_LIBRARY, kvpages.library_path
cfg = kvpages.Config.create(num_hidden_layers=1, num_kv_heads=1, head_dim=128, max_model_length=16,
                            page_size=16, dtype="bf16", budget_bytes=1 << 20)
with kvpages.Cache(cfg) as cache, kvpages.Metadata.build(cfg, [(0, 1, [1])])[0] as md:
    key = np.full((1, 1, 128), 1.5, np.float32)
    cache.concatenate(0, key, -key, md)
    assert cache.read_tokens(0, [1], 0, 1, "keys", "f32")[0, 0, 0] == 1.5
print("import kvpages from the wheel:", kvpages.version(), kvpages.library_path)' &&
    env -u LD_LIBRARY_PATH -u KVPAGES_LIBRARY -u PYTHONPATH "$py" "$here/python/examples/new_user.py" >/dev/null) ||
    { echo "the pip-installed package failed"; return 1; }
  KVPAGES_REQUIRE_ML_DTYPES=1 "$py" -m pytest -q -p no:cacheprovider "$here/python/tests"
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
