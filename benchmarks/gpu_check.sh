#!/usr/bin/env bash
# GPU checks for a machine with an NVIDIA GPU, in one go (about 4 minutes):
#   1. environment: onnxruntime, its providers, the GPU, and whether a model really runs on CUDA;
#   2. the CUDA tests (tests/export/test_export_cuda.py: CUDA sessions, I/O binding, fp32 and
#      fp16 agreement with PyTorch) beside the runtime and scoring tests;
#   3. scorer speed: a SASRec-size model (50k items, d 64, 2 layers, length 50; random init)
#      exported in fp32, int8 and fp16: PyTorch eager and onnxruntime fp32 / int8 on the CPU
#      (every core), fp32 / fp16 on CUDA, batch 1, 32, 512 x length 10, 50, the runtime's
#      overhead, and the speed-up over the CPU at batch 512;
#   4. the full pipeline on one noida broker: recstream's worker scoring on the CPU and on
#      CUDA (RECSTREAM_REQUIRE_GPU), same backlog, same model.
# Each step runs even when an earlier one failed; the exit status says whether all passed.
# Results go to GPU_CHECK_OUT (default benchmarks/results): scorer_speed_gpu.json,
# pipeline_speed_gpu.json and .md, gpu_check_tests.log.
#
# Usage: benchmarks/gpu_check.sh
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
    PYTHON=python3
fi
OUT_DIR="${GPU_CHECK_OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
failed=()

step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    local started=$SECONDS
    if ! timeout "$limit" "$@"; then
        failed+=("$name")
        echo "!! $name failed (exit status above)"
    fi
    echo "   ($name took $((SECONDS - started)) s)"
}

step environment 60 "$PYTHON" - <<'EOF'
import onnxruntime as ort

print("onnxruntime", ort.__version__, "from", ort.__file__)
print("available providers:", ort.get_available_providers())
EOF
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    echo "nvidia-smi not found"
fi

echo "== tests"
timeout 300 "$PYTHON" -m pytest -p no:cacheprovider -q -rs -s \
    tests/export/test_export_cuda.py tests/export/test_export_runtime.py \
    tests/streams/test_scoring.py >"$OUT_DIR/gpu_check_tests.log" 2>&1
status=$?
grep -E "on CUDA vs|passed|failed|SKIPPED|Error" "$OUT_DIR/gpu_check_tests.log" | tail -30
if ((status != 0)); then
    failed+=(tests)
fi

step "scorer speed" 240 "$PYTHON" benchmarks/scorer_speed.py --quick --threads "$(nproc)" \
    --out "$OUT_DIR/scorer_speed_gpu.json"

step "pipeline, CPU vs CUDA scorer" 300 "$PYTHON" benchmarks/pipeline_speed.py --quick \
    --brokers noida --scenarios recstream-passthrough,recstream-full,recstream-full-gpu \
    --events 20000 --users 2000 --no-deep --output "$OUT_DIR/pipeline_speed_gpu.json"

if ((${#failed[@]})); then
    echo "GPU check: FAILED steps: ${failed[*]}"
    exit 1
fi
echo "GPU check: all steps passed"
