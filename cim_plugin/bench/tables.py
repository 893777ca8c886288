"""The benchmark's tables: the finished runs of a folder, the summary rows and CSV, the results table with
gains paired by seed, and accuracy on old vs new classes per phase."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..io import atomic_write_text
from ..method.memory import get_codec
from .layout import BASELINE, read_results
from .stats import fmt, human_bytes, mean_std

__all__ = ["collect_runs", "run_order", "summary_rows", "CSV_COLUMNS", "write_csv", "results_table", "old_new_rows",
           "old_new_section"]


def collect_runs(out_dir: Path) -> Dict[Tuple[str, str], Dict[int, Dict[str, Any]]]:
    """(stem, variant) -> seed -> results dict of the finished runs under out_dir (with "_dir")."""
    out: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]] = {}
    for path in sorted(Path(out_dir).glob("*/*/seed_*/results.json")):
        results = read_results(path.parent)
        if results is None or not results.get("finished") or not results.get("phases"):
            continue
        try:
            seed = int(path.parent.name[len("seed_"):])
        except ValueError:
            continue
        results["_dir"] = str(path.parent)
        out.setdefault((path.parent.parent.parent.name, path.parent.parent.name), {})[seed] = results
    return out


def run_order(groups, manifest: Optional[Dict[str, Any]]) -> List[Tuple[str, str]]:
    """Manifest order when known; else configs sorted, baseline first."""
    keys = list(groups)
    if manifest:
        ranked = [(s, v) for s, vs in manifest.get("variants", {}).items() for v in vs]
        known = [k for k in ranked if k in groups]
        return known + sorted(k for k in keys if k not in known)
    return sorted(keys, key=lambda k: (k[0], k[1] != BASELINE, k[1]))


def summary_rows(groups: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]],
                 order: Optional[List[Tuple[str, str]]] = None) -> List[Dict[str, Any]]:
    """One row per (config, variant): mean/std over seeds of the headline numbers, and for CIM
    variants the gain over the baseline of the same config (paired by seed) and the time ratio
    (mean wall time of the variant / of the baseline over the paired seeds)."""
    rows = []
    for stem, variant in order or run_order(groups, None):
        runs = groups[(stem, variant)]
        seeds = sorted(runs)
        first = runs[seeds[0]]
        last = [runs[s]["phases"][-1] for s in seeds]

        def stat(get):
            return mean_std(get(runs[s]) for s in seeds)

        row: Dict[str, Any] = {
            "config": stem, "learner": first.get("learner"), "dataset": first.get("dataset"), "variant": variant,
            "cim_mask": first["config"].get("cim_mask") if first.get("cim") else None,
            "codec": first["config"].get("exemplar_codec", "raw") if first.get("cim") else "raw",
            "jpeg_quality": first["config"].get("jpeg_quality"),
            "n_seeds": len(seeds), "seeds": " ".join(map(str, seeds)),
        }
        for key, get in (
            ("aia_cnn", lambda r: r.get("avg_incremental_accuracy_cnn")),
            ("aia_nme", lambda r: r.get("avg_incremental_accuracy_nme")),
            ("last_top1_cnn", lambda r: r.get("last_top1_cnn")),
            ("forgetting_cnn", lambda r: r.get("forgetting_cnn")),
            ("exemplars_per_class", lambda r: (r["phases"][-1].get("exemplars_per_class") or {}).get("mean")),
            ("memory_bytes", lambda r: r["phases"][-1].get("memory_bytes")),
            ("wall_s", lambda r: r.get("wall_s")),
        ):
            row[f"{key}_mean"], row[f"{key}_std"], _ = stat(get)
        row["budget_bytes"] = mean_std(p.get("memory_budget_bytes") for p in last)[0]
        row["memory_use"] = (row["memory_bytes_mean"] / row["budget_bytes"]
                             if row["budget_bytes"] and math.isfinite(row["budget_bytes"]) else float("nan"))
        base = groups.get((stem, BASELINE))
        for key in ("gain_aia_cnn", "gain_last_top1_cnn"):
            row[f"{key}_mean"] = row[f"{key}_std"] = row[f"{key}_se"] = float("nan")
        row["time_ratio"], row["n_paired"] = float("nan"), 0
        if variant != BASELINE and base:
            paired = [s for s in seeds if s in base]
            row["n_paired"] = len(paired)
            for key, field in (("gain_aia_cnn", "avg_incremental_accuracy_cnn"),
                               ("gain_last_top1_cnn", "last_top1_cnn")):
                diffs = [runs[s][field] - base[s][field] for s in paired
                         if runs[s].get(field) is not None and base[s].get(field) is not None]
                row[f"{key}_mean"], row[f"{key}_std"], n = mean_std(diffs)
                row[f"{key}_se"] = row[f"{key}_std"] / math.sqrt(n) if n > 1 else float("nan")
            base_wall = sum(base[s]["wall_s"] for s in paired)
            if paired and base_wall > 0:
                row["time_ratio"] = sum(runs[s]["wall_s"] for s in paired) / base_wall
        rows.append(row)
    return rows


CSV_COLUMNS = ("config", "learner", "dataset", "variant", "cim_mask", "codec", "n_seeds", "seeds",
               "aia_cnn_mean", "aia_cnn_std", "aia_nme_mean", "aia_nme_std", "last_top1_cnn_mean",
               "last_top1_cnn_std", "forgetting_cnn_mean", "forgetting_cnn_std", "exemplars_per_class_mean",
               "exemplars_per_class_std", "memory_bytes_mean", "budget_bytes", "memory_use", "wall_s_mean",
               "wall_s_std", "gain_aia_cnn_mean", "gain_aia_cnn_std", "gain_aia_cnn_se", "gain_last_top1_cnn_mean",
               "gain_last_top1_cnn_std", "gain_last_top1_cnn_se", "time_ratio", "n_paired")


def write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    """summary.csv: one row per (config, variant); NaN written as an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                             round(v, 6) if isinstance(v, float) else ("" if v is None else v))
                         for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def results_table(rows: List[Dict[str, Any]]) -> List[str]:
    """The combined markdown table of :func:`summary_rows`."""
    head = ("| config | learner | variant | codec | seeds | avg inc acc CNN (%) | avg inc acc NME (%) | last top-1 (%) "
            "| forgetting (%) | exemplars / class | memory held / budget | wall time (s) | gain avg inc acc (pts ± s.e.) "
            "| gain last top-1 (pts ± s.e.) | time ratio |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mem = (f"{human_bytes(r['memory_bytes_mean'])} / {human_bytes(r['budget_bytes'])} "
               f"({100 * r['memory_use']:.0f} %)"
               if math.isfinite(r["memory_use"]) else "—")
        ratio = f"{r['time_ratio']:.2f}" if math.isfinite(r["time_ratio"]) else "—"
        lines.append("| " + " | ".join([
            r["config"], str(r["learner"]), r["variant"], _codec(r), str(r["n_seeds"]),
            fmt(r["aia_cnn_mean"], r["aia_cnn_std"]), fmt(r["aia_nme_mean"], r["aia_nme_std"]),
            fmt(r["last_top1_cnn_mean"], r["last_top1_cnn_std"]),
            fmt(r["forgetting_cnn_mean"], r["forgetting_cnn_std"]),
            fmt(r["exemplars_per_class_mean"], r["exemplars_per_class_std"], 1), mem,
            fmt(r["wall_s_mean"], r["wall_s_std"], 0),
            "" if r["variant"] == BASELINE else _signed(r["gain_aia_cnn_mean"], r["gain_aia_cnn_se"]),
            "" if r["variant"] == BASELINE else _signed(r["gain_last_top1_cnn_mean"], r["gain_last_top1_cnn_se"]),
            "" if r["variant"] == BASELINE else ratio,
        ]) + " |")
    return lines


