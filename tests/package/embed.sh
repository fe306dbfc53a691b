#!/usr/bin/env bash
# add_subdirectory embedding: builds tests/package/embed (a parent project that embeds this source
# tree, CUDA off, static library on) with the oldest CMake the build declares (3.18, installed by
# scripts/install-deps.sh; the system CMake when it is missing), then checks that
#   - the parent's build type stayed empty (kvpages forces none when embedded),
#   - no kvpages test, benchmark or docs target was configured or built,
#   - both consumers run (shared and static library),
#   - libkvpages.a defines no global symbol but the kvp_* API (weak C++ library instantiations aside).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake_bin="${XDG_CACHE_HOME:-$HOME/.cache}/kvpages-cmake-3.18/bin/cmake"
[ -x "$cmake_bin" ] || { echo "embed: CMake 3.18 not installed; using $(command -v cmake)"; cmake_bin=cmake; }

"$cmake_bin" -S "$root/tests/package/embed" -B "$work/b" -G Ninja -DKVP_SOURCE="$root" >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; exit 1; }
"$cmake_bin" --build "$work/b" -j"${KVP_JOBS:-$(nproc)}" >"$work/build.log" 2>&1 || { tail -n 50 "$work/build.log"; exit 1; }

build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$work/b/CMakeCache.txt")
[ -z "$build_type" ] || { echo "embed: kvpages forced the parent's build type to '$build_type'"; exit 1; }
if "$cmake_bin" --build "$work/b" --target help | grep -E '(^|: )(test_|bench_|docs)' >/dev/null; then
  echo "embed: the parent project got kvpages test/bench/docs targets"; exit 1
fi
[ -z "$(find "$work/b" -name 'test_*' -type f -perm -u+x)" ] || { echo "embed: test executables were built"; exit 1; }
"$work/b/consumer_shared"
"$work/b/consumer_static"

foreign=$(nm -g --defined-only "$work/b/kvpages/libkvpages.a" | awk 'NF == 3 && $2 !~ /^[WVuwv]$/ && $3 !~ /^kvp_/')
[ -z "$foreign" ] || { echo "embed: libkvpages.a exports non-API symbols:"; echo "$foreign" | head; exit 1; }
echo "embed: ok ($("$cmake_bin" --version | head -n1); no tests built; shared and static consumers ran;" \
  "libkvpages.a exports $(nm -g --defined-only "$work/b/kvpages/libkvpages.a" | awk '$3 ~ /^kvp_/' | wc -l) kvp_* symbols)"
