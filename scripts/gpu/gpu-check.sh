#!/usr/bin/env bash
# The GPU check of a lossbench build (docs/cluster.md, "The GPU check"): run from the bundle that
# `make gpu-bundle` writes, on a node with Python PyTorch 2.11 (CUDA 13) and no network.
#
#   ./gpu-check.sh OUTDIR          on a GPU node: writes OUTDIR/gpu-check.json and .md
#   ./gpu-check.sh OUTDIR --cpu    the same steps on the CPU, small (how CI tests it)
#
# The trainer was built against the PyPI torch 2.11.0 wheel; it runs against this Python's
# torch/lib (libtorch_cuda and the CUDA libraries beside it) through LD_LIBRARY_PATH.
# PYTHON picks the interpreter (default python3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: gpu-check.sh OUTDIR [--cpu]}
shift
python=${PYTHON:-python3}
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$python" "$here/scripts/gpu_check.py" --bundle "$here" --out "$out" "$@"
