#!/usr/bin/env bash
# Prints the path of a libkvpages.so.1 with DWARF debug info for abidw: the one in <build dir>
# when it has debug info, otherwise one built (once, then incrementally) in <build dir>/abi-debug
# with RelWithDebInfo and only the library target. Shared by run.sh and update-baseline.sh.
set -euo pipefail
build=${1:?usage: abi_lib.sh <build dir>}
root=$(cd "$(dirname "$0")/../.." && pwd)
lib="$build/libkvpages.so.1"
if [ -f "$lib" ] && readelf -S "$lib" 2>/dev/null | grep -q '\.debug_info'; then
  echo "$lib"
  exit 0
fi
dbg="$build/abi-debug"
cmake -S "$root" -B "$dbg" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVPAGES_CUDA=OFF \
  -DKVPAGES_BUILD_TESTS=OFF -DKVPAGES_BUILD_BENCH=OFF -DKVPAGES_BUILD_DOCS=OFF >"$dbg.log" 2>&1 ||
  { cat "$dbg.log" >&2; exit 1; }
cmake --build "$dbg" --target kvpages -j"${KVP_JOBS:-2}" >>"$dbg.log" 2>&1 || { tail -n 40 "$dbg.log" >&2; exit 1; }
echo "$dbg/libkvpages.so.1"
