#!/usr/bin/env bash
# The GPU check, one script, at most ~8 minutes on one NVIDIA GPU:
#   1. installs the CUDA build of jax (the same version) into the active environment,
#   2. resnet50's train step at batch 256, ours in fp32 and bf16 beside torchvision's (fp32 and AMP bf16,
#      channels_last): images/s and MFU against the GPU's data-sheet peak (benchmarks/gpu_step.py),
#   3. the lenet5 main job against Keras's fit (benchmarks/main_job.py, one warm-up and two timed rounds),
#   4. the parallel tests (they run on forced CPU devices: a check that the CUDA install broke nothing).
#
#   . .venv/bin/activate && bash benchmarks/gpu.sh [OUT_DIR]         # figures land in OUT_DIR (default gpu_out/)
#
# GPU_SMOKE=1 runs the python parts with tiny settings and skips the install (a CPU check of the script).
# Each part has its own time bound, so one that hangs cannot eat the others' time.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=3
status=0
part() {  # part NAME SECONDS COMMAND...: run one part with a time bound, remember a failure, go on
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most ${seconds}s)"
    local start=$SECONDS
    timeout "$seconds" "$@" || { echo "!! $name failed or ran out of time (exit $?)"; status=1; }
    echo "== $name: $((SECONDS - start))s"
}

if [[ ${GPU_SMOKE:-0} == 1 ]]; then
    STEP_ARGS=(--model=lenet5 --batch_size=8 --image_size=28 --steps=2)
    JOB_ARGS=(--runs=1 --warmup=0 --peers=ours --ours_args=--num_train_steps=20)
    TESTS=(tests/test_parallel.py -k "indivisible or unknown")
else
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia_smi.csv"
    JAX_VERSION=$(python -c 'import jax; print(jax.__version__)')
    CUDA_MAJOR=$(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p' | head -1)
    # jax's CUDA wheels (plugin + pjrt) for the driver's CUDA major version; 12 as the fallback.
    echo "== install jax[cuda${CUDA_MAJOR:-12}]==$JAX_VERSION (at most 180s)"
    timeout 180 pip install -q "jax[cuda${CUDA_MAJOR:-12}]==$JAX_VERSION" \
        || timeout 180 pip install -q "jax[cuda12]==$JAX_VERSION" || { echo "!! install failed"; status=1; }
    python -c 'import jax; d = jax.devices()[0]; print("jax", jax.__version__, d.platform, d.device_kind)' \
        | tee "$OUT/jax_device.txt"
    STEP_ARGS=(--model=resnet50 --batch_size=256 --steps=20)
    JOB_ARGS=(--runs=2 --warmup=1)
    TESTS=(tests/test_parallel.py tests/test_multihost.py)
fi

part "resnet50 train step, ours fp32/bf16 vs torch fp32/AMP" 150 \
    python benchmarks/gpu_step.py "${STEP_ARGS[@]}" --json="$OUT/gpu_step.json"
part "lenet5 main job vs Keras fit" 200 \
    python benchmarks/main_job.py "${JOB_ARGS[@]}" --json="$OUT/main_job.json"
part "parallel tests" 90 python -m pytest -q -x -p no:cacheprovider "${TESTS[@]}"
echo "figures: $OUT/gpu_step.json $OUT/main_job.json"
exit $status
