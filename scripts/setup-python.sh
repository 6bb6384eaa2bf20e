#!/usr/bin/env bash
# Project-local Python environment for the interop tests and benchmark peers.
# Idempotent: rebuilt only when requirements change; cached under .cache/ (ignored by git).
# The stamp is written last, so an interrupted install is redone, never trusted.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cache/venv"
req="$root/scripts/requirements-test.txt"
stamp="$venv/.complete"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "setup-python: installing $req into $venv" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
