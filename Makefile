# The two commands of the README: `make demo` and `make test`. Both set up what they need
# (scripts/setup-*.sh: idempotent, cached under .cache/, ignored by git).

SHELL := /bin/bash
CARGO ?= cargo
VENV := .cache/venv
PY := $(VENV)/bin/python
DATA_PREP := target/release/data-prep
WORK := work
DEMO_PATCHES ?= 2000

# The demo, the tests and the SLURM scripts use the MPI build (docs/cluster.md); a plain
# `cargo build --release` gives a single-process trainer.
FEATURES := --features lossbench/mpi

export LOSSBENCH_DATA_PREP := $(abspath $(DATA_PREP))

.PHONY: all deps deps-torch build lint test test-rust test-python demo demo-beyond demo-tune bench fuzz chaos clean gpu-bundle

all: build

deps:
	@scripts/setup-system.sh
	@scripts/setup-python.sh
	@scripts/setup-libtorch.sh

# Python PyTorch + zennit (2.7 GB): the LRP check against zennit and the benchmark peers.
deps-torch:
	@scripts/setup-torch-python.sh

build:
	$(CARGO) build --release --locked --workspace $(FEATURES)

# cargo test builds the binaries the Python tests run (target/release/data-prep).
test: deps deps-torch lint test-rust gpu-bundle test-python

# The house's rules (scripts/house.py, docs/architecture.md: no import cycles, no imports between
# the binaries' crates, functions under 80 lines), formatting, clippy, and the collector built
# where there is no libtorch (login nodes, laptops): with LIBTORCH pointing nowhere, the build
# works only if nothing links libtorch.
lint:
	python3 scripts/house.py --check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --locked --workspace $(FEATURES) --all-targets -- -D warnings
	LIBTORCH=/nonexistent $(CARGO) build --release --locked -p collector -p tuner

test-rust:
	$(CARGO) test --release --locked --workspace $(FEATURES)

# The tests against Python PyTorch (zennit, torchvision, timm, the GPU bundle) run in
# .cache/venv-torch; the others in .cache/venv.
TORCH_TESTS := tests/python/test_lrp_zennit.py tests/python/test_gpu_bundle.py tests/python/test_models_torchvision.py \
  tests/python/test_losses_timm.py tests/python/test_landscape_torch.py tests/python/test_optim_torch.py tests/python/test_torchmetrics.py tests/python/test_spectrum_pyhessian.py
test-python:
	$(VENV)/bin/pytest -q tests/python $(addprefix --ignore=,$(TORCH_TESTS))
	.cache/venv-torch/bin/pytest -q $(TORCH_TESTS)

# The GPU bundle (docs/cluster.md, "The GPU check"): the trainer linked against the CUDA
# libtorch 2.11 without MPI (a check node may lack OpenMPI), data-prep, the check and its Python
# peer, stripped, in target/gpu-bundle (at most 64 MiB). Built in its own target folder, since
# the CUDA libtorch is another LIBTORCH.
GPU_BUNDLE := target/gpu-bundle
gpu-bundle: deps
	@scripts/setup-libtorch.sh --cuda
	LIBTORCH=$(abspath .cache/deps/libtorch-cuda/torch) $(CARGO) build --locked --profile bundle --target-dir target/gpu-build \
	  -p lossbench --bin trainer -p data-prep --bin data-prep
	scripts/gpu/bundle.sh target/gpu-build/bundle $(GPU_BUNDLE)

# Synthetic archive, packed as the download comes (.tar.gz + lists) → data-prep reads it
# without unpacking → each of the seven losses trained a few epochs on the CPU
# → a table of validation F1 per loss and epoch → the merged Parquet tables and the report.
DEMO_EPOCHS ?= 3
# Small CPU runs: smaller batches and a larger step than the study's 1024 / 1e-4.
DEMO_TRAIN_FLAGS ?= --set train.batch_size=32 --set train.lr=1e-3
LOSSES := ce wce focal hamming huber sparsemax ranking

