#!/usr/bin/env bash
# Full Python PyTorch 2.13 (with its CUDA dependencies, as pip installs it) in its own venv, for
# the LRP check against zennit (tests/python/test_lrp_zennit.py) and the benchmark against
# Python: `import torch` needs the CUDA libraries even on a CPU machine. About 2.7 GB; cached
# under .cache/, rebuilt when scripts/requirements-torch.txt or this script changes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cache/venv-torch"
req="$root/scripts/requirements-torch.txt"
# zennit's own requirements would pull the newest torch: it goes in without them.
zennit=(zennit==0.5.1 torchvision==0.28.0) # torchvision: imported by zennit, matches torch 2.13
want=$(cat "$req" "$0" | sha256sum | cut -d' ' -f1)
if [[ -f "$venv/.complete" && "$(cat "$venv/.complete")" == "$want" ]]; then
  exit 0
fi
echo "setup-torch-python: installing $req into $venv" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "${zennit[@]}"
echo "$want" > "$venv/.complete"
