#!/usr/bin/env bash
# Creates target/livekit-venv, a Python venv with LiveKit's own SDKs at the
# versions pinned in signaling/tests/livekit/requirements.txt, for the LiveKit
# compatibility tests (signaling/tests/livekit_api.rs). Idempotent: when the
# venv holds exactly those requirements already, it returns at once.
# Needs python3 with venv and ensurepip (Debian: python3-venv; scripts/test.sh
# installs it). Prints the venv's python on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

req=signaling/tests/livekit/requirements.txt
venv=target/livekit-venv
stamp=$venv/.requirements
if [ -x "$venv/bin/python" ] && cmp -s "$req" "$stamp"; then
  echo "$venv/bin/python"
  exit 0
fi
echo "creating $venv (pip install -r $req)" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  --no-input --timeout 60 -r "$req" >&2
cp "$req" "$stamp"
echo "$venv/bin/python"
