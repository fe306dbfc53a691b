#!/usr/bin/env bash
# Builds kvpages (Release, CUDA if nvcc is present) and runs the CPU inference demo, `kvp demo`,
# twice against the same storage tiers: a memory tier, a directory store (build/demo-tiers, emptied
# first, so every invocation starts cold) and, where redis-server is installed, a three-master
# Redis Cluster of its own on loopback ports (scripts/with-redis.sh starts and stops it). The first
# run computes every prompt and persists its cached prefix pages to the tiers at the end; the
# second run is a restarted process: its prompts' pages come back from disk instead of being
# computed; with Redis, a third run is another server of the fleet (its own empty disk, the same
# Redis Cluster), whose pages come from Redis. Every run makes the same attention and read-back
# checks. Arguments go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KVP_DEMO_BUILT:-}" ]; then
  KVP_DEPS_PYTHON=0 bash scripts/install-deps.sh
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVPAGES_BUILD_TESTS=OFF -DKVPAGES_BUILD_DOCS=OFF \
    -DKVPAGES_CUDA="${KVPAGES_CUDA:-AUTO}" >/dev/null
  cmake --build build --target kvp -j"$(nproc)"
  export KVP_DEMO_BUILT=1
  # With a Redis Cluster of its own when the server and the library's Redis store are there.
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null && ./build/kvp version | grep -q "redis=on"; then
    exec bash scripts/with-redis.sh bash "$0" "$@"
  fi
fi

tiers=(--disk build/demo-tiers)
[ -n "${KVP_TEST_REDIS_CLUSTER_URL:-}" ] && tiers+=(--redis "$KVP_TEST_REDIS_CLUSTER_URL")
rm -rf build/demo-tiers build/demo-tiers-2
echo "==== kvp demo, first run: cold tiers (${tiers[*]})"
./build/kvp demo "${tiers[@]}" "$@"
echo
echo "==== kvp demo, second run: a restarted process with the same tiers"
./build/kvp demo --quiet "${tiers[@]}" "$@"
if [ -n "${KVP_TEST_REDIS_CLUSTER_URL:-}" ]; then
  echo
  echo "==== kvp demo, third run: another server (an empty disk of its own) on the same Redis Cluster"
  ./build/kvp demo --quiet --disk build/demo-tiers-2 --redis "$KVP_TEST_REDIS_CLUSTER_URL" "$@"
fi
