"""Class-incremental metrics from per-phase predictions (numpy in, plain Python out).

Neutral ground: the PyCIL runner (:mod:`cim_plugin.pycil.runner`) computes a run's results.json numbers with
these; this module imports neither :mod:`cim_plugin.pycil` nor :mod:`cim_plugin.bench`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

__all__ = ["task_accuracies", "accuracy_matrix", "average_incremental_accuracy", "forgetting"]


def task_accuracies(y_pred: np.ndarray, y_true: np.ndarray, task_ends: Sequence[int]) -> List[Optional[float]]:
    """Top-1 accuracy (%) on the classes of each task.

    y_pred, y_true: int arrays (N,) of predicted / true class ids (PyCIL's incremental ids).
    task_ends: cumulative class counts per task, e.g. [10, 20, 30]; task j holds classes
    [task_ends[j-1], task_ends[j]). Tasks with no test sample give None.
    """
    out: List[Optional[float]] = []
    start = 0
    for end in task_ends:
        sel = (y_true >= start) & (y_true < end)
        out.append(float(np.round((y_pred[sel] == y_true[sel]).mean() * 100, 2)) if sel.any() else None)
        start = end
    return out


def accuracy_matrix(rows: Sequence[Sequence[Optional[float]]]) -> List[List[Optional[float]]]:
    """Square matrix A[i][j] = accuracy on task j after phase i (None for j > i)."""
    n = len(rows)
    return [list(row) + [None] * (n - len(row)) for row in rows]


def average_incremental_accuracy(top1: Sequence[float]) -> Optional[float]:
    """Mean of the per-phase top-1 accuracies (%)."""
    return float(np.mean(top1)) if len(top1) else None


def forgetting(matrix: Sequence[Sequence[Optional[float]]]) -> Optional[float]:
    """Average forgetting (%) after the last phase.

    For every task j before the last, the drop from its best accuracy in phases j..T-2 to its
    accuracy after the last phase T-1, averaged over j. None with a single phase.
    """
    last = len(matrix) - 1
    if last < 1:
        return None
    drops = []
    for j in range(last):
        history = [matrix[i][j] for i in range(j, last) if matrix[i][j] is not None]
        final = matrix[last][j]
        if history and final is not None:
            drops.append(max(history) - final)
    return float(np.mean(drops)) if drops else None
