#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need on Debian
# (Chromium and ChromeDriver for the browser tests, iproute2 and nftables for
# the impaired-link tests, cmake for libopus) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# Impaired-link tests: namespaces and rate caps (iproute2), loss and outages (nftables).
command -v tc >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
# The load generator's Opus encoder (the opus crate builds libopus with cmake).
command -v cmake >/dev/null 2>&1 || need+=(cmake)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (needs root and Debian's package index)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# A one-off build of the whole suite gains nothing from incremental caches,
# which would double what it writes to disk; set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Every test carries its own timeout; this is the backstop for the whole run.
timeout --kill-after=30 1500 cargo test --workspace --all-targets --locked "$@"
