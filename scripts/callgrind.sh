#!/usr/bin/env bash
# Instructions per forwarded packet under callgrind (issue 22 item 4): a
# measure of the server's per-packet path that this machine's noise (other
# processes, frequency, the loopback's cost) does not move, to judge changes
# to that path. BENCHMARKS.md, "Callgrind gate", has the figures and how to
# read them.
#
# For each scenario it starts the release server under
# `valgrind --tool=callgrind` with instrumentation off (joins, ICE and DTLS
# run at valgrind's base speed), drives it with vela-loadtest, switches
# instrumentation on once media flows, zeroes the counters, and after
# SECONDS_MEASURED dumps them: instructions (Ir, every thread of the server) divided
# by the packets it forwarded in between (`vela_packets_forwarded_total`
# from /metrics, read right after the zeroing and right before the dump).
# The loads are small (callgrind runs the server ~50x slower): each must be
# one the instrumented server keeps up with, or packets wait in the socket
# and are handled in batches, which costs less per packet than live traffic.
#   s2: one 10-party audio room (S2's shape), 1 of the 10 speaking;
#   s4: S4's fan-out (1 publisher of audio and video) to 3 subscribers, the
#       video one 500 kbit/s layer (with simulcast the layer each subscriber
#       gets follows its estimate, which the slowed server moves, and the
#       mix of audio and video packets with it).
#
#   scripts/callgrind.sh                    # prints the figures
#   scripts/callgrind.sh --record FILE      # ... and writes them to FILE
#   scripts/callgrind.sh --compare FILE     # fails when a figure is more than
#                                           # TOLERANCE % (default 10) above FILE's;
#                                           # exits 2 when the packet rate differs
#                                           # from FILE's by more than 10 %: the
#                                           # load was not the same (a busy machine
#                                           # slowed the server or the generator),
#                                           # and time-driven work (timers, RTCP,
#                                           # estimates) then weighs differently on
#                                           # each packet: run it again on a quieter one
# Environment: SECONDS_MEASURED (default 10), TOLERANCE (percent, default 10),
# SERVER_BIN / LOADTEST_BIN (default: built here, target/release), OUT
# (default loadtest-out/callgrind: callgrind's files and the logs).
# Not part of scripts/test.sh: it takes ~2-3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=print FILE=""
case "${1:-}" in
  --record) MODE=record FILE=${2:?--record FILE} ;;
  --compare) MODE=compare FILE=${2:?--compare FILE} ;;
  "") ;;
  *) echo "usage: $0 [--record FILE | --compare FILE]" >&2; exit 2 ;;
esac
MEASURE=${SECONDS_MEASURED:-10}
TOLERANCE=${TOLERANCE:-10}
OUT=${OUT:-loadtest-out/callgrind}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v valgrind >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends valgrind
fi
if [ -z "${SERVER_BIN:-}" ] || [ -z "${LOADTEST_BIN:-}" ]; then
  # The generator's Opus encoder (the opus crate builds libopus with cmake).
  if ! command -v cmake >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cmake
  fi
  cargo build --release --locked -p vela-signaling -p vela-loadtest
fi
SERVER_BIN=$(realpath "${SERVER_BIN:-target/release/vela}")
LOADTEST_BIN=$(realpath "${LOADTEST_BIN:-target/release/vela-loadtest}")
mkdir -p "$OUT"
OUT=$(realpath "$OUT")

# Two free ports (TCP for HTTP, UDP for media), found by binding port 0.
free_ports() {
  python3 - <<'EOF'
import socket
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM); t.bind(("127.0.0.1", 0))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
print(t.getsockname()[1], u.getsockname()[1])
EOF
}

forwarded() {
  curl -sf "http://127.0.0.1:$HTTP/metrics" | awk '$1 == "vela_packets_forwarded_total" { print $2 }'
}

