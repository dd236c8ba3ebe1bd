#!/usr/bin/env bash
# The runs behind BENCHMARKS.md: S1, S2 and S4 at two loads each, three
# times, plus one short sweep; then the medians. About nine minutes.
#   loadtest/bench.sh                 # server: target/release/vela
#   SERVER_BIN=/path/to/vela OUT=dir SETS="s2-2 sweep" loadtest/bench.sh
#   TRANSPORTS="udp tcp" SETS="s1-100 s2-4 s2-8" loadtest/bench.sh  # ICE over TCP beside UDP
# With several TRANSPORTS each round runs them in turn (interleaved), and
# the runs are named and labelled <set>-<transport>.
# The tool starts the server pinned to CPU 0 (`taskset -c 0`) and runs the
# generator on CPU 1. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
LT=${LT:-target/release/vela-loadtest}
SERVER_BIN=${SERVER_BIN:-target/release/vela}
OUT=${OUT:-loadtest-out/bench}
DUR=${DUR:-8}
mkdir -p "$OUT"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
  echo "kernel: $(uname -r)"
  echo "server: $SERVER_BIN ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- media signaling config || echo ', working tree differs'))"
} | tee "$OUT/machine.txt"

# Waits (up to QUIET_WAIT seconds) until both CPUs were >90% idle for 2 s.
idle_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 2; b=($(head -1 /proc/stat))
  local idle=$(( (b[4]+b[5]) - (a[4]+a[5]) )) total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( 100 * idle / (total > 0 ? total : 1) ))
}
quiet() {
  local end=$(( $(date +%s) + ${QUIET_WAIT:-180} )) p
  while :; do
    p=$(idle_pct)
    if [ "$p" -ge 90 ] || [ "$(date +%s)" -ge "$end" ]; then echo "idle ${p}%"; return; fi
  done
}

SETS=${SETS:-"s1-25 s1-100 s2-2 s2-4 s4-10 s4-50 sweep"}
TRANSPORTS=${TRANSPORTS:-udp}
run() { # name, args...
  local name=$1; shift
  case " $SETS " in *" $name "*) ;; *) return 0 ;; esac
  local i t set extra
  for i in 1 2 3; do
    for t in $TRANSPORTS; do
      set=$name extra=()
      if [ "$TRANSPORTS" != udp ]; then set=$name-$t extra=(--transport "$t"); fi
      echo "== $set #$i ($(quiet))"
      taskset -c 1 "$LT" run "$@" "${extra[@]}" --server-bin "$SERVER_BIN" --duration "$DUR" --warmup 1 \
        --out "$OUT" --name "$set-$i" --label "$set" -q | grep -E "^forwarded|CPU µs|latency p50|frame loss|run (IN)?VALID" || true
    done
  done
}

run s1-25 -s s1 --rooms 25
run s1-100 -s s1 --rooms 100
run s2-2 -s s2 --rooms 2
run s2-4 -s s2 --rooms 4
run s2-8 -s s2 --rooms 8
run s4-10 -s s4 --participants 10
run s4-50 -s s4 --participants 50

case " $SETS " in *" sweep "*)
  echo "== sweep ($(quiet))"
  taskset -c 1 "$LT" sweep -s s2 --start 1 --factor 2 --max 16 --refine 1 --duration 5 --warmup 1 \
    --server-bin "$SERVER_BIN" --out "$OUT" --name sweep-s2 -q ;;
esac

shopt -s nullglob
runs=("$OUT"/s*-[123].json)
[ ${#runs[@]} -eq 0 ] || "$LT" summarize "${runs[@]}" | tee "$OUT/summary.md"
