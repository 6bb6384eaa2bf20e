#!/usr/bin/env bash
# Full Python PyTorch 2.11 (with its CUDA dependencies, as pip installs it) in its own venv, for
# the checks against zennit, torchvision, timm and torchmetrics (tests/python/), the benchmarks against Python,
# and the GPU bundle's CPU run (its torch/lib is what a GPU node's PyTorch provides): `import
# torch` needs the CUDA libraries even on a CPU machine. About 2.7 GB; cached
# under .cache/, rebuilt when scripts/requirements-torch.txt or this script changes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cache/venv-torch"
req="$root/scripts/requirements-torch.txt"
# zennit's, timm's, torchmetrics' and PyHessian's own requirements would pull the newest torch: they go in
# without them.
no_deps=(zennit==0.5.1 timm==1.0.31 torchmetrics==1.9.0 lightning-utilities==0.15.3 pyhessian==0.1)
want=$(cat "$req" "$0" | sha256sum | cut -d' ' -f1)
if [[ -f "$venv/.complete" && "$(cat "$venv/.complete")" == "$want" ]]; then
  exit 0
fi
echo "setup-torch-python: installing $req into $venv" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "${no_deps[@]}"
echo "$want" > "$venv/.complete"
