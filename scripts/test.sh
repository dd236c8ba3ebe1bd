#!/usr/bin/env bash
# Runs every test of the workspace, then the fuzz targets briefly
# (scripts/fuzz.sh; VELA_SKIP_FUZZ=1 skips them). Installs what the tests
# need on Debian (Chromium and ChromeDriver for the browser tests, Firefox
# ESR, Node.js and puppeteer-core for the Firefox ones, iproute2 and
# nftables for the impaired-link tests, Redis and PostgreSQL for the
# cluster and store tests, cmake for libopus, g++ for
# libFuzzer, python3-venv for LiveKit's Python SDKs) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# Firefox tests: Debian's Firefox ESR, driven from Node.js (puppeteer-core, below).
[ -x /usr/bin/firefox-esr ] || need+=(firefox-esr)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# Impaired-link tests: namespaces and rate caps (iproute2), loss and outages (nftables).
command -v tc >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
# TURN tests: a throwaway coturn (vela-testkit starts it); openssl checks its certificate.
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Cluster tests: throwaway Redis and PostgreSQL servers (vela-testkit starts them).
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
# LiveKit compatibility tests: a venv with LiveKit's Python SDKs (below).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# The load generator's Opus encoder (the opus crate builds libopus with cmake).
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# libFuzzer, built from the libfuzzer-sys crate for scripts/fuzz.sh, is C++.
if [ "${VELA_SKIP_FUZZ:-0}" != 1 ]; then
  command -v c++ >/dev/null 2>&1 || need+=(g++)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (needs root and Debian's package index)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# puppeteer-core drives /usr/bin/firefox-esr (it downloads no browser); its
# version is pinned by the committed package-lock.json.
node_dir=signaling/tests/browser/node
if [ ! -f "$node_dir/node_modules/puppeteer-core/package.json" ]; then
  echo "installing puppeteer-core in $node_dir (npm ci)"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

# LiveKit's own SDKs (Python, Node, and livekit-client for Chromium), pinned,
# for signaling/tests/livekit_api.rs and browser_livekit.rs (quick when they
# are there already).
./scripts/livekit-sdks.sh >/dev/null

# A one-off build of the whole suite gains nothing from incremental caches,
# which would double what it writes to disk; set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Every test carries its own timeout; this is the backstop for the whole run.
timeout --kill-after=30 1500 cargo test --workspace --all-targets --locked "$@"

# Then each fuzz target for 30 s on its committed corpus (RELIABILITY.md,
# "Fuzzing"); VELA_SKIP_FUZZ=1 skips it. The build is its own (instrumented).
if [ "${VELA_SKIP_FUZZ:-0}" != 1 ]; then
  timeout --kill-after=30 1200 ./scripts/fuzz.sh all "${VELA_FUZZ_SECONDS:-30}"
fi
