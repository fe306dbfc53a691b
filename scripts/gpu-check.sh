#!/usr/bin/env bash
# The GPU checks in one call, for a machine with an NVIDIA GPU (H100/H200): build with CUDA ON,
# run the GPU cmocka tests (`ctest -L gpu`: CUDA vs CPU byte identity, graph capture and replay,
# device-side validation through the async error), the Python binding with torch CUDA tensors
# (when torch is there), then the CUDA concatenate benchmark and the
# serialization benchmark with the cache on the GPU. Logs go to $OUT (or ./gpu-check-out).
#
#   bash scripts/gpu-check.sh --fetch      # here, with apt: download the build dependencies'
#                                          # .deb files into .gpu-deps/ (git-ignored)
#   bash scripts/gpu-check.sh [--max-tokens N] [--skip-bench]
#                                          # there: build, test, benchmark
#
# Machines without package registries: carry .gpu-deps/; the script unpacks the .deb files with
# `dpkg -x` into .gpu-deps/root (never into /) and points pkg-config, CMake and the loader there.
# Without a GPU it builds, reports the GPU tests as skipped and stops before the benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEPS_DIR=$ROOT/.gpu-deps
DEB_PACKAGES=(libxxhash-dev libxxhash0 libcmocka-dev libcmocka0 nlohmann-json3-dev libdlpack-dev
  pkgconf pkgconf-bin libpkgconf3)

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p "$DEPS_DIR"
  (cd "$DEPS_DIR" && apt-get download "${DEB_PACKAGES[@]}") || { echo "gpu-check: apt-get download failed"; exit 1; }
  ls -l "$DEPS_DIR"/*.deb
  exit 0
fi

MAX_TOKENS=16384
BENCH=1
while [ $# -gt 0 ]; do
  case $1 in
    --max-tokens) MAX_TOKENS=$2; shift 2 ;;
    --skip-bench) BENCH=0; shift ;;
    *) echo "usage: bash scripts/gpu-check.sh [--fetch | --max-tokens N | --skip-bench]"; exit 2 ;;
  esac
done

OUT_DIR=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT_DIR"
BUILD=$ROOT/build-gpu
t0=$SECONDS
log() { echo "gpu-check [$((SECONDS - t0)) s]: $*"; }

# 1. Carried dependencies: unpack next to the tree and point the tools at them.
if ls "$DEPS_DIR"/*.deb >/dev/null 2>&1; then
  R=$DEPS_DIR/root
  rm -rf "$R"
  mkdir -p "$R"
  for f in "$DEPS_DIR"/*.deb; do dpkg -x "$f" "$R"; done
  # The .pc files name /usr (as prefix=/usr or in -I/-L flags); make them name the unpacked tree.
  find "$R" -name '*.pc' -exec sed -i -e "s|^prefix=/usr|prefix=$R/usr|" -e "s|-I/usr/|-I$R/usr/|g" \
    -e "s|-L/usr/|-L$R/usr/|g" {} +
  MA=$(ls "$R/usr/lib" | grep -- '-linux-gnu$' | head -1)
  export PKG_CONFIG_PATH="$R/usr/lib/$MA/pkgconfig:$R/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export CMAKE_PREFIX_PATH="$R/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$R/usr/lib/$MA${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export CPATH="$R/usr/include${CPATH:+:$CPATH}"
  if ! command -v pkg-config >/dev/null 2>&1; then
    mkdir -p "$R/bin"
    ln -sf "$R/usr/bin/pkgconf" "$R/bin/pkg-config"
    export PATH="$R/bin:$PATH"
  fi
  log "using the carried packages in $R"
fi

# 2. Machine facts.
{
  date -u '+date: %Y-%m-%d %H:%M UTC'
  echo "host: $(uname -srm), $(nproc) CPUs"
  command -v nvcc >/dev/null && nvcc --version | tail -2
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv
} 2>&1 | tee "$OUT_DIR/machine.txt"

# 3. Build (native architecture when a GPU is present: one arch builds fastest).
ARCH=native
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || ARCH="80-real;90-real;90-virtual"
log "configure (CUDA architectures: $ARCH)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVPAGES_CUDA=ON -DKVPAGES_BUILD_DOCS=OFF \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" >"$OUT_DIR/configure.log" 2>&1 ||
  { tail -40 "$OUT_DIR/configure.log"; echo "gpu-check: configure failed"; exit 1; }
log "build"
cmake --build "$BUILD" -j"$(nproc)" >"$OUT_DIR/build.log" 2>&1 ||
  { grep -E "error|FAILED" "$OUT_DIR/build.log" | head -40; echo "gpu-check: build failed"; exit 1; }

# 4. Correctness: the GPU tests, then the rest of the suite (CPU tests, on this machine's CPU).
log "GPU tests"
ctest --test-dir "$BUILD" -L gpu --output-on-failure 2>&1 | tee "$OUT_DIR/gpu-tests.log"
gpu_rc=${PIPESTATUS[0]}
log "Python bindings with torch CUDA tensors"
if python3 -c 'import torch, numpy' >/dev/null 2>&1; then
  KVPAGES_LIBRARY="$BUILD/libkvpages.so.1" python3 bindings/python/tests/test_cuda_torch.py 2>&1 |
    tee "$OUT_DIR/python-cuda.log"
  py_rc=${PIPESTATUS[0]}
else
  echo "gpu-check: python3 lacks torch or numpy; the Python CUDA test was not run" | tee "$OUT_DIR/python-cuda.log"
  py_rc=0
fi
gpu_rc=$((gpu_rc | py_rc))
log "the other tests"
# (cuda.kernel_resources recompiles the device code; CI runs it, so it does not spend GPU time here.)
ctest --test-dir "$BUILD" -LE gpu -E kernel_resources -j"$(nproc)" --output-on-failure >"$OUT_DIR/other-tests.log" 2>&1
all_rc=$?
tail -3 "$OUT_DIR/other-tests.log"
if grep -q "Skipped" "$OUT_DIR/gpu-tests.log"; then
  echo "gpu-check: the GPU tests were skipped (no usable CUDA device); stopping before the benchmarks"
  exit $((gpu_rc | all_rc))
fi

# 5. Benchmarks.
if [ "$BENCH" = 1 ]; then
  log "bench_cuda_concatenate (up to $MAX_TOKENS tokens)"
  "$BUILD/tests/bench_cuda_concatenate" "$MAX_TOKENS" 2>&1 | tee "$OUT_DIR/bench_cuda_concatenate.md"
  log "bench_serialize --cuda"
  "$BUILD/tests/bench_serialize" --cuda --mib 256 --reps 5 2>&1 | tee "$OUT_DIR/bench_serialize_cuda.txt"
fi
log "done: GPU tests rc=$gpu_rc, other tests rc=$all_rc; logs in $OUT_DIR"
exit $((gpu_rc | all_rc))
