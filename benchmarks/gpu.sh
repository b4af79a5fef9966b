#!/usr/bin/env bash
# On the device machine (one GPU), from the repository root, after benchmarks/gpu_prepare.sh here:
#   run: bash benchmarks/gpu.sh   carry: [.gpu]   timeout_s: 560
# Trains the compact config (masked diffusion, 1024-packet images) on the ten shared classes for a
# fixed wall-clock share, generates 100 images per class, repairs and evaluates them in distribution
# (flows split A/B) and prints training time, images/s and the fidelity table. Budget: 8 minutes.
set -euo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 - <<'PY'
import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
set -o pipefail
python3 benchmarks/fidelity.py --data .gpu/pcaps --work /tmp/gpu-fid --config compact \
  --steps "${GPU_STEPS:-1500}" --count "${GPU_COUNT:-100}" --levels in --threads 8 --no-compliance --priors \
  2>&1 | tee "$out/fidelity.log"
cp /tmp/gpu-fid/results.md "$out/" 2>/dev/null || true
cp /tmp/gpu-fid/results.json "$out/" 2>/dev/null || true
