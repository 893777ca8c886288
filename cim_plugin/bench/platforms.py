"""The report's "Where the runs ran" section: which platforms (software, processor, threads; see
:mod:`cim_plugin.platform_info`) made the runs of a benchmark, and which paired differences mix two."""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Tuple

from ..platform_info import numerics_key
from .layout import BASELINE

__all__ = ["platform_section", "mixed_pairs", "run_platform"]


def run_platform(run: Dict[str, Any]) -> str:
    """The :func:`numerics_key` of the platform a run was made on; a run resumed on another platform
    says so (its phases come from two)."""
    key = numerics_key(run.get("platform"))
    others = {numerics_key(p) for p in run.get("resumed_on") or []} - {key}
    return key + (f" + resumed on {len(others)} other(s)" if others else "")


def mixed_pairs(groups, order) -> List[str]:
    """``"config/variant/seed_N"`` for every CIM run whose baseline run of the same config and seed was made on
    another platform (its paired gain then mixes two platforms' floating-point results)."""
    out = []
    for stem, variant in order:
        if variant == BASELINE or (stem, BASELINE) not in groups:
            continue
        base = groups[(stem, BASELINE)]
        for seed, run in sorted(groups[(stem, variant)].items()):
            if seed in base and run_platform(run) != run_platform(base[seed]):
                out.append(f"{stem}/{variant}/seed_{seed}")
    return out


def platform_section(groups: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]], order) -> List[str]:
    """Markdown lines: runs per platform, and a warning line when runs of the report come from more than
    one (then a rerun agrees bit for bit only on the platform of the run it repeats)."""
    counts = Counter(run_platform(run) for key in order for run in groups[key].values())
    lines = ["", "## Where the runs ran", "", "| platform (torch, processor and instruction set, threads) | runs |",
             "|---|---|"]
    lines += [f"| {key} | {n} |" for key, n in sorted(counts.items())]
    lines += ["", "A rerun of a config and seed reproduces its run bit for bit on the same platform; on another "
              "processor family or thread count torch's kernels sum in another order and the numbers differ "
              "(\"unknown\": runs written before the platform was recorded)."]
    mixed = mixed_pairs(groups, order)
    if len(counts) > 1:
        lines.append(f"Runs from {len(counts)} platforms are joined here"
                     + (f"; these paired gains mix two: {', '.join(mixed)}." if mixed else
                        "; every CIM run is paired with a baseline run of its own platform."))
    return lines
