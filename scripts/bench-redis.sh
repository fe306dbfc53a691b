#!/usr/bin/env bash
# Runs bench_redis (tests/bench/bench_redis.c) against a Redis server and a three-master cluster
# of its own on loopback ports (scripts/with-redis.sh starts and stops them).
#   scripts/bench-redis.sh [BUILD_DIR] [bench_redis options, e.g. --quick]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}
[ $# -gt 0 ] && shift
bench="$build/tests/bench_redis"
if [ ! -x "$bench" ]; then
  echo "bench-redis: $bench not found (configure with -DKVPAGES_BUILD_BENCH=ON and the Redis store on)" >&2
  exit 1
fi
exec bash "$here/scripts/with-redis.sh" "$bench" "$@"
