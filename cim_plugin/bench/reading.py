"""A one-paragraph reading of a benchmark's baseline-vs-CIM result, written from its numbers.

:func:`reading` takes plain data (a dict of numbers, see its docstring) and says what they show, including
"no gain" or "a loss" when they do; :func:`numbers_from_summary` gathers that dict from a benchmark folder's
summary.csv and summary.md.  ``python -m cim_plugin.bench.reading DIR`` prints the paragraph (exps/demo.sh).
"""

import csv
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["reading", "numbers_from_summary", "OLD_CLASS_MARGIN"]

OLD_CLASS_MARGIN = 2.0  # pts of old-class top-1 below which CIM and the baseline read as "about the same"


def _gain_words(mean: float, se: float, what: str) -> str:
    """"+a ± s.e. b pts <what> (resolved / within noise / no gain / a loss)"."""
    if mean - se > 0:
        verdict = "a gain resolved from noise (gain − 1 s.e. > 0)"
    elif mean > 0:
        verdict = "a gain within noise"
    elif mean + se < 0:
        verdict = "a loss resolved from noise"
    elif mean < 0:
        verdict = "no gain (a loss within noise)"
    else:
        verdict = "no gain"
    return f"{mean:+.2f} ± s.e. {se:.2f} pts {what}, {verdict}"


def reading(n: Dict[str, Any]) -> str:
    """The paragraph, from a dict of plain numbers:

    ``seeds`` (int); ``baseline`` and ``cim``: dicts with ``exemplars_per_class``, ``aia`` (average
    incremental top-1, %), ``last_top1`` (%), ``first_top1`` (phase-0 top-1, %), ``old_last`` (old-class
    top-1 after the last phase, %), each a float or None; ``gain_aia`` and ``gain_last``: (mean, s.e.) in points; ``iou``: None or a dict with ``iou``,
    ``random_iou``, ``center_iou``; optional ``chance_first`` and ``chance`` (%, 100 / classes seen in
    phase 0 and at the end).
    """
    b, c, seeds = n["baseline"], n["cim"], int(n["seeds"])
    over = "one seed (no s.e.)" if seeds == 1 else f"{seeds} seeds"
    parts: List[str] = [
        f"CIM holds {c['exemplars_per_class']:.1f} exemplars per class vs {b['exemplars_per_class']:.1f} for the "
        f"baseline in the same bytes of memory."]
    gm, gs = n["gain_aia"]
    lm, ls = n["gain_last"]
    parts.append(f"Paired by seed over {over}: {_gain_words(gm, gs, 'in average incremental top-1')}; "
                 f"{_gain_words(lm, ls, 'in last top-1')}.")
    if b.get("first_top1") is not None:
        chance0 = n.get("chance_first")
        learns = chance0 is None or b["first_top1"] > 2 * chance0
        parts.append(f"The baseline {'learns' if learns else 'barely learns'}: phase-0 top-1 {b['first_top1']:.1f} %"
                     + (f" (chance {chance0:.1f} %)" if chance0 is not None else "")
                     + f", last top-1 {b['last_top1']:.1f} % vs {c['last_top1']:.1f} % with CIM"
                     + (f" (chance {n['chance']:.1f} %)." if n.get("chance") is not None else "."))
    if b.get("old_last") is not None and c.get("old_last") is not None:
        d = c["old_last"] - b["old_last"]
        parts.append(f"Old classes after the last phase: top-1 {b['old_last']:.1f} % (baseline) vs "
                     f"{c['old_last']:.1f} % (CIM), {d:+.1f} pts"
                     + (" — CIM's extra exemplars keep more of the old classes." if d >= OLD_CLASS_MARGIN else
                        " — CIM keeps fewer of the old classes here." if d <= -OLD_CLASS_MARGIN else
                        f" — about the same (within {OLD_CLASS_MARGIN:.0f} pts; this column has no paired s.e.)."))
    iou = n.get("iou")
    if iou:
        beats = iou["iou"] > max(iou["random_iou"], iou["center_iou"])
        parts.append(f"The stored boxes {'cover the objects' if beats else 'do not find the objects better than chance'}"
                     f": IoU with the true object box {iou['iou']:.3f} vs {iou['random_iou']:.3f} for a same-size "
                     f"random box and {iou['center_iou']:.3f} for a same-size centred box.")
    return " ".join(parts)


def _md_table(text: str, heading: str) -> List[Dict[str, str]]:
    """Rows (dicts by header) of the first markdown table under the ``## heading...`` line."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## " + heading)), None)
    if start is None:
        return []
    rows, header = [], None
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if header is not None and rows:
                break
            continue
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(cells[0]) <= set("-:"):
            rows.append(dict(zip(header, cells)))
    return rows


def _num(cell: Optional[str]) -> Optional[float]:
    """The mean of a "m ± s" cell (None for "—" or missing)."""
    try:
        return float(cell.split("±")[0])
    except (AttributeError, ValueError):
        return None


def numbers_from_summary(folder: str, config: Optional[str] = None) -> Dict[str, Any]:
    """The dict :func:`reading` takes, from DIR/summary.csv and DIR/summary.md (first config by default)."""
    folder = Path(folder)
    rows = list(csv.DictReader(open(folder / "summary.csv", newline="")))
    config = config or rows[0]["config"]
    by = {r["variant"]: r for r in rows if r["config"] == config}
    base, cim = by["baseline"], by.get("cim") or next(r for v, r in by.items() if v != "baseline")
    md = (folder / "summary.md").read_text()
    phases = [r for r in _md_table(md, "Old and new classes per phase") if r.get("config") == config]

    def arm(row, variant):
        mine = [r for r in phases if r["variant"] == variant]
        first = _num(mine[0]["top-1 new classes (%)"]) if mine else None
        old_last = _num(mine[-1]["top-1 old classes (%)"]) if len(mine) > 1 else None
        return {"exemplars_per_class": float(row["exemplars_per_class_mean"]), "aia": float(row["aia_cnn_mean"]),
                "last_top1": float(row["last_top1_cnn_mean"]), "first_top1": first, "old_last": old_last}

    numbers: Dict[str, Any] = {
        "seeds": int(cim["n_paired"] or cim["n_seeds"]), "baseline": arm(base, "baseline"),
        "cim": arm(cim, cim["variant"]),
        "gain_aia": (float(cim["gain_aia_cnn_mean"]), float(cim["gain_aia_cnn_se"] or 0.0)),
        "gain_last": (float(cim["gain_last_top1_cnn_mean"]), float(cim["gain_last_top1_cnn_se"] or 0.0)),
        "iou": None}
    ious = [r for r in _md_table(md, "Mask boxes vs true object boxes") if r.get("config") == config]
    if ious:
        r = ious[0]
        numbers["iou"] = {"iou": _num(r["mean IoU"]), "random_iou": _num(r["same-size random IoU"]),
                          "center_iou": _num(r["same-size centred IoU"])}
    bench = folder / "benchmark.json"
    if bench.exists():
        cfg = json.loads(bench.read_text())["configs"].get(config, {}).get("config", {})
        classes = cfg.get("synthetic_num_classes") if cfg.get("dataset") == "synthetic" else None
        if cfg.get("init_cls"):
            numbers["chance_first"] = 100.0 / cfg["init_cls"]
        if classes:
            numbers["chance"] = 100.0 / classes
    return numbers


if __name__ == "__main__":
    print(reading(numbers_from_summary(sys.argv[1], *sys.argv[2:3])))
