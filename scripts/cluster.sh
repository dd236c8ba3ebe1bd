#!/usr/bin/env bash
# A local cluster of vela nodes (README, "Running a cluster"): a throwaway
# Redis and PostgreSQL in a temporary folder, and N nodes (3 by default) on
# loopback, each with its own HTTP and media ports. Prints the nodes' URLs
# and runs until Ctrl-C, then stops everything and removes the folder.
#
#   scripts/cluster.sh [--nodes N] [--base-port P] [--spread N] [--sqlite] [--bin PATH]
#                      [--cpus LIST]
#
# --spread N: a room's next participants join on another node once each of
#        its nodes has N (cluster.max_participants_per_node; default 0: a
#        room stays on one node). The nodes' media relays are on either way
#        (QUIC on 127.0.0.1:7877+10*i, a random secret).
# --cpus LIST: pin the nodes to these CPUs (taskset -c LIST), e.g. to keep a
#        load generator on another core (BENCHMARKS.md, S7 and S8).
# --sqlite: the nodes share one SQLite file instead of PostgreSQL.
# --bin: the vela binary to run (default: cargo build --release, then
#        target/release/vela).
# Node i (from 1) serves HTTP on 7870+10*i and media on UDP 7872+10*i;
# Redis listens on 7871, PostgreSQL on 7873 (--base-port changes 7870).
# Logs: <folder>/n<i>.log. VELA_* variables set here (e.g. an API key:
# VELA_AUTH_API_KEY, VELA_AUTH_API_SECRET) configure every node.
# Needs redis-server, and for PostgreSQL initdb/pg_ctl (Debian packages
# redis-server and postgresql).
set -euo pipefail

nodes=3
spread=0
cpus=""
base_port=7870
store=postgres
bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --spread) spread="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --sqlite) store=sqlite; shift ;;
    --bin) bin="$2"; shift 2 ;;
    --base-port) base_port="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 1; }
pg_bin=""
if [ "$store" = postgres ]; then
  pg_bin="$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -1 || true)"
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    echo "PostgreSQL is missing (apt-get install postgresql), or use --sqlite" >&2
    exit 1
  fi
fi
if [ -z "$bin" ]; then
  cargo build --release --bin vela
  bin=target/release/vela
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/vela-cluster.XXXXXX")"
pids=()
pg_data=""
as_postgres=()
[ "$(id -u)" = 0 ] && as_postgres=(runuser -u postgres --)

teardown() {
  trap - INT TERM EXIT
  echo
  echo "stopping the cluster"
  # Nodes first (graceful: each deregisters and ends its rooms), then the
  # services they use.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$pg_data" ]; then
    "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -m fast stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}
trap teardown EXIT
trap 'teardown; exit 130' INT
trap 'teardown; exit 143' TERM

# Redis: nothing saved, gone with the folder.
redis_port=$((base_port + 1))
mkdir -p "$dir/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$dir/redis" >"$dir/redis.log" 2>&1 &
pids+=($!)
redis_url="redis://127.0.0.1:$redis_port"

# The store.
store_env=(VELA_STORE_PATH="$dir/vela.sqlite")
if [ "$store" = postgres ]; then
  pg_port=$((base_port + 3))
  pg_data="$dir/pg/data"
  mkdir -p "$dir/pg"
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: its files belong to `postgres`.
    chmod 711 "$dir"
    chown -R postgres:postgres "$dir/pg"
  fi
  "${as_postgres[@]}" "$pg_bin/initdb" -D "$pg_data" -A trust -U vela -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$dir/pg/log" -w \
    -o "-k $dir/pg -p $pg_port -h 127.0.0.1" start >/dev/null \
    || { cat "$dir/pg/log" >&2; exit 1; }
  "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U vela -d postgres -q -c 'CREATE DATABASE vela' >/dev/null
  store_env+=(VELA_STORE_URL="postgres://vela@127.0.0.1:$pg_port/vela")
fi

pin=()
[ -n "$cpus" ] && pin=(taskset -c "$cpus")

# The media relays' shared secret, new for each cluster.
relay_secret="$(head -c 32 /dev/urandom | base64 | tr -d '\n')"

# One after another: the first creates the store's tables, the next find
# them (two migrations of one empty store at once would collide).
for i in $(seq 1 "$nodes"); do
  http=$((base_port + 10 * i))
  udp=$((base_port + 10 * i + 2))
  tcp=$((base_port + 10 * i + 1)) # ICE over TCP: one port per node
  relay=$((base_port + 10 * i + 7))
  env "${store_env[@]}" \
    VELA_CLUSTER_REDIS_URL="$redis_url" \
    VELA_CLUSTER_NODE_ID="n$i" \
    VELA_CLUSTER_PUBLIC_URL="http://127.0.0.1:$http" \
    VELA_CLUSTER_RELAY_ADDR="127.0.0.1:$relay" \
    VELA_CLUSTER_RELAY_SECRET="$relay_secret" \
    VELA_CLUSTER_MAX_PARTICIPANTS_PER_NODE="$spread" \
    NO_COLOR=1 \
    "${pin[@]}" "$bin" --http "127.0.0.1:$http" --udp-port "$udp" --tcp-port "$tcp" >"$dir/n$i.log" 2>&1 &
  pids+=($!)
  # Ready when /readyz says so (30 s at most).
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 \
    || { echo "node n$i did not get ready; its log:" >&2; tail -20 "$dir/n$i.log" >&2; exit 1; }
done

echo "vela cluster: $nodes nodes, Redis $redis_url, store ${store_env[-1]#*=}, rooms spread past $spread participants per node (0: never)"
echo "folder (logs): $dir"
for i in $(seq 1 "$nodes"); do
  http=$((base_port + 10 * i))
  echo "  n$i  http://127.0.0.1:$http/  (pid ${pids[$i]}, log $dir/n$i.log)"
done
echo "Open any node's page in two tabs and join the same room; kill -9 a node's pid to see its rooms move. Ctrl-C stops everything."

# Until Ctrl-C; say when a node or a service stops on its own.
alive=("${pids[@]}")
while sleep 1; do
  for k in "${!alive[@]}"; do
    pid="${alive[$k]}"
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      if [ "$k" = 0 ]; then echo "redis-server (pid $pid) stopped"; else echo "node n$k (pid $pid) stopped"; fi
      alive[$k]=""
    fi
  done
done
