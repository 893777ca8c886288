#!/usr/bin/env bash
# The demo that ends `bash setup.sh`: iCaRL and iCaRL+CIM side by side on the synthetic dataset (CPU, a
# few minutes on 2 cores; same seed, same bytes of memory), then the results table and where the
# figures are.     bash exps/demo.sh      (DEMO_CONFIG, DEMO_OUT, PYTHON override the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${DEMO_CONFIG:-exps/demo.json}
OUT=${DEMO_OUT:-runs/demo_benchmark}
PY=${PYTHON:-.venv/bin/python}
echo "== demo: iCaRL vs iCaRL+CIM on the synthetic dataset (CPU; same seed, same bytes of memory) =="
"$PY" exps/benchmark.py "$CONFIG" --seeds 1993 --jobs 2 --out "$OUT" --overwrite
echo
# the results table of summary.md (baseline and CIM rows, gains), then the figures
awk '/^## Results/ {on = 1; next} on && /^## / {exit} on' "$OUT/summary.md"
echo "accuracy per phase:                              $OUT/curves.png"
echo "stored exemplars (original, CAM, box, decoded):  $OUT/exemplars.png"
echo "full report:                                     $OUT/summary.md"
