#!/usr/bin/env bash
# ABI checks against a configured and built tree (scripts/test.sh runs it on build-ci):
#   1. header tests: kvpages.h and every public header alone as C99 (-Wall -Wextra -Wpedantic
#      -Werror -Wstrict-prototypes) and as C++11; headertest.c / headertest.cpp
#   2. layout pins (layout.c, C11 _Static_assert)
#   3. exported symbols == public declarations == version script == dlopen table (check_exports.sh)
#   4. abidiff of the library against the committed baseline tests/abi/kvpages.abi
# Usage: tests/abi/run.sh <build dir>
set -uo pipefail
build=$(cd "${1:?usage: run.sh <build dir>}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
inc=(-I"$root/include" -I"$build/include")
cflags=(-std=c99 -Wall -Wextra -Wpedantic -Werror -Wstrict-prototypes)
# C++: positional partial initialisers (the *_INIT macros) are idiomatic C++ value-initialisation.
cxxflags=(-std=c++11 -Wall -Wextra -Wpedantic -Werror -Wno-missing-field-initializers)
failed=()
step() {  # <name> <command...>
  local name=$1
  shift
  if "$@"; then echo "abi: $name ok"; else echo "abi: $name FAILED"; failed+=("$name"); fi
}

headers_alone() {
  local h ok=0
  for h in "$root"/include/kvpages/*.h "$root/include/kvpages.h"; do
    local rel=${h#"$root/include/"}
    printf '#include <%s>\n#include <%s>\nint headertest_alone(void);\nint headertest_alone(void) { return 0; }\n' \
      "$rel" "$rel" >"$work/alone.c"
    cc "${cflags[@]}" "${inc[@]}" -c "$work/alone.c" -o "$work/alone.o" || { echo "  $rel is not self-contained C99"; ok=1; }
    cp "$work/alone.c" "$work/alone.cpp"
    c++ "${cxxflags[@]}" "${inc[@]}" -c "$work/alone.cpp" -o "$work/alone.o" || { echo "  $rel fails as C++11"; ok=1; }
  done
  return $ok
}
headertest_c() { cc "${cflags[@]}" "${inc[@]}" -c "$here/headertest.c" -o "$work/headertest_c.o"; }
headertest_cpp() { c++ "${cxxflags[@]}" "${inc[@]}" -c "$here/headertest.cpp" -o "$work/headertest_cpp.o"; }
layout() { cc -std=c11 -Wall -Wextra -Wpedantic -Werror "${inc[@]}" -c "$here/layout.c" -o "$work/layout.o"; }
exports() { bash "$here/check_exports.sh" "$build/libkvpages.so.1"; }
abidiff_baseline() {
  local lib rc
  lib=$(bash "$here/abi_lib.sh" "$build") || return 1
  bash "$here/abidw.sh" "$lib" "$(dirname "$lib")/include" "$work/current.abi" || return 1
  # Added functions are compatible (reported, not failed); any other difference fails.
  abidiff --no-added-syms --suppressions "$here/kvpages.suppr" "$here/kvpages.abi" "$work/current.abi" >"$work/abidiff.txt"
  rc=$?
  abidiff --suppressions "$here/kvpages.suppr" "$here/kvpages.abi" "$work/current.abi" >"$work/abidiff-all.txt"
  if [ $rc -ne 0 ]; then
    cat "$work/abidiff.txt"
    echo "abi: the library's ABI differs from tests/abi/kvpages.abi (abidiff exit $rc)."
    echo "abi: if the change is intended and allowed by docs/abi-policy.md, run tests/abi/update-baseline.sh"
    return 1
  fi
  if grep -q 'Added function' "$work/abidiff-all.txt"; then
    grep -E '^\s+\[A\]' "$work/abidiff-all.txt" || true
    echo "abi: note: functions added since the baseline (compatible); refresh it with tests/abi/update-baseline.sh"
  fi
}

step "headers-alone (C99 + C++11)" headers_alone
step "headertest.c (C99)" headertest_c
step "headertest.cpp (C++11)" headertest_cpp
step "layout pins" layout
step "exported symbols" exports
step "abidiff baseline" abidiff_baseline

if [ ${#failed[@]} -gt 0 ]; then
  echo "abi: FAILED: ${failed[*]}"
  exit 1
fi
echo "abi: all checks passed"
