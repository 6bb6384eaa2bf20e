#!/usr/bin/env bash
# CPU libtorch 2.13.0 for tch 0.26, assembled from PyPI wheels (no download.pytorch.org here).
# Layout (see docs/install.md): .cache/deps/torch-2.13.0-cpu/torch/{include,lib,build-version}
# plus nvidia/cu13/lib/lib{cudart,cupti}.so.13, which libtorch_cpu.so needs at load time and
# finds through the wheel's own RPATH ($ORIGIN/../../nvidia/cu13/lib).
# Idempotent: built in a temp folder, renamed last, so an interrupted run leaves nothing usable.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deps="$root/.cache/deps"
dest="$deps/torch-2.13.0-cpu"
[[ -f "$dest/.complete" ]] && exit 0
echo "setup-libtorch: assembling CPU libtorch 2.13.0 in $dest" >&2
mkdir -p "$deps/wheels"
pip_dl() { python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.11 -d "$deps/wheels" "$1"; }
pip_dl torch==2.13.0
pip_dl nvidia-cuda-runtime==13.0.96
pip_dl nvidia-cuda-cupti==13.0.85
tmp="$dest.tmp"
rm -rf "$tmp" && mkdir -p "$tmp/unpack"
for w in "$deps"/wheels/torch-2.13.0-*.whl; do
  python3 -m zipfile -e "$w" "$tmp/unpack" >/dev/null 2>&1 || unzip -q -o "$w" 'torch/include/*' 'torch/lib/*' -d "$tmp/unpack"
done
for w in "$deps"/wheels/nvidia_cuda_runtime-*.whl "$deps"/wheels/nvidia_cuda_cupti-*.whl; do
  python3 -m zipfile -e "$w" "$tmp/unpack"
done
mkdir -p "$tmp/torch/lib" "$tmp/nvidia/cu13/lib"
mv "$tmp/unpack/torch/include" "$tmp/torch/include"
for lib in libc10.so libtorch_cpu.so libgomp.so.1; do
  mv "$tmp/unpack/torch/lib/$lib" "$tmp/torch/lib/"
done
# torch-sys always links -ltorch; the wheel's libtorch.so would pull in libtorch_cuda.
ln -s libtorch_cpu.so "$tmp/torch/lib/libtorch.so"
ln -s libgomp.so.1 "$tmp/torch/lib/libgomp.so"
find "$tmp/unpack/nvidia" -name 'libcudart.so.13*' -exec mv {} "$tmp/nvidia/cu13/lib/" \;
find "$tmp/unpack/nvidia" -name 'libcupti.so.13*' -exec mv {} "$tmp/nvidia/cu13/lib/" \;
echo 2.13.0 > "$tmp/torch/build-version"
rm -rf "$tmp/unpack"
touch "$tmp/.complete"
rm -rf "$dest" && mv "$tmp" "$dest"
