#!/usr/bin/env bash
# The GPU check: CUDA-only tests, tiny iCaRL/DER/FOSTER runs (baseline, CIM raw, CIM jpeg) on cuda,
# DataParallel over the GPUs present, torchrun with nccl, a resume on the GPU, and throughput; one line per
# check with its time (details: benchmarks/gpu_check.py). Under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh            # python: $GPU_CHECK_PYTHON, else .venv/bin/python, else python3
#   GPU_CHECK_OUT=/tmp/gc bash benchmarks/gpu_check.sh   # keep the runs' folders there
#
# Exit status: 0 all checks passed, 1 some failed, 2 no CUDA device (one line, nothing run).
set -u
cd "$(dirname "$0")/.."
PY="${GPU_CHECK_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  echo "gpu_check: no CUDA device visible to torch ($PY: torch.cuda.is_available() is False or torch is missing); run it on a machine with a GPU" >&2
  exit 2
fi
"$PY" benchmarks/gpu_check.py
status=$?
[ "$status" -gt 1 ] && status=1
exit "$status"
