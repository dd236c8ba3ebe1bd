#!/usr/bin/env bash
# Installs LiveKit's own SDKs for the LiveKit compatibility tests
# (signaling/tests/livekit_api.rs and browser_livekit.rs), at the versions
# their lock files pin:
# - target/livekit-venv, a Python venv with `livekit-api` and `livekit`
#   (signaling/tests/livekit/requirements.txt; needs python3 with venv and
#   ensurepip, Debian's python3-venv);
# - signaling/tests/livekit/node/node_modules with `livekit-server-sdk` and
#   `livekit-client` (its package-lock.json; needs npm): the latter's UMD
#   bundle is what signaling/tests/browser_livekit.rs loads into Chromium.
# Idempotent: what is up to date already is left alone, so a second run
# returns at once. Prints the venv's python on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

req=signaling/tests/livekit/requirements.txt
venv=target/livekit-venv
if ! { [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/.requirements"; }; then
  echo "creating $venv (pip install -r $req)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input --timeout 60 -r "$req" >&2
  cp "$req" "$venv/.requirements"
fi

node_dir=signaling/tests/livekit/node
if ! cmp -s "$node_dir/package-lock.json" "$node_dir/node_modules/.vela-lock" 2>/dev/null; then
  echo "installing livekit-server-sdk and livekit-client in $node_dir (npm ci)" >&2
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$node_dir/package-lock.json" "$node_dir/node_modules/.vela-lock"
fi

echo "$venv/bin/python"