demo: deps build
	@rm -rf $(WORK)/demo && mkdir -p $(WORK)/demo
	$(DATA_PREP) synth --patches $(DEMO_PATCHES) --seed 1 --format v1 --pack tar.gz --out $(WORK)/demo/archive
	$(DATA_PREP) convert --archive $(WORK)/demo/archive/BigEarthNet-S2-v1.0.tar.gz --out $(WORK)/demo/store.zarr
	@n=$(words $(LOSSES)); k=0; start=$$(date +%s); for loss in $(LOSSES); do \
	  k=$$((k + 1)); left=""; \
	  if [ $$k -gt 1 ]; then s=$$(( ($$(date +%s) - start) * (n - k + 1) / (k - 1) )); \
	    left=" (about $$((s / 60)) min $$((s % 60)) s left for the $$((n - k + 1)) runs to go)"; fi; \
	  echo "== ($$k/$$n) training $$loss$$left"; \
	  target/release/trainer train --config jobs/$$loss.toml --data $(WORK)/demo/store.zarr --out $(WORK)/demo/runs \
	    --epochs $(DEMO_EPOCHS) $(DEMO_TRAIN_FLAGS) || exit 1; \
	done
	@echo
	@$(PY) scripts/demo_table.py $(WORK)/demo/store.zarr $(WORK)/demo/runs
	target/release/collector merge --runs $(WORK)/demo/runs --out $(WORK)/demo/results
	target/release/collector report --results $(WORK)/demo/results --out $(WORK)/demo/report
	@echo; echo "store: $(WORK)/demo/store.zarr (docs/store.md); runs: $(WORK)/demo/runs (docs/training.md)"
	@echo "tables: $(WORK)/demo/results/<table>/*.parquet (docs/results.md); report: $(WORK)/demo/report/index.html"

