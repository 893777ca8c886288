"""Statistics over seeds and number formatting for the report and the console."""

from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import numpy as np

__all__ = ["mean_std", "human_bytes", "fmt"]


def mean_std(values: Iterable[Optional[float]]) -> Tuple[float, float, int]:
    """(mean, sample std with ddof 1, n) of the non-None values; NaN mean if none, NaN std if n < 2."""
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def fmt(mean: float, std: float = float("nan"), digits: int = 2) -> str:
    """"m ± s" (or "m" with a single seed, "—" when missing)."""
    if mean is None or not math.isfinite(mean):
        return "—"
    if std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
