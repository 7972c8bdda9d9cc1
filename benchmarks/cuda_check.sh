#!/usr/bin/env bash
# The checks and measurements that need an NVIDIA GPU, in one run:
#   the CUDA tests (golden cases on both engines, the torch backend against the CPU
#   reference), the engine benchmark on CUDA at batch 128 and 16 (with the peak memory of a
#   full-length training step), the A/B of the CUDA graphs and the VPM layer
#   (benchmarks/ab_cuda.py), and two epochs of the spiking training script on CUDA followed
#   by the whisker-deprivation script on its checkpoint.
# usage: GOLDEN_DIR=/path/to/golden bash benchmarks/cuda_check.sh [log folder] [work folder]
# Logs go to the log folder (default cuda_check); the generated dataset, checkpoints and
# figures to the work folder (default: the log folder's work/).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-cuda_check}
work=${2:-$out/work}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}
status=0
# run LOG CMD...: print and log CMD's output; keep going after a failure, fail at the end
run() {
  local log=$1; shift
  echo "+ $*"
  "$@" 2>&1 | tee "$out/$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "FAILED: $*"; status=1; }
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numba', numba.__version__)"
run pytest.txt $PY -m pytest -q -p no:cacheprovider tests/network/test_engine_torch.py \
    tests/network/test_model.py -k "cuda or torch"
run bench_b128.txt $PY benchmarks/bench_step.py --device cuda --batch 128 --steps 100 --memory
run bench_b16.txt $PY benchmarks/bench_step.py --device cuda --batch 16 --steps 100
run ab_b128.txt $PY benchmarks/ab_cuda.py --batch 128 --steps 100
run ab_b128_t550.txt $PY benchmarks/ab_cuda.py --batch 128 --steps 550 --repeats 2
run train.txt $PY RSNN_bfd_SpikingBased.py --epochs 2 --device cuda --data-dir "$work/data" \
    --out "$work/train" --no-progress
run deprivation.txt $PY RSNN_bfd_whisker_deprivation.py --checkpoint "$work/train/best.pth" \
    --trials 3 --device cuda --out "$work/deprivation" --no-progress
exit $status
