#!/usr/bin/env bash
# Runs the whole kvpages test suite, the same way on a developer machine and in CI:
#   1. the main build (CUDA when nvcc is present) and every cmocka test (GPU tests skip without a GPU)
#   2. the Doxygen docs build (warnings are errors)
#   3. install + package consumers (pkg-config, find_package, dlopen) and ABI checks
#   4. a build with CUDA switched off, and its tests (plus the GPU tests against an emulated CUDA runtime)
#   5. AddressSanitizer + UndefinedBehaviorSanitizer build, and its tests
#   5b. ThreadSanitizer build of the library and tests/unit/test_threads.c (the documented
#      concurrent uses), test_pool_tiers (two pools sharing a store) and test_group (shards
#      written in parallel), no report allowed
#   6. every fuzz target (tests/fuzz) for a bounded time, KVP_FUZZ_SECONDS in all (clang/libFuzzer)
#   7. the bindings' own test runners (Rust, Go, Zig, Python)
# Each stage reports; the script exits non-zero if any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
JOBS=${KVP_JOBS:-$(nproc)}
FUZZ_SECONDS=${KVP_FUZZ_SECONDS:-150}

bash scripts/install-deps.sh || { echo "install-deps failed"; exit 1; }

passed=0
failed=0
failed_names=()
stage() {
  local name=$1
  shift
  echo
  echo "==== stage: $name"
  local t0=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    echo "==== stage $name: ok ($((SECONDS - t0)) s)"
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    echo "==== stage $name: FAILED ($((SECONDS - t0)) s)"
  fi
}

build_and_test() {  # <build dir> <extra cmake args...>
  local dir=$1
  shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >"$dir.configure.log" 2>&1 ||
    { cat "$dir.configure.log"; return 1; }
  cmake --build "$dir" -j"$JOBS" || return 1
  # -C slow: also the slow tests that a plain `ctest` leaves out (the "slow" configuration).
  ctest --test-dir "$dir" -C slow --output-on-failure -j"$JOBS"
}

main_tests() { build_and_test build-ci -DKVPAGES_CUDA="${KVPAGES_CUDA:-AUTO}"; }
docs() { cmake --build build-ci --target docs; }
package() { bash tests/package/run.sh "$ROOT/build-ci"; }
abi() { [ -x tests/abi/run.sh ] || [ -f tests/abi/run.sh ] || return 0; bash tests/abi/run.sh "$ROOT/build-ci"; }
# (python3 as on PATH: the one scripts/install-deps.sh gave numpy and pytest, for cuemu.python_binding)
cpu_only() {
  build_and_test build-ci-nocuda -DKVPAGES_CUDA=OFF -DKVPAGES_BUILD_BENCH=OFF -DKVPAGES_CUDA_EMULATION_TESTS=ON \
    -DPython3_EXECUTABLE="$(command -v python3)"
}
sanitizers() {
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    build_and_test build-ci-asan -DKVPAGES_CUDA=OFF -DKVPAGES_SANITIZE=ON -DKVPAGES_BUILD_BENCH=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo
}
# Only the library and the tests that run kvpages on several threads are built (a few minutes on
# 2 cores): the threads test, two pools sharing a store (and their writer threads), threads
# sharing a directory store (its file I/O outside its lock), a store listed while another thread
# writes, a group writing its shards in parallel.
# Any report fails.
tsan() {
  local dir=build-ci-tsan
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVPAGES_CUDA=OFF -DKVPAGES_TSAN=ON \
    -DKVPAGES_BUILD_BENCH=OFF -DKVPAGES_BUILD_DOCS=OFF >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; return 1; }
  cmake --build "$dir" -j"$JOBS" --target test_threads test_pool_tiers test_pool_sequence test_store test_store_list test_group || return 1
  TSAN_OPTIONS=halt_on_error=1:abort_on_error=1:second_deadlock_stack=1 \
    ctest --test-dir "$dir" -R '^unit\.(test_threads|test_pool_tiers|test_pool_sequence|test_store|test_store_list|test_group)$' --output-on-failure
}
fuzz() { [ -f tests/fuzz/run.sh ] || return 0; bash tests/fuzz/run.sh "$FUZZ_SECONDS"; }
# The bindings run beside a Redis server and cluster of their own (scripts/with-redis.sh), so their
# Redis round trips run too; without redis-server they run alone and those tests skip.
with_redis() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then bash scripts/with-redis.sh "$@"; else "$@"; fi
}
bindings() { [ -f bindings/run-tests.sh ] || return 0; with_redis bash bindings/run-tests.sh "$ROOT/build-ci"; }

stage main-build-and-tests main_tests
stage docs docs
stage package package
stage abi abi
stage cpu-only-build-and-tests cpu_only
stage asan-ubsan sanitizers
stage tsan tsan
stage fuzz fuzz
stage bindings bindings

echo
if [ $failed -gt 0 ]; then
  echo "failed stages: ${failed_names[*]}"
fi
echo "stages: $passed passed, $failed failed"
[ $failed -eq 0 ]
