#!/usr/bin/env bash
# Every GPU check in one command, on a machine with a CUDA GPU, CuPy and PyTorch (JAX optional):
#
#   scripts/gpu_check.sh [OUTDIR] [MNIST_DIR]
#
# 1. the GPU tests (pytest -m gpu: cupy, torch-cuda and jax-cuda specs, and PyTorch's sync
#    debug mode around training steps), 2. the parity report (float64) of numpy against cupy
#    and torch-cuda, 3. the benchmark at batch 128 and 512 (NumPy on this machine's CPU against
#    CuPy, PyTorch and JAX on the GPU), 4. where a CuPy and a torch-cuda step spend their time,
#    5. the default training run on CuPy (with MNIST_DIR, an IDX folder holding the test set,
#    its test accuracy), 6. compiled execution: parity of a CUDA-graph run (torch:cuda --compile)
#    and a jax.jit run against NumPy, and training with --compile (the benchmark's "compiled" rows
#    and PyTorch's torch.compile reduce-overhead row come with step 3; step 3 also times the lenet5, vgg
#    and resnet20 presets on CuPy, torch:cuda eager and graphed, and jax:cuda against PyTorch's twin
#    eager and under torch.compile), 7. two data-parallel ranks
#    on the GPU(s) (NCCL where there are two GPUs, host staging otherwise), 8. resnet20: an epoch of
#    xpcnn on CuPy against PyTorch's twin on CUDA (scripts/torch_twin.py).  Everything lands in
#    OUTDIR (default runs/gpu); the exit status is non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu}
mnist=${2:-}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}  # JAX shares the GPU
export PYTHONUNBUFFERED=1
python=${PYTHON:-python}
failed=()

step() {  # step NAME LOGFILE COMMAND...: run, log, remember a failure
  local name=$1 log=$2
  shift 2
  echo "== $name: $*"
  if ! "$@" 2>&1 | tee "$out/$log"; then
    failed+=("$name")
  fi
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$python" -c "import sys, numpy, array_api_compat; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'array-api-compat', array_api_compat.__version__)"
  "$python" -c "import cupy; print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())"
  "$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  "$python" -c "import jax; print('jax', jax.__version__, jax.devices())" || true  # JAX is optional here
} 2>&1 | tee "$out/machine.txt"

# CuPy and PyTorch on CUDA must be usable: a GPU test that skips for want of them is an error here.
step "gpu tests" pytest_gpu.log env XPCNN_REQUIRE_BACKENDS="${XPCNN_REQUIRE_BACKENDS:-cupy:cuda,torch:cuda}" \
  "$python" -m pytest -m gpu -q -rs -p no:cacheprovider
step "parity numpy,cupy,torch:cuda" compare.log "$python" scripts/train.py --compare numpy,cupy,torch:cuda \
  --out "$out/compare" --quiet
step "lockstep parity float32" compare_float32.log "$python" scripts/train.py --compare numpy,cupy,torch:cuda \
  --dtype float32 --plot --out "$out/compare_float32" --quiet
step "benchmark" bench.log "$python" scripts/bench.py --batch-sizes 128,512 --repeats 5 \
  --backends numpy,cupy:cuda,torch:cuda,jax:cuda --out "$out/bench.json"
# The presets: xpcnn on CuPy, torch:cuda (eager and CUDA-graphed: its "compiled" row) and jax:cuda (jax.jit)
# against PyTorch's twin on CUDA, eager and torch.compile reduce-overhead (no CPU rows: those are bench.py's
# job on a quiet CPU machine; a backend missing here is reported as skipped).
step "benchmark lenet5,vgg,resnet20" bench_presets.log "$python" scripts/bench.py --workload lenet5,vgg,resnet20 \
  --batch-sizes 128 --repeats 5 --backends cupy:cuda,torch:cuda,jax:cuda --torch-devices cuda --torch-threads "" \
  --out "$out/bench_presets.json"
step "profile cupy" profile.log "$python" scripts/profile_step.py --backend cupy:cuda --batch-size 512 --repeats 100
step "profile torch" profile_torch.log "$python" scripts/profile_step.py --backend torch:cuda --batch-size 512 --repeats 100
step "train on cupy" train.log "$python" scripts/train.py --device cuda --out "$out/train" --quiet \
  ${mnist:+--eval-data "$mnist"}
step "parity compiled" compare_compiled.log "$python" scripts/train.py --compare numpy,torch:cuda,jax:cuda --compile \
  --out "$out/compare_compiled" --quiet
step "train torch:cuda --compile" train_graph.log "$python" scripts/train.py --backend torch --device cuda --compile \
  --out "$out/train_graph" --quiet ${mnist:+--eval-data "$mnist"}
step "colour digits" colour.log "$python" scripts/colour_digits.py "$out/colour_digits.npz" ${mnist:+--test-from "$mnist"}
step "resnet20: xpcnn on cupy vs PyTorch on cuda" twin_resnet20.log "$python" scripts/torch_twin.py --preset resnet20 \
  --data "$out/colour_digits.npz" --epochs 2 --device cuda --out "$out/twin_resnet20"
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
mpiexec=$(dirname "$(command -v "$python")")/mpiexec
if [ -x "$mpiexec" ]; then
  reduction=$([ "$gpus" -ge 2 ] && echo nccl || echo gather)
  step "2 ranks on cuda ($reduction)" distributed.log "$mpiexec" -n 2 "$python" scripts/train.py --distributed \
    --device cuda --reduction "$reduction" --out "$out/distributed" --quiet --epochs 2
else
  echo "== 2 ranks on cuda: skipped (no mpiexec beside $python: pip install -e '.[mpi]')"
fi

if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed"