SERVER_PID="" GEN_PID=""
cleanup() {
  [ -n "$GEN_PID" ] && kill "$GEN_PID" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

# measure NAME LOADTEST_ARGS...: adds "NAME IR PACKETS IR_PER_PACKET" to RESULTS.
RESULTS=""
measure() {
  local name=$1
  shift
  read -r HTTP UDP < <(free_ports)
  local dir="$OUT/$name"
  rm -rf "$dir"
  mkdir -p "$dir/store"
  # The generator's core is 1 when there are two; the server's 0.
  local srv=() gen=()
  if [ "$(nproc)" -ge 2 ]; then srv=(taskset -c 0); gen=(taskset -c 1); fi
  (cd "$dir/store" && VELA_LOG=warn exec "${srv[@]}" valgrind --tool=callgrind \
    --instr-atstart=no --callgrind-out-file="$dir/callgrind.out" \
    "$SERVER_BIN" --http "127.0.0.1:$HTTP" --udp-port "$UDP" --tcp-port 0 --node-ip 127.0.0.1 \
    >"$dir/server.log" 2>&1) &
  SERVER_PID=$!
  local i
  for i in $(seq 1 300); do
    forwarded >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$name: the server exited (see $dir/server.log)" >&2; exit 1; }
    sleep 0.2
  done
  forwarded >/dev/null 2>&1 || { echo "$name: the server did not answer /metrics in 60 s" >&2; exit 1; }
  # Long enough for the joins, the settling and the measured window.
  "${gen[@]}" "$LOADTEST_BIN" run "$@" --server-url "http://127.0.0.1:$HTTP" --server-pid "$SERVER_PID" \
    --no-relay --warmup 1 --duration $((MEASURE + 40)) --out "$dir" --name "$name" -q \
    >"$dir/loadtest.log" 2>&1 &
  GEN_PID=$!
  # Media flows: forwarded packets grow (bounded: 120 s).
  local p=0
  for i in $(seq 1 600); do
    p=$(forwarded || echo 0)
    [ "${p%.*}" -gt 0 ] 2>/dev/null && break
    kill -0 "$GEN_PID" 2>/dev/null || { echo "$name: the generator ended first (see $dir/loadtest.log)" >&2; exit 1; }
    sleep 0.2
  done
  [ "${p%.*}" -gt 0 ] || { echo "$name: nothing forwarded in 120 s" >&2; exit 1; }
  # Let the joins' work and the first keyframes pass, and the backlog they
  # left be worked off (a backlog is handled in batches, cheaper per packet).
  sleep 10
  callgrind_control -i on "$SERVER_PID" >/dev/null 2>&1
  sleep 2
  callgrind_control -z "$SERVER_PID" >/dev/null 2>&1
  local p0 p1
  p0=$(forwarded)
  sleep "$MEASURE"
  p1=$(forwarded)
  callgrind_control -d "$SERVER_PID" >/dev/null 2>&1
  kill "$GEN_PID" 2>/dev/null || true
  wait "$GEN_PID" 2>/dev/null || true
  GEN_PID=""
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  # The dump after the zeroing is the newest file with a part number.
  local dump
  dump=$(ls -t "$dir"/callgrind.out.* 2>/dev/null | head -1)
  [ -n "$dump" ] || { echo "$name: no callgrind dump in $dir" >&2; exit 1; }
  local ir
  ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  local packets=$(( ${p1%.*} - ${p0%.*} ))
  [ "$packets" -gt 0 ] || { echo "$name: no packets forwarded while measured" >&2; exit 1; }
  RESULTS+="$name $ir $packets $((ir / packets)) $((packets / MEASURE))"$'\n'
}

measure s2 -s s2 --rooms 1 --publishers 1
measure s4 -s s4 --participants 3 --no-simulcast --video-kbps 500
RESULTS=${RESULTS%$'\n'}
echo "scenario instructions packets instructions/packet packets/s"
echo "$RESULTS"

case "$MODE" in
  record)
    {
      echo "# scripts/callgrind.sh --record, $(date -u +%F), $(git rev-parse --short HEAD)"
      echo "# scenario instructions/packet packets/s"
      echo "$RESULTS" | awk '{ print $1, $4, $5 }'
    } >"$FILE"
    echo "recorded in $FILE"
    ;;
  compare)
    status=0
    while read -r name ir packets per rate; do
      base=$(awk -v n="$name" '$1 == n { print $2 }' "$FILE")
      base_rate=$(awk -v n="$name" '$1 == n { print $3 }' "$FILE")
      if [ -z "$base" ]; then
        echo "$name: not in $FILE" >&2
        status=1
        continue
      fi
      if [ -n "$base_rate" ] && awk -v a="$rate" -v b="$base_rate" 'BEGIN { exit !(a < b * 0.9 || a > b * 1.1) }'; then
        echo "$name: $rate packets/s against $base_rate in $FILE: not the same load, not compared"
        [ "$status" -eq 0 ] && status=2
        continue
      fi
      change=$(awk -v a="$per" -v b="$base" 'BEGIN { printf "%+.1f", (a - b) * 100 / b }')
      if awk -v a="$per" -v b="$base" -v t="$TOLERANCE" 'BEGIN { exit !(a > b * (1 + t / 100)) }'; then
        echo "$name: $per instructions/packet against $base ($change %): WORSE than $TOLERANCE %"
        status=1
      else
        echo "$name: $per instructions/packet against $base ($change %): ok (tolerance $TOLERANCE %)"
      fi
    done <<<"$RESULTS"
    exit "$status"
    ;;
esac
