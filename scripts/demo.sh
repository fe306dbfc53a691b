#!/usr/bin/env bash
# Builds kvpages (Release, CUDA if nvcc is present) and runs the CPU inference demo: `kvp demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
KVP_DEPS_PYTHON=0 bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVPAGES_BUILD_TESTS=OFF -DKVPAGES_BUILD_DOCS=OFF \
  -DKVPAGES_CUDA="${KVPAGES_CUDA:-AUTO}" >/dev/null
cmake --build build --target kvp -j"$(nproc)"
exec ./build/kvp demo "$@"
