#!/usr/bin/env bash
# GPU checks for a machine with an NVIDIA GPU, in one go:
#   1. environment: onnxruntime, its providers, the GPU, and whether a model really runs on CUDA;
#   2. the CUDA tests (tests/export/test_export_cuda.py: CUDA sessions, I/O binding, fp32 and
#      fp16 agreement with PyTorch) beside the runtime and scoring tests;
#   3. scorer speed: a SASRec-size model (50k items, d 64, 2 layers, length 50; random init)
#      exported in fp32, int8 and fp16: PyTorch eager and onnxruntime fp32 / int8 on the CPU
#      (every core), fp32 / fp16 on CUDA, batch 1, 32, 512 x length 10, 50, the runtime's
#      overhead, and the speed-up over the CPU at batch 512;
#   4. the full pipeline on Tansu: recstream's worker without scoring, scoring on the CPU
#      and on CUDA (RECSTREAM_REQUIRE_GPU), same 100,000-click backlog, same model; with
#      GPU_CHECK_DEEP=1 also latency, state and scale-out (1, 2, 3 workers sharing the
#      GPU) with the CUDA scorer (about 2.5 minutes more);
#   5. the same three throughput figures on noida.
# Each step runs even when an earlier one failed; the exit status says whether all passed.
# Results go to GPU_CHECK_OUT (default benchmarks/results): scorer_speed_gpu.json,
# pipeline_speed_gpu.json and .md (Tansu), pipeline_speed_gpu_noida.json and .md,
# gpu_check_tests.log.  About 4 minutes on 16 cores (from the step times of the 2026-12-04 run).
#
# Usage: [GPU_CHECK_DEEP=1] benchmarks/gpu_check.sh
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

# onnxruntime-gpu finds CUDA and cuDNN on the library path; the nvidia-* pip packages
# (PyTorch's CUDA wheels bring them) keep theirs under site-packages/nvidia/.
nvidia_libs=$("$PYTHON" - <<'EOF'
import glob
import os

try:
    import nvidia
except ImportError:
    raise SystemExit(0)
found = {os.path.dirname(p) for root in nvidia.__path__ for p in glob.glob(f"{root}/**/lib*.so*", recursive=True)}
print(":".join(sorted(found)))
EOF
)
if [[ -n "$nvidia_libs" ]]; then
    export LD_LIBRARY_PATH="$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

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
echo "CUDA libraries from nvidia-* pip packages: ${nvidia_libs:-none}"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    echo "nvidia-smi not found"
fi

echo "== tests"
timeout 120 "$PYTHON" -m pytest -p no:cacheprovider -q -rs -s \
    tests/export/test_export_cuda.py tests/export/test_export_runtime.py \
    tests/streams/test_scoring.py >"$OUT_DIR/gpu_check_tests.log" 2>&1
status=$?
grep -E "on CUDA vs|passed|failed|SKIPPED|Error" "$OUT_DIR/gpu_check_tests.log" | tail -30
if ((status != 0)); then
    failed+=(tests)
fi

step "scorer speed" 150 "$PYTHON" benchmarks/scorer_speed.py --quick --threads "$(nproc)" \
    --out "$OUT_DIR/scorer_speed_gpu.json"

scenarios=recstream-passthrough,recstream-full,recstream-full-gpu
deep=(--no-deep)
limit=180
if [[ "${GPU_CHECK_DEEP:-0}" == 1 ]]; then
    deep=(--deep-scenario recstream-full-gpu --scale-workers 1,2,3 --latency-seconds 3)
    limit=360
fi
step "pipeline on Tansu: CPU vs CUDA scorer" "$limit" "$PYTHON" benchmarks/pipeline_speed.py \
    --quick --brokers tansu --scenarios "$scenarios" --events 100000 --users 5000 \
    "${deep[@]}" --output "$OUT_DIR/pipeline_speed_gpu.json"

step "pipeline on noida: CPU vs CUDA scorer" 90 "$PYTHON" benchmarks/pipeline_speed.py \
    --quick --brokers noida --scenarios "$scenarios" --events 100000 --users 5000 --no-deep \
    --output "$OUT_DIR/pipeline_speed_gpu_noida.json"

if ((${#failed[@]})); then
    echo "GPU check: FAILED steps: ${failed[*]}"
    exit 1
fi
echo "GPU check: all steps passed"
