VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fl-sim-installed

.PHONY: setup demo test test-all bench bench-setup clean

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh

setup: $(STAMP)

## The main job: a Flower simulation (Ray engine) on the embedded MNIST digits, an eavesdropper attacking
## two clients' updates while they train (one defended), and RUN_DIR/report.html at the end.
demo: setup
	$(BIN)/fl-sim demo

## The default test suite (slow tests excluded).
test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: setup
	$(BIN)/python benchmarks/sim_overhead.py

## breaching, the peer of benchmarks/attack_speed.py --peer breaching (benchmarks only; --no-deps keeps this torch).
bench-setup: setup
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m pip install -q --no-deps breaching==0.1.2

clean:
	rm -rf runs .pytest_cache
