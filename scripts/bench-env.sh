# shellcheck shell=bash
# Setup shared by the peer benchmarks (scripts/bench-attention-peers.sh, scripts/bench-peers.sh):
# the library and a virtual environment with numpy and torch. Sourced, not run: it sets ROOT,
# KVPAGES_LIBRARY (exported), VPY (the venv's python) and PYTHONPATH (exported, for the binding).
#
# Environment:
#   KVPAGES_LIBRARY     libkvpages.so.1 to use; default: build one (Release, CPU only) in
#                       $KVP_BENCH_BUILD (default build-bench/ in the repository) if it is not there
#   KVP_BENCH_VENV      the venv (default ~/.cache/kvpages-bench-venv, reused between runs)
#   KVP_BENCH_TORCH_INDEX  a pip index URL for torch, e.g. https://download.pytorch.org/whl/cpu
#                       (PyTorch's own CPU-only wheels, about 200 MB) where that host is reachable
#   KVP_BENCH_NO_TORCH=1   skip torch: the benchmarks run without their torch columns
#
# Which torch. PyPI's torch wheel for Linux x86_64 is the CUDA build: the wheel itself (539 MB for
# torch 2.15.0, cp311) plus its CUDA runtime wheels (cuBLAS, cuDNN, NCCL, cuFFT, cuSOLVER,
# cuSPARSE(Lt), NVSHMEM, nvrtc, ...) and triton, about 3.0 GB downloaded and 5.4 GB installed (measured
# 2026-12-06). It runs on the CPU like the CPU build (the CPU kernels, oneDNN and the OpenMP
# runtime are the same). `pip install --no-deps torch` does not work around it: importing it fails
# on the missing CUDA libraries (libcufile.so.0). PyPI has no CPU-only torch for Linux; PyTorch's
# own index has, so KVP_BENCH_TORCH_INDEX selects it where it can be reached. The download happens
# once: the venv is kept and a present, importable torch is never reinstalled.
# If torch cannot be installed or imported, this says why and the benchmark runs without it.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench_name=$(basename "$0" .sh)

# 1. The library.
if [[ -z "${KVPAGES_LIBRARY:-}" ]]; then
  bench_build=${KVP_BENCH_BUILD:-$ROOT/build-bench}
  if [[ ! -e "$bench_build/libkvpages.so.1" ]]; then
    echo "== building libkvpages (Release, CPU) in $bench_build" >&2
    cmake -S "$ROOT" -B "$bench_build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVPAGES_CUDA=OFF \
      -DKVPAGES_BUILD_DOCS=OFF >&2
  fi
  # Rebuild if sources changed (a no-op otherwise).
  cmake --build "$bench_build" --target kvpages -j "$(nproc)" >&2
  KVPAGES_LIBRARY="$bench_build/libkvpages.so.1"
fi
if [[ ! -e "$KVPAGES_LIBRARY" ]]; then
  echo "$bench_name: KVPAGES_LIBRARY=$KVPAGES_LIBRARY does not exist" >&2
  exit 1
fi
export KVPAGES_LIBRARY

# 2. The venv: numpy and ml_dtypes (numpy's bfloat16 / fp8 types, which JAX casts with) always;
# torch unless disabled.
bench_venv=${KVP_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kvpages-bench-venv}
if [[ ! -x "$bench_venv/bin/python" ]]; then
  echo "== creating $bench_venv" >&2
  "${PYTHON:-python3}" -m venv "$bench_venv"
fi
VPY="$bench_venv/bin/python"
if ! "$VPY" -c "import numpy, ml_dtypes" 2>/dev/null; then
  "$VPY" -m pip install --quiet numpy ml_dtypes >&2
fi
if [[ -z "${KVP_BENCH_NO_TORCH:-}" ]] && ! "$VPY" -c "import torch" 2>/dev/null; then
  if [[ -n "${KVP_BENCH_TORCH_INDEX:-}" ]]; then
    echo "== installing torch from $KVP_BENCH_TORCH_INDEX" >&2
    "$VPY" -m pip install torch --index-url "$KVP_BENCH_TORCH_INDEX" >&2 ||
      echo "$bench_name: torch from $KVP_BENCH_TORCH_INDEX failed to install" >&2
  else
    echo "== installing torch from PyPI (the CUDA build: about 3 GB to download, once; see the comments" \
      "in scripts/bench-env.sh)" >&2
    "$VPY" -m pip install torch >&2 ||
      echo "$bench_name: pip install torch failed; running without torch" >&2
  fi
  # The Python scripts report the import error themselves when torch is still missing.
fi

export PYTHONPATH="$ROOT/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
