#!/usr/bin/env bash
# The soak behind RELIABILITY.md ("Soak"): builds the release server and the
# load generator, then holds rooms with churn, WHIP/WHEP, account and
# device-socket traffic and calls for N minutes (default 30), sampling the
# server's RSS, open fds, threads and tokio tasks every 10 s. Writes
# docs/soak/soak.svg, soak.json and soak.md (committed) and the server's log
# to loadtest-out/soak-server.log. The server runs on CPU 0 and the
# generator on CPU 1 (when there are two). Exits non-zero when a check fails.
#   scripts/soak.sh          # 30 minutes
#   scripts/soak.sh 5        # 5 minutes (the warm-up left out of the slopes
#                            # is 5 minutes, at most half the run)
#   OUT=dir scripts/soak.sh  # elsewhere than docs/soak
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
OUT=${OUT:-docs/soak}

# The generator's Opus encoder (the opus crate builds libopus with cmake).
if ! command -v cmake >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cmake
fi
cargo build --release --locked -p vela-signaling -p vela-loadtest

mkdir -p loadtest-out "$OUT"
GEN=() CPUS=""
if [ "$(nproc)" -ge 2 ]; then GEN=(taskset -c 1); CPUS=0; fi
"${GEN[@]}" target/release/vela-loadtest soak --minutes "$MINUTES" --server-cpus "$CPUS" \
  --out "$OUT" --log loadtest-out/soak-server.log
