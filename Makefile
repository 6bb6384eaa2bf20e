# The two commands of the README: `make demo` and `make test`. Both set up what they need
# (scripts/setup-*.sh: idempotent, cached under .cache/, ignored by git).

SHELL := /bin/bash
CARGO ?= cargo
VENV := .cache/venv
PY := $(VENV)/bin/python
DATA_PREP := target/release/data-prep
WORK := work
DEMO_PATCHES ?= 3000

export LOSSBENCH_DATA_PREP := $(abspath $(DATA_PREP))

.PHONY: all deps build test test-rust test-python demo bench clean

all: build

deps:
	@scripts/setup-system.sh
	@scripts/setup-python.sh
	@scripts/setup-libtorch.sh

build:
	$(CARGO) build --release --locked --workspace

# cargo test builds the binaries the Python tests run (target/release/data-prep).
test: deps test-rust test-python

test-rust:
	$(CARGO) test --release --locked --workspace

test-python:
	$(VENV)/bin/pytest -q tests/python

# Synthetic archive → data-prep → summary of the store.
demo: deps build
	@rm -rf $(WORK)/demo && mkdir -p $(WORK)/demo
	$(DATA_PREP) synth --patches $(DEMO_PATCHES) --seed 1 --format v1 --out $(WORK)/demo/archive
	$(DATA_PREP) convert --archive $(WORK)/demo/archive --out $(WORK)/demo/store.zarr
	@echo; echo "store written to $(WORK)/demo/store.zarr (see docs/store.md to open it from Python)"

bench: deps build
	scripts/bench-data-prep.sh

clean:
	rm -rf $(WORK) target
