#!/usr/bin/env bash
# kvpages kvp_concatenate against the peers a user would pick for the same KV write: memcpy and a
# streaming copy of the same bytes, ggml's set_rows (llama.cpp's KV-cache write), numpy fancy
# indexing and torch index_copy_ (scripts/bench_peers.py). A benchmark, not a test: it downloads
# and builds a peer and prints markdown tables.
#
#   scripts/bench-peers.sh [args for bench_peers.py: --quick, --cold, --shape 8x128, --threads 1,2, --reps 9]
#
# The library and the venv (numpy, torch) come from scripts/bench-env.sh (its comments list the
# environment variables and say which torch PyPI gives). ggml comes from the llama-cpp-python
# source distribution on PyPI, pinned below by version and sha256, and is built once into
# $KVP_PEERS_CACHE (default ~/.cache/kvpages-peers) with these choices:
#   GGML_NATIVE=ON     ggml compiled for this CPU, as llama.cpp builds it by default (fair: kvpages
#                      picks its code paths for the running CPU at run time);
#   BUILD_SHARED_LIBS=ON, GGML_CPU=ON, no GPU backend, no BLAS, GGML_OPENMP default (on where the
#                      compiler has OpenMP, as in llama.cpp), no tests or examples, no llama.
# The C harness (scripts/bench_peers_harness.c) is compiled there too, against the public headers
# of both, and rebuilt when its source or the library changes.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/bench-env.sh"

LCPP_VERSION=0.3.36
LCPP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CACHE=${KVP_PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvpages-peers}
SRC="$CACHE/llama_cpp_python-$LCPP_VERSION"
GGML="$CACHE/ggml-$LCPP_VERSION"   # the install prefix: include/, lib/
mkdir -p "$CACHE"

# 1. ggml, from the pinned source distribution (pip checks the hash; so do we).
if [[ ! -e "$GGML/.built" ]]; then
  tarball="$CACHE/llama_cpp_python-$LCPP_VERSION.tar.gz"
  if [[ ! -e "$tarball" ]]; then
    echo "== downloading llama-cpp-python $LCPP_VERSION (source distribution, about 75 MB)" >&2
    printf 'llama-cpp-python==%s --hash=sha256:%s\n' "$LCPP_VERSION" "$LCPP_SHA256" >"$CACHE/req.txt"
    "$VPY" -m pip download --quiet --no-binary :all: --no-deps \
      --require-hashes -r "$CACHE/req.txt" -d "$CACHE" >&2
  fi
  # A download that does not match is removed, so the next run fetches it again.
  echo "$LCPP_SHA256  $tarball" | sha256sum --check --quiet || { rm -f "$tarball"; exit 1; }
  rm -rf "$SRC" && tar -xzf "$tarball" -C "$CACHE"
  # The sdist leaves out ggml.pc.in, which a standalone ggml configure reads for its pkg-config
  # file (not used here).
  touch "$SRC/vendor/llama.cpp/ggml/ggml.pc.in"
  echo "== building ggml (CPU backend) from llama-cpp-python $LCPP_VERSION in $CACHE (minutes, once)" >&2
  cmake -S "$SRC/vendor/llama.cpp/ggml" -B "$CACHE/ggml-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$GGML" -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DGGML_CPU=ON \
    -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_CCACHE=OFF \
    -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF >&2
  cmake --build "$CACHE/ggml-build" -j "$(nproc)" >&2
  cmake --install "$CACHE/ggml-build" >&2
  touch "$GGML/.built"
fi
ggml_base=$(find "$GGML" -name 'libggml-base.so' | head -1)
[[ -n "$ggml_base" ]] || { echo "bench-peers: no libggml-base.so under $GGML (the ggml build failed?)" >&2; exit 1; }
GGML_LIB=$(dirname "$ggml_base")

# 2. The harness, against the public headers of kvpages and ggml.
# One per library path (it links that library by its rpath).
HARNESS="$CACHE/bench_peers_harness-$(printf %s "$KVPAGES_LIBRARY" | sha1sum | cut -c1-12).so"
if [[ ! -e "$HARNESS" || "$ROOT/scripts/bench_peers_harness.c" -nt "$HARNESS" ||
      "$KVPAGES_LIBRARY" -nt "$HARNESS" ]]; then
  echo "== compiling $HARNESS" >&2
  libdir=$(dirname "$KVPAGES_LIBRARY")
  # kvpages' generated headers (version.h, features.h) sit beside the library in a build tree,
  # in ../include in an installed one.
  "${CC:-cc}" -std=c11 -O2 -march=native -fopenmp -fPIC -shared -Wall -Wextra -Werror \
    -o "$HARNESS" "$ROOT/scripts/bench_peers_harness.c" \
    -I "$libdir/include" -I "$libdir/../include" -I "$ROOT/include" -I "$GGML/include" \
    "$KVPAGES_LIBRARY" -L "$GGML_LIB" -lggml -lggml-base -lggml-cpu \
    -Wl,-rpath,"$GGML_LIB" -Wl,-rpath,"$libdir"
fi

# 3. The benchmark.
export KVP_PEERS_HARNESS="$HARNESS" KVP_PEERS_GGML_FROM="llama-cpp-python $LCPP_VERSION"
exec "$VPY" "$ROOT/scripts/bench_peers.py" "$@"
