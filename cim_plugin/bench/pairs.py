"""Variant against variant: differences between two CIM variants paired by seed (e.g. CIM+JPEG minus MRDC,
learned minus fixed-threshold masks, or one variant under two configs that differ in one key)."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

from .layout import BASELINE
from .stats import mean_std

__all__ = ["comparable_pairs", "pair_rows", "pairs_section"]

FIELDS = ("avg_incremental_accuracy_cnn", "last_top1_cnn")  # results.json keys compared


def comparable_pairs(groups, order) -> List[Tuple[Tuple[str, str], Tuple[str, str]]]:
    """Pairs ``(a, b)`` of arms ``(config, variant)`` that share learner and dataset and at least two seeds:
    every two CIM variants of one config (a before b in ``order``), the same CIM variant under two configs (a
    config that changes one key beside the original), and every arm of another config against a reference
    config, one run with ``--baseline-only`` (e.g. the learner with twice the memory): ``b`` is the reference."""
    stems = list(dict.fromkeys(k[0] for k in order))
    references = {s for s in stems if all(k[1] == BASELINE for k in order if k[0] == s)}

    def kind(key):
        first = next(iter(groups[key].values()))
        return first.get("learner"), first.get("dataset")

    def comparable(a, b):
        return kind(a) == kind(b) and len(set(groups[a]) & set(groups[b])) >= 2

    arms = [k for k in order if k[1] != BASELINE]
    pairs = [(a, b) for i, a in enumerate(arms) for b in arms[i + 1:] if (a[0] == b[0] or a[1] == b[1]) and comparable(a, b)]
    pairs += [(a, ref) for ref in order if ref[0] in references
              for a in order if a[0] not in references and comparable(a, ref)]
    return pairs


def pair_rows(groups, order) -> List[Dict[str, Any]]:
    """Per comparable pair: the seeds, and per field the per-seed differences a − b, their mean, sample
    std and standard error (std / √seeds)."""
    rows = []
    for a, b in comparable_pairs(groups, order):
        seeds = sorted(set(groups[a]) & set(groups[b]))
        row: Dict[str, Any] = {"a": a, "b": b, "seeds": seeds}
        for field in FIELDS:
            diffs = [groups[a][s][field] - groups[b][s][field] for s in seeds
                     if groups[a][s].get(field) is not None and groups[b][s].get(field) is not None]
            mean, std, n = mean_std(diffs)
            row[field] = {"diffs": diffs, "mean": mean, "std": std, "se": std / math.sqrt(n) if n > 1 else math.nan}
        rows.append(row)
    return rows


def _signed(x: float, digits: int = 2) -> str:
    return "—" if not math.isfinite(x) else f"{x:+.{digits}f}".replace("-", "−")


def _cell(stat: Dict[str, Any]) -> str:
    return _signed(stat["mean"]) + ("" if not math.isfinite(stat["se"]) else f" ± {stat['se']:.2f}")


def pairs_section(groups, order) -> List[str]:
    """Markdown: the table of :func:`pair_rows` (nothing when no two variants compare)."""
    rows = pair_rows(groups, order)
    if not rows:
        return []
    lines = ["", "## Variant against variant (paired by seed)", "",
             "| a | b | seeds | a − b avg inc acc (pts ± s.e.) | per seed | a − b last top-1 (pts ± s.e.) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        aia, last = (r[field] for field in FIELDS)
        (config_a, variant_a), (config_b, variant_b) = r["a"], r["b"]
        same = config_a == config_b
        a = f"{variant_a} ({config_a})" if same else f"{config_a} / {variant_a}"
        b = variant_b if same else f"{config_b} / {variant_b}"
        lines.append("| " + " | ".join([a, b, str(len(r["seeds"])), _cell(aia),
                                        ", ".join(_signed(d) for d in aia["diffs"]), _cell(last)]) + " |")
    lines += ["", "Every two CIM variants of one config, one variant under two configs of the same learner and "
              "dataset, and every arm against a reference config run without CIM (`--baseline-only`); "
              "differences of the same seed's runs, mean ± standard error; a is ahead when "
              "a − b − 1 s.e. > 0. Per seed in seed order."]
    return lines
