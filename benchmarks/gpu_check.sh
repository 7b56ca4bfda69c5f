#!/usr/bin/env bash
# The GPU check: run once on a machine with a CUDA GPU (under 5 minutes on one GPU). It measures, in one run,
# bf16/fp16 training throughput of GCNN-8 and GCNN-14 against the plain reference as a fraction of the GPU's measured
# matmul peak, the paper's Table 4 GPU columns (GCNN-8B, GCNN-9, LSTM-2048), batch-1 generation and one DDP/NCCL
# step, and writes benchmarks/results/YYYY-MM-DD-gpu.{json,md}. See benchmarks/bench_gpu.py for the protocol.
#
#   benchmarks/gpu_check.sh                 # needs a CUDA build of torch==2.13.0 in $PYTHON (default: python3)
#   benchmarks/gpu_check.sh --smoke         # the CPU fallback: tiny models, seconds (tests/test_bench_gpu.py runs it)
#
# Extra arguments go to bench_gpu.py (e.g. --repeats 20, --note "shared GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--smoke" ]; then
  exec "$PYTHON" benchmarks/bench_gpu.py "$@"
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check.sh: no CUDA GPU visible to $("$PYTHON" -c 'import torch; print("torch", torch.__version__)') " \
       "(a CPU-only build, or no driver); install a CUDA build of torch==2.13.0, or run with --smoke" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv,noheader || true
# the run is sized for about 2 minutes; the bound keeps a stuck kernel from holding a lent GPU
exec timeout 290 "$PYTHON" benchmarks/bench_gpu.py "$@"
