#!/usr/bin/env bash
# libtorch 2.11.0 for tch 0.24, assembled from the PyPI torch wheel (no download.pytorch.org here).
#
#   scripts/setup-libtorch.sh          CPU layout, for the build, the tests and the demo:
#     .cache/deps/libtorch-cpu/torch/{include,lib,build-version}: libc10, libtorch_cpu (libtorch.so
#     links to it) and libgomp, plus nvidia/cu13/lib/lib{cudart,cupti}.so.13, which libtorch_cpu.so
#     needs at load time and finds through the wheel's own RPATH ($ORIGIN/../../nvidia/cu13/lib).
#   scripts/setup-libtorch.sh --cuda   CUDA layout, for builds that run on GPU nodes (make gpu-bundle):
#     .cache/deps/libtorch-cuda/torch/{include,lib,build-version}: the wheel's whole torch/lib,
#     libtorch_cuda.so included. Binaries built against it run against any PyTorch 2.11.0 CUDA 13
#     installation's torch/lib (LD_LIBRARY_PATH), which brings the CUDA libraries (docs/cluster.md).
#
# Idempotent: each layout is built in a temp folder and renamed last, with a stamp naming the
# version, so an interrupted run leaves nothing usable and a version change rebuilds it.
set -euo pipefail
version=2.11.0
root=$(cd "$(dirname "$0")/.." && pwd)
deps="$root/.cache/deps"
flavour=cpu
[[ "${1:-}" == "--cuda" ]] && flavour=cuda
dest="$deps/libtorch-$flavour"
[[ -f "$dest/.complete" && "$(cat "$dest/.complete")" == "$version" ]] && exit 0
echo "setup-libtorch: assembling the $flavour libtorch $version in $dest" >&2
mkdir -p "$deps/wheels"
# The project venv's pip: Debian's system Python has none (python3-pip is not installed by
# default), and its venv module brings one.
"$root/scripts/setup-python.sh"
pip_dl() { "$root/.cache/venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
  --only-binary=:all: --python-version 3.11 -d "$deps/wheels" "$1"; }
pip_dl "torch==$version"
# The CUDA runtime versions torch 2.11.0's cuda-toolkit 13.0.2 pins.
pip_dl nvidia-cuda-runtime==13.0.96
pip_dl nvidia-cuda-cupti==13.0.85
tmp="$dest.tmp"
rm -rf "$tmp" && mkdir -p "$tmp/unpack"
unzip -q -o "$deps"/wheels/torch-$version-*.whl 'torch/include/*' 'torch/lib/*' -d "$tmp/unpack"
mkdir -p "$tmp/torch"
mv "$tmp/unpack/torch/include" "$tmp/torch/include"
if [[ "$flavour" == cpu ]]; then
  mkdir -p "$tmp/torch/lib" "$tmp/nvidia/cu13/lib"
  for lib in libc10.so libtorch_cpu.so libgomp.so.1; do
    mv "$tmp/unpack/torch/lib/$lib" "$tmp/torch/lib/"
  done
  # torch-sys always links -ltorch; the wheel's libtorch.so would pull in libtorch_cuda.
  ln -s libtorch_cpu.so "$tmp/torch/lib/libtorch.so"
  ln -s libgomp.so.1 "$tmp/torch/lib/libgomp.so"
  for w in "$deps"/wheels/nvidia_cuda_runtime-13.0.96-*.whl "$deps"/wheels/nvidia_cuda_cupti-13.0.85-*.whl; do
    unzip -q -o "$w" -d "$tmp/unpack"
  done
  find "$tmp/unpack/nvidia" -name 'libcudart.so.13*' -exec mv {} "$tmp/nvidia/cu13/lib/" \;
  find "$tmp/unpack/nvidia" -name 'libcupti.so.13*' -exec mv {} "$tmp/nvidia/cu13/lib/" \;
else
  mv "$tmp/unpack/torch/lib" "$tmp/torch/lib"
  ln -s libgomp.so.1 "$tmp/torch/lib/libgomp.so"
fi
echo "$version" > "$tmp/torch/build-version"
rm -rf "$tmp/unpack"
echo "$version" > "$tmp/.complete"
rm -rf "$dest" && mv "$tmp" "$dest"
