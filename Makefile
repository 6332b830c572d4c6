VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fl-sim-installed

.PHONY: setup demo test test-all bench clean

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

clean:
	rm -rf runs .pytest_cache
