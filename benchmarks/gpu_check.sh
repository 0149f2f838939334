#!/usr/bin/env bash
# GPU check for the recommender scorer, in one go (< 5 minutes):
#   exports a SASRec-size model (50k items, d 64, 2 layers, length 50; random init)
#   with fp32 and fp16, then measures sequences/s at batch 512 x length 50 for
#   onnxruntime fp32 on the CPU and fp32 / fp16 on CUDA, and the speed-up over the CPU.
# Writes benchmarks/results/scorer_speed_gpu.json and prints the table.
# On a machine without a usable CUDA provider it says "no CUDA" and measures the CPU only.
#
# Usage: benchmarks/gpu_check.sh [extra scorer_speed.py options, e.g. --threads 4]
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
    PYTHON=python3
fi

echo "== environment"
"$PYTHON" - <<'EOF'
import onnxruntime as ort
print("onnxruntime", ort.__version__, "providers:", ort.get_available_providers())
EOF
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    echo "nvidia-smi not found"
fi

echo "== batch 512 x 50: CPU fp32 vs CUDA fp32 / fp16"
# The CPU baseline uses every core here (a later --threads N overrides it).
exec timeout 290 "$PYTHON" benchmarks/scorer_speed.py --gpu-check --threads "$(nproc)" \
    --out benchmarks/results/scorer_speed_gpu.json "$@"
