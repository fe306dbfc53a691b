#!/usr/bin/env bash
# Runs a command with a Redis server and a three-master Redis Cluster of its own, on free
# 127.0.0.1 ports (no persistence, a temporary directory), and stops them all when it ends, even
# on failure. Exit 77 (ctest's SKIP_RETURN_CODE) when redis-server or redis-cli is missing.
#
#   scripts/with-redis.sh PROGRAM [ARGS...]
#
# PROGRAM sees:
#   KVP_TEST_REDIS_URL          redis://127.0.0.1:PORT of the single server
#   KVP_TEST_REDIS_PIDFILE      its pid file (to stop, kill and restart it)
#   KVP_TEST_REDIS_RESTART      a script that starts it again on the same port (after a kill)
#   KVP_TEST_REDIS_CLUSTER_URL  redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3
set -euo pipefail

for tool in redis-server redis-cli python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: $tool is not installed (scripts/install-deps.sh installs redis-server)"
    exit 77
  fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvp-redis.XXXXXX")
stop_all() {
  local f
  for f in "$tmp"/*.pid; do
    [ -e "$f" ] || continue
    local pid
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ]; then
      kill -CONT "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$tmp"
}
trap stop_all EXIT

# Free loopback ports, n of them (the kernel picks; held only while asked, so a race is possible
# but unlikely).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Waits up to 30 s (a loaded machine) for the server of `name` on `port` to answer.
wait_ping() {
  local name=$1 port=$2 i
  for i in $(seq 1 300); do
    if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; then return 0; fi
    sleep 0.1
  done
  echo "with-redis.sh: redis-server $name on port $port did not start; its log:" >&2
  cat "$tmp/$name/log" >&2 || true
  return 1
}

# start NAME PORT [ARGS...]: a daemonized server with its own directory and pid file.
start() {
  local name=$1 port=$2
  shift 2
  mkdir -p "$tmp/$name"
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$tmp/$name" \
    --daemonize yes --pidfile "$tmp/$name.pid" --logfile "$tmp/$name/log" "$@"
  wait_ping "$name" "$port"
}

read -r single c1 c2 c3 b1 b2 b3 < <(free_ports 7)

start single "$single"
cat > "$tmp/restart-single.sh" <<RS
#!/usr/bin/env bash
set -e
redis-server --bind 127.0.0.1 --port $single --save '' --appendonly no --dir "$tmp/single" \
  --daemonize yes --pidfile "$tmp/single.pid" --logfile "$tmp/single/log"
for i in \$(seq 1 300); do
  [ "\$(redis-cli -h 127.0.0.1 -p $single ping 2>/dev/null)" = PONG ] && exit 0
  sleep 0.1
done
exit 1
RS
chmod +x "$tmp/restart-single.sh"

ports=("$c1" "$c2" "$c3")
buses=("$b1" "$b2" "$b3")
for i in 0 1 2; do
  start "node$i" "${ports[$i]}" --cluster-enabled yes --cluster-port "${buses[$i]}" \
    --cluster-config-file "$tmp/node$i/nodes.conf" --cluster-node-timeout 5000
done
redis-cli --cluster create "127.0.0.1:$c1" "127.0.0.1:$c2" "127.0.0.1:$c3" --cluster-yes >"$tmp/create.log" 2>&1 || {
  cat "$tmp/create.log" >&2
  exit 1
}
for i in $(seq 1 300); do
  ok=1
  for p in "${ports[@]}"; do
    redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
  done
  [ "$ok" = 1 ] && break
  sleep 0.1
done
if [ "$ok" != 1 ]; then
  echo "with-redis.sh: the cluster did not reach cluster_state:ok" >&2
  exit 1
fi

export KVP_TEST_REDIS_URL="redis://127.0.0.1:$single"
export KVP_TEST_REDIS_PIDFILE="$tmp/single.pid"
export KVP_TEST_REDIS_RESTART="$tmp/restart-single.sh"
export KVP_TEST_REDIS_CLUSTER_URL="redis+cluster://127.0.0.1:$c1,127.0.0.1:$c2,127.0.0.1:$c3"
status=0
"$@" || status=$?
exit "$status"
