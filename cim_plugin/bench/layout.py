"""Names and file layout of a benchmark folder (the bottom layer of ``cim_plugin.bench``: it imports no other
module of the package).

Folder layout of a benchmark DIR::

    DIR/benchmark.json                         manifest: configs (without "cim"/"seed"), seeds, variants
    DIR/<config stem>/<variant>/seed_<s>/      one run: config.json, console.log and the runner's files
                                               (results.json, predictions.npz, checkpoint.pt, exemplars.pt, memory.pt)
    DIR/summary.md, summary.csv, curves.png, memory.png, exemplars.png

Variants: "baseline" ("cim" false) and "cim" ("cim" true), or one "cim-<mode>" per mask mode when
the config sets "cim_mask" or the command passes mask modes; with codecs, each once per codec
("cim-full-jpeg" is MRDC, "cim-cim-jpeg" CIM+JPEG; see :mod:`cim_plugin.bench.variants`). Each run is a
subprocess of ``exps/run.py`` (:data:`RUN_SCRIPT`) so that a crash of one run neither stops the benchmark
nor keeps its memory.

Object sizes (where the dataset knows its boxes): an image's object size is its true box area /
image area, a class's size that of its median training image; small / medium / large are the
terciles of the class sizes (the paper gives no numeric split).

The readers below return None for a run folder without the file (a run not finished or not started).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["REPO_ROOT", "RUN_SCRIPT", "DEFAULT_SEEDS", "BASELINE", "SIZE_GROUPS", "BENCHMARK_OWNED", "read_results",
           "read_predictions", "read_exemplars"]

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_SCRIPT = REPO_ROOT / "exps" / "run.py"
DEFAULT_SEEDS = (1993, 1994, 1995)
BASELINE = "baseline"
SIZE_GROUPS = ("small", "medium", "large")
BENCHMARK_OWNED = ("cim", "seed")  # keys the benchmark sets per run


# ------------------------------------------------------------------------------ run folder files
def read_results(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def read_predictions(run_dir: str) -> Optional[Dict[str, np.ndarray]]:
    path = Path(run_dir) / "predictions.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def read_exemplars(run_dir: str) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / "exemplars.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
