"""Task-recency bias after the last phase: where each arm's test images of old and of new classes go.

Replay helps a class-incremental learner mostly by pulling old-class test images back from the newest classes,
so "old predicted as a new class" is the measure beside old/new top-1. Read from each run's
``predictions.npz`` (labels in incremental order: class ids below the classes known before the last phase are
old)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from .layout import read_predictions
from .stats import fmt, mean_std

__all__ = ["recency_split", "recency_rows", "recency_section"]

FIELDS = ("old_top1", "old_to_new", "new_top1", "new_to_old")


def recency_split(y_true: np.ndarray, y_pred: np.ndarray, known: int) -> Dict[str, float]:
    """Percentages for int arrays (N,) of true and predicted incremental class ids, ``known`` = the classes of
    the earlier phases: ``old_top1`` (top-1 on old-class images), ``old_to_new`` (old-class images predicted as
    one of the new classes), ``new_top1``, ``new_to_old``; NaN where a group has no image."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    old, new = y_true < known, y_true >= known

    def pct(mask, hit):
        return float(100.0 * hit[mask].mean()) if mask.any() else float("nan")

    return {"old_top1": pct(old, y_pred == y_true), "old_to_new": pct(old, y_pred >= known),
            "new_top1": pct(new, y_pred == y_true), "new_to_old": pct(new, y_pred < known)}


def _run_split(res: Dict[str, Any]) -> Optional[Dict[str, float]]:
    phases = res.get("phases") or []
    pred = read_predictions(res["_dir"]) if len(phases) >= 2 else None
    if pred is None:
        return None
    return recency_split(pred["y_true"], pred["y_pred"], int(phases[-2]["classes"]))


def recency_rows(groups, order) -> List[Dict[str, Any]]:
    """Per arm with at least one run that has predictions and two phases: (mean, std) over seeds per field."""
    rows = []
    for key in order:
        splits = [s for s in (_run_split(res) for res in groups[key].values()) if s is not None]
        if splits:
            rows.append({"config": key[0], "variant": key[1], "seeds": len(splits),
                         **{f: mean_std(s[f] for s in splits)[:2] for f in FIELDS}})
    return rows


def recency_section(groups, order) -> List[str]:
    """Markdown: the table of :func:`recency_rows` (nothing without predictions)."""
    rows = recency_rows(groups, order)
    if not rows:
        return []
    lines = ["", "## After the last phase: where old and new classes' test images go (mean ± std over seeds)", "",
             "| config | variant | seeds | top-1 old classes (%) | old predicted as a new class (%) | "
             "top-1 new classes (%) | new predicted as an old class (%) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([r["config"], r["variant"], str(r["seeds"])]
                                       + [fmt(*r[f], 1) for f in FIELDS]) + " |")
    lines += ["", "Old = the classes of the earlier phases, new = the last phase's (`predictions.npz`). Old images "
              "predicted as a new class measure the bias towards the newest classes that replay corrects."]
    return lines
