#!/usr/bin/env bash
# Assembles the GPU bundle (make gpu-bundle; docs/cluster.md, "The GPU check") from the binaries
# of the bundle build: the trainer linked against the CUDA libtorch 2.11 (libtorch_cuda.so
# NEEDED), data-prep, the job configs, the check and its Python peer. It must stay within 64 MiB
# (what travels to a GPU check node); it is refused otherwise.
#
#   scripts/gpu/bundle.sh BUILD_DIR BUNDLE_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$1
dest=$2
limit=$((64 << 20))
readelf -d "$build/trainer" | grep -q 'NEEDED.*\[libtorch_cuda\.so\]' \
  || { echo "bundle: $build/trainer does not NEED libtorch_cuda.so: build it against the CUDA libtorch" >&2; exit 1; }
tmp="$dest.tmp"
rm -rf "$tmp" && mkdir -p "$tmp/bin" "$tmp/scripts"
cp "$build/trainer" "$build/data-prep" "$tmp/bin/"
cp -r "$root/jobs" "$tmp/jobs"
cp "$root/scripts/gpu/gpu-check.sh" "$tmp/"
cp "$root/scripts/gpu/gpu_check.py" "$root/scripts/gpu/torch_peer.py" "$tmp/scripts/"
cat > "$tmp/README" <<TEXT
lossbench GPU bundle, built $(date -u +%Y-%m-%dT%H:%MZ) from revision $(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown).
On a node with Python PyTorch 2.11.0 (CUDA 13):   ./gpu-check.sh OUTDIR
It writes OUTDIR/gpu-check.json and OUTDIR/gpu-check.md (docs/cluster.md of the repository).
TEXT
size=$(du -sb "$tmp" | cut -f1)
if ((size > limit)); then
  echo "bundle: $size bytes, over the 64 MiB a check node receives" >&2
  exit 1
fi
rm -rf "$dest" && mv "$tmp" "$dest"
echo "bundle: $dest, $((size >> 20)) MiB"