def _codec(row: Dict[str, Any]) -> str:
    """How the variant stores exemplars: the codec's name, with its quality if it has a knob ("jpeg q75")."""
    codec = get_codec(row["codec"])
    return codec.name if not codec.has_quality else f"{codec.name} q{row.get(codec.quality_key, '?')}"


def _signed(mean: float, std: float) -> str:
    text = fmt(mean, std)
    return text if text == "—" or mean < 0 else "+" + text


def old_new_rows(groups, order) -> List[Dict[str, Any]]:
    """Per (config, variant) and phase: mean over seeds of top-1 on the old classes (mean over earlier
    tasks of the accuracy matrix) and on the new ones (this phase's task), exemplars per class and, for CIM,
    the stored boxes' mean area fraction. Phases without an accuracy matrix are left out."""
    rows = []
    for stem, variant in order:
        runs = groups[(stem, variant)]
        n_phases = min(len(r.get("phases") or []) for r in runs.values())
        for p in range(n_phases):
            old, new, per_class, box = [], [], [], []
            for r in runs.values():
                matrix = r.get("accuracy_matrix_cnn") or []
                if p < len(matrix) and matrix[p][p] is not None:
                    new.append(matrix[p][p])
                    if p > 0:
                        old.append(float(np.mean([v for v in matrix[p][:p] if v is not None])))
                phase = r["phases"][p]
                per_class.append((phase.get("exemplars_per_class") or {}).get("mean"))
                box.append(phase.get("mean_box_fraction"))
            rows.append({"config": stem, "variant": variant, "phase": p, "old": mean_std(old)[:2],
                         "new": mean_std(new)[:2], "exemplars_per_class": mean_std(per_class)[:2],
                         "box_fraction": mean_std(box)[:2]})
    return rows


def old_new_section(groups, order) -> List[str]:
    """Markdown: accuracy on old vs new classes per phase, with exemplars per class and box area."""
    rows = old_new_rows(groups, order)
    if not rows:
        return []
    lines = ["", "## Old and new classes per phase (mean ± std over seeds)", "",
             "| config | variant | phase | top-1 old classes (%) | top-1 new classes (%) | exemplars / class "
             "| stored box area fraction |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["config"], r["variant"], str(r["phase"]), fmt(*r["old"]) if r["phase"] > 0 else "—", fmt(*r["new"]),
            fmt(*r["exemplars_per_class"], 1), fmt(*r["box_fraction"], 3)]) + " |")
    lines += ["", "Old = mean top-1 over the tasks of earlier phases (accuracy matrix row of this phase); new = "
              "top-1 on this phase's task. Box area fraction = mean stored box area / image area (CIM only)."]
    return lines
