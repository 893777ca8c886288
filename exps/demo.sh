#!/usr/bin/env bash
# The demo that ends `bash setup.sh`: iCaRL and iCaRL+CIM side by side on the synthetic dataset (CPU, about
# 5 minutes on 2 cores; 3 seeds, paired by seed, same bytes of memory), then the results table, the IoU of
# CIM's stored boxes with the true object boxes beside same-size random and centred boxes, a reading of the
# numbers, and where the figures are.
#     bash exps/demo.sh      (DEMO_CONFIG, DEMO_OUT, DEMO_SEEDS, PYTHON override the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${DEMO_CONFIG:-exps/demo.json}
OUT=${DEMO_OUT:-runs/demo_benchmark}
SEEDS=${DEMO_SEEDS:-1993 1994 1995}
PY=${PYTHON:-.venv/bin/python}
echo "== demo: iCaRL vs iCaRL+CIM on the synthetic dataset (CPU; seeds $SEEDS, same bytes of memory) =="
# shellcheck disable=SC2086  # SEEDS is a list of words
"$PY" exps/benchmark.py "$CONFIG" --seeds $SEEDS --jobs 2 --out "$OUT" --overwrite
echo
# the results table of summary.md (baseline and CIM rows, paired gains ± s.e.), the old/new-class table,
# the box IoU table (stored boxes vs true object boxes, beside same-size random and centred boxes)
section() { awk -v h="## $1" 'index($0, h) == 1 {on = 1; print; next} on && /^## / {exit} on' "$OUT/summary.md"; }
section "Results"
section "Old and new classes per phase"
section "Mask boxes vs true object boxes"
echo "## Reading"
echo
"$PY" -m cim_plugin.bench.reading "$OUT"
echo
echo "accuracy per phase:                              $OUT/curves.png"
echo "stored exemplars (original, CAM, box, decoded):  $OUT/exemplars.png"
echo "full report:                                     $OUT/summary.md"
