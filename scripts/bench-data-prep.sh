#!/usr/bin/env bash
# data-prep benchmarks (docs/benchmarks.md). BENCH_SIZES="5000 20000" by default.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --locked --example read_bench --example stream_bench -p data-prep
exec "$root/.cache/venv/bin/python" scripts/bench/bench_data_prep.py
