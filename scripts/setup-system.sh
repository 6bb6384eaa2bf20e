#!/usr/bin/env bash
# System packages the build and tests need (Debian 12, as root). Idempotent: installs only
# what is missing.
set -euo pipefail
missing=()
# The Rust toolchain and a C compiler (zstd, blosc) come with the machine; Python needs venv.
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
command -v cc >/dev/null || missing+=(gcc)
command -v unzip >/dev/null || missing+=(unzip)
if ((${#missing[@]})); then
  echo "setup-system: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
