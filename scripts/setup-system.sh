#!/usr/bin/env bash
# System packages the build and tests need (Debian 12, as root). Idempotent: installs only
# what is missing.
set -euo pipefail
missing=()
# The Rust toolchain and a C compiler (zstd, blosc) come with the machine; Python needs venv.
# Debian's python3 has the venv module but not ensurepip (it comes with python3-venv), without
# which a venv has no pip.
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v cc >/dev/null || missing+=(gcc)
command -v unzip >/dev/null || missing+=(unzip)
# MPI data parallelism (the trainer's `mpi` feature): OpenMPI, and libclang + pkg-config for
# the mpi crate's bindings.
command -v mpirun >/dev/null || missing+=(openmpi-bin)
[[ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h || -e /usr/include/mpi.h ]] || missing+=(libopenmpi-dev)
compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || missing+=(libclang-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
# A real single-node SLURM for the sweep test (tests/python/test_slurm_sweep.py): munge, slurmctld, slurmd.
command -v munged >/dev/null || missing+=(munge)
command -v slurmctld >/dev/null || missing+=(slurmctld)
command -v slurmd >/dev/null || missing+=(slurmd)
command -v sbatch >/dev/null || missing+=(slurm-client)
# The chaos suite's second "node" on a file system whose flock is local to each mount (FUSE).
command -v bindfs >/dev/null || missing+=(bindfs)
command -v fusermount >/dev/null || command -v fusermount3 >/dev/null || missing+=(fuse3)
# Headless Chromium renders the collector's report in its test; DejaVu gives it a font.
command -v chromium >/dev/null || missing+=(chromium)
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
if ((${#missing[@]})); then
  echo "setup-system: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
