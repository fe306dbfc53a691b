#!/usr/bin/env bash
# kvpages attention vs PyTorch's CPU scaled_dot_product_attention (scripts/bench_attention_peers.py),
# in a virtual environment of its own. A benchmark, not a test: it prints markdown tables.
#
#   scripts/bench-attention-peers.sh [args for bench_attention_peers.py, e.g. --quick, --decode,
#                                     --prompts 512,2048, --reps 5, --threads 2]
#
# Environment:
#   KVPAGES_LIBRARY     libkvpages.so.1 to use; default: build one (Release, CPU only) in
#                       $KVP_BENCH_BUILD (default build-bench/ in the repository) if it is not there
#   KVP_BENCH_VENV      the venv (default ~/.cache/kvpages-bench-venv, reused between runs)
#   KVP_BENCH_TORCH_INDEX  a pip index URL for torch, e.g. https://download.pytorch.org/whl/cpu
#                       (PyTorch's own CPU-only wheels, about 200 MB) where that host is reachable
#   KVP_BENCH_NO_TORCH=1   skip torch: only the kvpages side runs
#
# Which torch. PyPI's torch wheel for Linux x86_64 is the CUDA build: the wheel itself (539 MB for
# torch 2.15.0, cp311) plus its CUDA runtime wheels (cuBLAS, cuDNN, NCCL, cuFFT, cuSOLVER,
# cuSPARSE(Lt), NVSHMEM, nvrtc, ...) and triton, about 3.0 GB downloaded and 5.4 GB installed (measured
# 2026-12-06). It runs on the CPU like the CPU build (the CPU kernels, oneDNN and the OpenMP
# runtime are the same). `pip install --no-deps torch` does not work around it: importing it fails
# on the missing CUDA libraries (libcufile.so.0). PyPI has no CPU-only torch for Linux; PyTorch's
# own index has, so KVP_BENCH_TORCH_INDEX selects it where it can be reached. The download happens
# once: the venv is kept and a present, importable torch is never reinstalled.
# If torch cannot be installed or imported, the script says why and runs the kvpages side alone.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${KVP_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kvpages-bench-venv}
BUILD=${KVP_BENCH_BUILD:-$ROOT/build-bench}
PY=${PYTHON:-python3}

# 1. The library.
if [[ -z "${KVPAGES_LIBRARY:-}" ]]; then
  if [[ ! -e "$BUILD/libkvpages.so.1" ]]; then
    echo "== building libkvpages (Release, CPU) in $BUILD" >&2
    cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVPAGES_CUDA=OFF \
      -DKVPAGES_BUILD_DOCS=OFF >&2
  fi
  # Rebuild if sources changed (a no-op otherwise).
  cmake --build "$BUILD" --target kvpages -j "$(nproc)" >&2
  KVPAGES_LIBRARY="$BUILD/libkvpages.so.1"
fi
if [[ ! -e "$KVPAGES_LIBRARY" ]]; then
  echo "bench-attention-peers: KVPAGES_LIBRARY=$KVPAGES_LIBRARY does not exist" >&2
  exit 1
fi
export KVPAGES_LIBRARY

# 2. The venv: numpy always; torch unless disabled.
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "== creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
if ! "$VPY" -c "import numpy" 2>/dev/null; then
  "$VPY" -m pip install --quiet numpy >&2
fi
if [[ -z "${KVP_BENCH_NO_TORCH:-}" ]] && ! "$VPY" -c "import torch" 2>/dev/null; then
  if [[ -n "${KVP_BENCH_TORCH_INDEX:-}" ]]; then
    echo "== installing torch from $KVP_BENCH_TORCH_INDEX" >&2
    "$VPY" -m pip install torch --index-url "$KVP_BENCH_TORCH_INDEX" >&2 ||
      echo "bench-attention-peers: torch from $KVP_BENCH_TORCH_INDEX failed to install" >&2
  else
    echo "== installing torch from PyPI (the CUDA build: about 3 GB to download, once; see the comments" \
      "at the top of this script)" >&2
    "$VPY" -m pip install torch >&2 ||
      echo "bench-attention-peers: pip install torch failed; running the kvpages side only" >&2
  fi
  # The Python script reports the import error itself when torch is still missing.
fi

# 3. The benchmark.
export PYTHONPATH="$ROOT/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
exec "$VPY" "$ROOT/scripts/bench_attention_peers.py" "$@"