# Beyond the study, briefly on the CPU: the newer losses and a mix with the K-Branch CNN, ASL
# with ResNet-50, then the loss landscapes (a 1D slice of every run; a 2D surface and the
# sharpness of the K-Branch runs), the tables and the report (docs/losses.md, docs/models.md,
# docs/landscape.md). Uses the demo's store (made if absent). Subsets are small: CPU minutes.
BEYOND_LOSSES := asl zlpr poly1 weighted_focal focal_sparsemax
BEYOND := $(WORK)/beyond
SMALL_LANDSCAPE := --train-patches 96 --val-patches 64 --batch 32
demo-beyond: deps build
	@if [ ! -f $(WORK)/demo/store.zarr/zarr.json ]; then \
	  mkdir -p $(WORK)/demo && \
	  $(DATA_PREP) synth --patches $(DEMO_PATCHES) --seed 1 --format v1 --pack tar.gz --out $(WORK)/demo/archive && \
	  $(DATA_PREP) convert --archive $(WORK)/demo/archive/BigEarthNet-S2-v1.0.tar.gz --out $(WORK)/demo/store.zarr; fi
	@rm -rf $(BEYOND) && mkdir -p $(BEYOND)
	@for job in $(BEYOND_LOSSES); do \
	  echo "== training $$job (K-Branch CNN)"; \
	  target/release/trainer train --config jobs/$$job.toml --data $(WORK)/demo/store.zarr --out $(BEYOND)/runs \
	    --epochs $(DEMO_EPOCHS) $(DEMO_TRAIN_FLAGS) || exit 1; \
	  echo "== landscapes of $$job"; \
	  target/release/trainer landscape --run $(BEYOND)/runs/$$job-seed0 --kind 2d --points 7 $(SMALL_LANDSCAPE) || exit 1; \
	  target/release/trainer landscape --run $(BEYOND)/runs/$$job-seed0 --kind sharpness --iterations 10 $(SMALL_LANDSCAPE) || exit 1; \
	done
	@echo "== training asl (ResNet-50)"
	target/release/trainer train --config jobs/asl.toml --data $(WORK)/demo/store.zarr --out $(BEYOND)/runs \
	  --epochs 2 $(DEMO_TRAIN_FLAGS) --set 'model.arch="resnet50"' --set lrp.probes=2
	@for run in $(BEYOND)/runs/*/; do \
	  echo "== 1D landscape of $$run"; \
	  target/release/trainer landscape --run $$run --kind 1d --points 11 $(SMALL_LANDSCAPE) || exit 1; \
	done
	target/release/collector merge --runs $(BEYOND)/runs --out $(BEYOND)/results
	target/release/collector report --results $(BEYOND)/results --out $(BEYOND)/report
	@echo; echo "tables: $(BEYOND)/results/<table>/*.parquet; report: $(BEYOND)/report/index.html"

# A fair comparison in small (docs/tuning.md): three losses tuned with the same small budget by
# successive halving on a small synthetic store, their best configurations and defaults trained
# and tested over two seeds, the tables and the report's tuning section.
TUNE_DEMO := $(WORK)/demo-tune
demo-tune: deps build
	@rm -rf $(TUNE_DEMO) && mkdir -p $(TUNE_DEMO)
	$(DATA_PREP) synth --patches 800 --seed 3 --format v1 --out $(TUNE_DEMO)/archive
	$(DATA_PREP) convert --archive $(TUNE_DEMO)/archive --out $(TUNE_DEMO)/store.zarr
	target/release/tune run jobs/tune-demo.toml
	target/release/tune show jobs/tune-demo.toml
	target/release/collector merge --runs $(TUNE_DEMO)/study/trials $(TUNE_DEMO)/study/final --out $(TUNE_DEMO)/results
	target/release/collector report --results $(TUNE_DEMO)/results --out $(TUNE_DEMO)/report
	@echo; echo "trials: $(TUNE_DEMO)/results/trials/*.parquet; report (its tuning section): $(TUNE_DEMO)/report/index.html"

# docs/benchmarks.md: each measurement beside its peer in the same run; tables in work/bench/*.md.
bench: deps deps-torch build
	scripts/bench-data-prep.sh
	$(PY) scripts/bench/bench_trainer.py
	$(PY) scripts/bench/bench_mpi.py
	$(PY) scripts/bench/bench_metrics.py
	$(PY) scripts/bench/bench_spectrum.py
	$(PY) scripts/bench/bench_statistics.py
	$(PY) scripts/bench/bench_tensorboard.py
	$(PY) scripts/bench/bench_convert_scale.py

# The bad-input campaigns of the tests (fuzzing/, */tests/fuzz.rs) at FUZZ_CASES inputs each
# instead of the tests' 10,000; the table goes to work/fuzz/report.md (docs/benchmarks.md).
FUZZ_CASES ?= 200000
fuzz: deps
	@mkdir -p $(WORK)/fuzz && rm -f $(WORK)/fuzz/report.jsonl
	LOSSBENCH_FUZZ_CASES=$(FUZZ_CASES) LOSSBENCH_FUZZ_REPORT=$(abspath $(WORK)/fuzz/report.jsonl) \
	  $(CARGO) test --release --locked --workspace $(FEATURES) --test fuzz
	$(PY) scripts/fuzz_table.py $(WORK)/fuzz/report.jsonl | tee $(WORK)/fuzz/report.md

# The chaos suites (tests/python/test_chaos.py on one node, test_chaos_cluster.py for full disks,
# failing ranks, two nodes and flock that lies; docs/reliability.md) with CHAOS_TRIALS trials per
# random scenario instead of the tests' 3, on the real single-node SLURM and OpenMPI; the table
# goes to work/chaos/report.md.
CHAOS_TRIALS ?= 20
chaos: deps build
	@mkdir -p $(WORK)/chaos && rm -f $(WORK)/chaos/report.jsonl
	CHAOS_TRIALS=$(CHAOS_TRIALS) CHAOS_REPORT=$(abspath $(WORK)/chaos/report.jsonl) \
	  $(VENV)/bin/pytest -q tests/python/test_chaos.py tests/python/test_chaos_cluster.py
	$(PY) scripts/chaos_table.py $(WORK)/chaos/report.jsonl | tee $(WORK)/chaos/report.md

clean:
	rm -rf $(WORK) target
