#!/bin/sh
# Builds the deserializer fuzz target with clang and runs it for a bounded time.
# usage: tests/fuzz/run.sh SECONDS [BUILD_DIR]
# Exit status: 0 when the run finished without a finding; non-zero on a crash, leak, sanitizer
# report or timeout (the reproducer is written to BUILD_DIR/fuzz-artifacts/).
set -eu
secs="${1:-60}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${2:-$root/build-fuzz}"
jobs="${FUZZ_BUILD_JOBS:-2}"

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVPAGES_CUDA=OFF -DKVPAGES_FUZZ=ON -DKVPAGES_BUILD_DOCS=OFF -DKVPAGES_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target fuzz_deserialize

corpus="$build/fuzz-corpus"
artifacts="$build/fuzz-artifacts"
mkdir -p "$corpus" "$artifacts"
# Seeds: the golden blobs (valid inputs the fuzzer mutates from).
cp "$root"/tests/data/v1.0/*.kvps "$corpus"/

"$build/tests/fuzz_deserialize" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus"
