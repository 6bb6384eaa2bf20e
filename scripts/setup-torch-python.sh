#!/usr/bin/env bash
# Full Python PyTorch 2.13 (with its CUDA dependencies, as pip installs it) in its own venv, for
# the benchmark against Python and, later, the zennit LRP checks: `import torch` needs the CUDA
# libraries even on a CPU machine. About 2.7 GB; cached under .cache/, rebuilt when
# scripts/requirements-torch.txt changes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cache/venv-torch"
req="$root/scripts/requirements-torch.txt"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ -f "$venv/.complete" && "$(cat "$venv/.complete")" == "$want" ]]; then
  exit 0
fi
echo "setup-torch-python: installing $req into $venv" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$venv/.complete"
