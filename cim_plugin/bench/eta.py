"""How long a benchmark has left: an estimate from the runs it has finished, printed after each run.

A run's kind is its (config stem, variant): runs of one kind take about the same time (same learner, same
schedule, same CIM options), so a run still to go is estimated by the mean wall time of the finished runs of
its kind, else of its variant, else of every finished run. A run in flight counts what it has left (its
estimate less the seconds it has run, at least 0). The runs share ``jobs`` workers, so the total is divided
by ``jobs``. It is a guide for planning, not a measurement: the first runs of a config not yet seen are
estimated from other configs.
"""

from __future__ import annotations

from statistics import fmean
from typing import Optional, Sequence, Tuple

__all__ = ["eta_seconds", "eta_text"]

Kind = Tuple[str, str]  # (config stem, variant)


def _estimate(kind: Kind, finished: Sequence[Tuple[Kind, float]]) -> float:
    for same in (lambda k: k == kind, lambda k: k[1] == kind[1], lambda k: True):
        seconds = [s for k, s in finished if same(k)]
        if seconds:
            return fmean(seconds)
    raise ValueError("no finished run to estimate from")


def eta_seconds(finished: Sequence[Tuple[Kind, float]], left: Sequence[Tuple[Kind, float]],
                jobs: int = 1) -> Optional[float]:
    """Seconds the benchmark has left, or None before any run has finished.

    ``finished``: (kind, wall seconds) of the runs done; ``left``: (kind, seconds it has run so far, 0 if
    not started) of the runs still to finish; ``jobs``: runs at once.
    """
    if not finished or jobs < 1:
        return None
    return sum(max(0.0, _estimate(kind, finished) - ran) for kind, ran in left) / jobs


def eta_text(seconds: Optional[float]) -> str:
    """' | about 12 min left' (empty when there is no estimate or nothing is left)."""
    if seconds is None or seconds <= 0:
        return ""
    if seconds < 90:
        return f" | about {seconds:.0f} s left"
    if seconds < 2 * 3600:
        return f" | about {seconds / 60:.0f} min left"
    return f" | about {seconds / 3600:.1f} h left"
