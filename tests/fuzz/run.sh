#!/bin/sh
# Builds every libFuzzer target (tests/fuzz/tests.cmake) with clang and runs each in turn.
# usage: tests/fuzz/run.sh SECONDS [BUILD_DIR] [TARGET...]
#   SECONDS is the total fuzzing time, divided evenly among the targets run (at least 5 s each);
#   scripts/test.sh passes KVP_FUZZ_SECONDS (default 150: 30 s for each of the 5 targets; the
#   stage takes about 5 minutes on 2 cores with the instrumented build).
#   TARGET... runs only those targets (default: all).
# Seeds: tests/fuzz/corpus/<target>/ (committed) and, for fuzz_deserialize, the golden blobs of
# tests/data; they are copied into the working corpus BUILD_DIR/fuzz-corpus/<target>/, which
# keeps growing across runs.
# Exit status: 0 when every run finished without a finding; non-zero on a crash, leak, sanitizer
# report, failed check or timeout (the reproducer is written to BUILD_DIR/fuzz-artifacts/<target>/;
# rerun one with BUILD_DIR/tests/<target> FILE).
set -eu
secs="${1:-60}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${2:-$root/build-fuzz}"
[ $# -ge 2 ] && shift 2 || shift $#
jobs="${FUZZ_BUILD_JOBS:-2}"
targets="${*:-fuzz_deserialize fuzz_config_json fuzz_metadata_json fuzz_pool fuzz_concatenate}"

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVPAGES_CUDA=OFF -DKVPAGES_FUZZ=ON -DKVPAGES_BUILD_DOCS=OFF -DKVPAGES_BUILD_BENCH=OFF >/dev/null
# shellcheck disable=SC2086
cmake --build "$build" -j"$jobs" --target $targets

count=$(echo $targets | wc -w)
each=$((secs / count))
[ "$each" -ge 5 ] || each=5
status=0
for t in $targets; do
  corpus="$build/fuzz-corpus/$t"
  artifacts="$build/fuzz-artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  [ -d "$root/tests/fuzz/corpus/$t" ] && cp "$root/tests/fuzz/corpus/$t"/* "$corpus"/
  [ "$t" = fuzz_deserialize ] && cp "$root"/tests/data/v1.*/*.kvps "$corpus"/
  echo "== $t: $each s"
  "$build/tests/$t" -max_total_time="$each" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" || { echo "== $t: FINDING (see $artifacts)"; status=1; }
done
exit $status
