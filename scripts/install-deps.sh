#!/usr/bin/env bash
# Installs what kvpages needs to build and test, from Debian's packages and PyPI only.
# Safe to run any number of times: it installs only what is missing.
set -euo pipefail

debs=(cmake ninja-build g++ pkg-config libcmocka-dev doxygen libxxhash-dev nlohmann-json3-dev
      libdlpack-dev abigail-tools golang-go clang rustc cargo redis-server libhiredis-dev)
# redis-server (redis-tools with it) and libhiredis-dev: the Redis store (KVPAGES_REDIS) and its tests.
# rustc/cargo: Debian bookworm's Rust 1.63 is the Rust bindings' declared minimum (rust-version),
# and bindings/run-tests.sh tests them with it; rustup's newer toolchain is used too when present.
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${KVP_DEPS_PYTHON:-1}" = "1" ]; then
  py_missing=()
  python3 -c "import numpy" 2>/dev/null || py_missing+=(numpy)
  python3 -c "import pytest" 2>/dev/null || py_missing+=(pytest)
  # bindings/zig is written for Zig 0.17 (translate-c module, new @typeInfo layout): pin it.
  [ "$(python3 -m ziglang version 2>/dev/null)" = "0.17.1" ] || py_missing+=("ziglang==0.17.1")
  if [ ${#py_missing[@]} -gt 0 ]; then
    echo "install-deps: installing PyPI packages: ${py_missing[*]}"
    python3 -m pip install -q "${py_missing[@]}"
  fi
  # CMake 3.18, the oldest the build declares (tests/package/embed.sh builds with it), in its own venv.
  cm318="${XDG_CACHE_HOME:-$HOME/.cache}/kvpages-cmake-3.18"
  if [ "$("$cm318/bin/cmake" --version 2>/dev/null | head -n1)" != "cmake version 3.18.4" ]; then
    echo "install-deps: installing CMake 3.18.4 (PyPI) into $cm318"
    python3 -m venv "$cm318" && "$cm318/bin/pip" install -q "cmake==3.18.4.post1"
  fi
fi
