#!/usr/bin/env bash
# Here, before a device run: put what benchmarks/gpu.sh needs into .gpu/ (git-ignored, carried):
# the shared captures (they do not travel as ../shared) and wheels of the packages the GPU image
# lacks (its python3 is 3.12 with torch, transformers, peft, accelerate already; see the device
# tool's KINDS.md). About 30 MiB; the carry limit is 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/pcaps}
[ -d "$data" ] || { echo "gpu_prepare: no captures at $data" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/whl
cp -r "$data" .gpu/pcaps
pin() { grep -iE "^$1==" constraints.txt | head -1; }
for name in diffusers orjson zstandard scapy; do
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .gpu/whl "$(pin "$name")"
done
du -sh .gpu
