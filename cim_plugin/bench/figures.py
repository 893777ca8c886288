"""The benchmark's figures (matplotlib, Agg backend, no display needed).

Each function takes plain arrays (numpy or torch, CPU) already reduced over seeds and writes one
PNG (``dpi`` 170 by default). Nothing here reads run folders; :mod:`cim_plugin.bench.report` does.

Panel descriptions are plain dicts so that callers and tests can build them by hand:

* curve panel: ``{"title": str, "lines": [{"label", "x", "mean", "std"}]}`` with x the number
  of classes seen after each phase and mean/std the top-1 accuracy (%) over seeds (std may hold
  NaN where one seed only).
* memory panel: ``{"title": str, "bars": [{"label", "mean", "std", "seeds"}]}`` ("seeds" optional) with mean/std float
  arrays (C,) of exemplars held per class after the last phase; optional "xlabel" (default
  "class (incremental id)") and "ticklabels" (C strings, shown when C <= 30).
* time bar: ``{"label": str, "parts": {segment name: seconds}}``, one horizontal stacked bar each
  (see :func:`plot_time_breakdown`).
* old/new panel: ``{"title": str, "lines": [{"label", "x", "old_mean", "old_std", "new_mean", "new_std",
  "seeds"}]}``: top-1 (%) on the classes of earlier phases and on the phase's own classes, per phase (old
  NaN in the first phase); "seeds" (how many runs the mean is over) is optional in every line of this and of
  a curve panel and makes the title say "one seed" or "mean ± std over N seeds".
* accuracy-matrix panel: ``{"title": str, "matrix": float (T, T), "seeds": int}`` with matrix[i, j] the
  top-1 (%) on task j's classes after phase i (NaN above the diagonal), optional "tasks" (T tick labels).
* exemplar column: ``{"title": str, "original": uint8 (3,H,W) or None, "cam": float (H,W) in
  [0,1] or None, "box": int (4,) x0,y0,x1,y1 exclusive, "true_box": int (4,) or None,
  "decoded": uint8 (3,H,W) or None}``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["DPI", "BASELINE_COLOUR", "variant_colours", "phase_ticks", "seeds_note", "plot_curves", "plot_old_new",
           "plot_accuracy_matrix", "plot_time_breakdown", "plot_memory", "ROW_LABELS", "plot_exemplars"]

DPI = 170
BASELINE_COLOUR = "#444444"
_STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
          "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False}


def variant_colours(labels: Sequence[str]) -> Dict[str, str]:
    """A stable colour per variant label: the baseline grey, CIM variants from tab10 in order."""
    cmap = plt.get_cmap("tab10")
    out, k = {}, 0
    for label in labels:
        if label in out:
            continue
        if label == "baseline":
            out[label] = BASELINE_COLOUR
        else:
            out[label] = cmap(k % 10)
            k += 1
    return out


def _as_np(a, dtype=None) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def phase_ticks(xs: Sequence[Sequence[float]], max_ticks: int = 12) -> List[float]:
    """The x ticks of an accuracy-per-phase panel: the classes seen after each phase, as CIL papers draw them.

    ``xs``: each line's x values (classes seen after each of its phases). Returns their union, sorted, when it
    holds at most ``max_ticks`` values; otherwise ``[]`` (the caller falls back to evenly spaced integer ticks,
    e.g. for 20 or 50 phases).
    """
    values = sorted({float(v) for x in xs for v in _as_np(x, float).ravel()})
    return values if len(values) <= max_ticks else []


def _grid(n: int, max_cols: int = 3):
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def seeds_note(counts: Sequence[int]) -> str:
    """What a figure's numbers are: "one seed", "mean ± std over N seeds", or "mean ± std over 1–N seeds" when
    lines average different numbers of runs; "mean ± std over seeds" when no count is known."""
    counts = sorted({int(c) for c in counts if c is not None})
    if not counts:
        return "mean ± std over seeds"
    if counts == [1]:
        return "one seed"
    if len(counts) == 1:
        return f"mean ± std over {counts[0]} seeds"
    return f"mean ± std over {counts[0]}–{counts[-1]} seeds"


def _check_panels(panels, key: str, what: str) -> None:
    if not isinstance(panels, (list, tuple)) or not panels:
        raise ValueError(f"{what} needs a non-empty list of panels, got {type(panels).__name__}")
    for p in panels:
        if not isinstance(p, dict) or key not in p or "title" not in p:
            raise ValueError(f'each {what} panel must be a dict with "title" and "{key}", got {p!r:.80}')


def plot_curves(panels: List[Dict[str, Any]], path: Path, dpi: int = DPI) -> Path:
    """Top-1 accuracy (%) after each phase vs classes seen: mean line, +-std band, one panel each.

    The x ticks are the classes seen after each phase (:func:`phase_ticks`; evenly spaced beyond 12 phases).
    """
    _check_panels(panels, "lines", "plot_curves")
    labels = [line["label"] for p in panels for line in p["lines"]]
    colours = variant_colours(labels)
    rows, cols = _grid(len(panels))
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            for line in panel["lines"]:
                x = _as_np(line["x"], float)
                mean = _as_np(line["mean"], float)
                std = np.nan_to_num(_as_np(line["std"], float), nan=0.0)
                c = colours[line["label"]]
                ls = "--" if line["label"] == "baseline" else "-"
                ax.plot(x, mean, ls, marker="o", ms=3.5, lw=1.6, color=c, label=line["label"])
                if std.any():
                    ax.fill_between(x, mean - std, mean + std, color=c, alpha=0.18, lw=0)
            ax.set_title(panel["title"])
            _phase_axis(ax, [line["x"] for line in panel["lines"]])
            ax.set_ylabel("top-1 accuracy (%)")
            ax.grid(alpha=0.3, lw=0.5)
            ax.legend(frameon=False, loc="best")
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        note = seeds_note([line.get("seeds") for p in panels for line in p["lines"]])
        fig.suptitle(f"Accuracy per phase ({note})", fontsize=12)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return Path(path)


def _phase_axis(ax, xs) -> None:
    ticks = phase_ticks(xs)
    if ticks:
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("classes seen")


def plot_old_new(panels: List[Dict[str, Any]], path: Path, dpi: int = DPI) -> Path:
    """Top-1 (%) on old classes (solid, circles) and on the phase's new classes (dotted, triangles) after each
    phase vs classes seen, one colour per variant, one panel per config: the gap between the two is forgetting
    plus the bias towards the newest classes."""
    _check_panels(panels, "lines", "plot_old_new")
    colours = variant_colours([line["label"] for p in panels for line in p["lines"]])
    rows, cols = _grid(len(panels))
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(max(4.4 * cols, 6.0), 3.8 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            for line in panel["lines"]:
                x = _as_np(line["x"], float)
                c = colours[line["label"]]
                for part, style, marker in (("old", "-", "o"), ("new", ":", "^")):
                    mean = _as_np(line[f"{part}_mean"], float)
                    std = np.nan_to_num(_as_np(line[f"{part}_std"], float), nan=0.0)
                    ax.plot(x, mean, style, marker=marker, ms=4, lw=1.6, color=c, label=f"{line['label']}, {part}")
                    if std.any():
                        ax.fill_between(x, mean - std, mean + std, color=c, alpha=0.14, lw=0)
            ax.set_title(panel["title"])
            _phase_axis(ax, [line["x"] for line in panel["lines"]])
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3, lw=0.5)
            ax.legend(frameon=False, loc="best", fontsize=8)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        note = seeds_note([line.get("seeds") for p in panels for line in p["lines"]])
        fig.suptitle(f"Top-1 on old vs new classes per phase ({note})", fontsize=12)
        fig.text(0.01, 0.01, "old = the classes of the earlier phases, new = the classes this phase added",
                 fontsize=7, color="#555555")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return Path(path)


def plot_accuracy_matrix(panels: List[Dict[str, Any]], path: Path, dpi: int = DPI) -> Path:
    """Heatmaps of the accuracy matrix, one per panel: row i = after phase i, column j = top-1 (%) on task j's
    classes, 0–100 on one colour scale (viridis), the values written in the cells up to 12 tasks. Reading down a
    column shows how a task is forgotten; the diagonal is each task when it was new."""
    _check_panels(panels, "matrix", "plot_accuracy_matrix")
    rows, cols = _grid(len(panels))
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols + 1.2, 4.0 * rows), squeeze=False,
                                 layout="constrained")
        image = None
        for ax, panel in zip(axes.flat, panels):
            matrix = _as_np(panel["matrix"], float)
            if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
                raise ValueError(f"plot_accuracy_matrix: {panel['title']!r} needs a square (T, T) matrix, "
                                 f"got shape {matrix.shape}")
            n = matrix.shape[0]
            image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", vmin=0, vmax=100, aspect="equal")
            if n <= 12:
                for i in range(n):
                    for j in range(n):
                        if np.isfinite(matrix[i, j]):
                            ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", fontsize=7 if n > 6 else 8,
                                    color="black" if matrix[i, j] > 60 else "white")
            tasks = panel.get("tasks") or [str(j) for j in range(n)]
            step = max(1, math.ceil(n / 12))
            ax.set_xticks(range(0, n, step), tasks[::step], rotation=45 if n > 6 else 0)
            ax.set_yticks(range(0, n, step), [str(i) for i in range(0, n, step)])
            ax.set_xlabel("task (classes)" if panel.get("tasks") else "task")
            ax.set_ylabel("after phase")
            ax.set_title(f"{panel['title']}\n{seeds_note([panel.get('seeds')]).replace(' ± std', '')}", fontsize=9)
            ax.spines[:].set_visible(False)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle("Accuracy matrix: top-1 (%) per task after each phase", fontsize=12)
        bar = fig.colorbar(image, ax=list(axes.flat), fraction=0.04, pad=0.02)
        bar.set_label("top-1 accuracy (%)")
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return Path(path)


def plot_time_breakdown(bars: List[Dict[str, Any]], path: Path, title: str = "", note: str = "",
                        dpi: int = DPI) -> Path:
    """Horizontal stacked bars of where a phase's wall time goes, in hours.

    ``bars``: ``[{"label": str, "parts": {segment: seconds}}]``, drawn top to bottom; segments keep one
    colour per name across bars (first seen, first coloured), zero-width ones are skipped. ``note`` is
    written right of each bar's end when the bar dict has a "note" key (e.g. "+12 % meta + refresh").
    """
    if not bars or any("label" not in b or "parts" not in b for b in bars):
        raise ValueError("plot_time_breakdown needs bars [{'label': str, 'parts': {name: seconds}}]")
    names: List[str] = []
    for b in bars:
        names += [n for n in b["parts"] if n not in names]
    palette = ["#9e9e9e", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd"]
    colours = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(9.0, 0.42 * len(bars) + 1.8))
        longest = max(sum(b["parts"].values()) for b in bars) / 3600
        for y, b in enumerate(bars):
            left = 0.0
            for name, seconds in b["parts"].items():
                width = seconds / 3600
                if width <= 0:
                    continue
                ax.barh(y, width, left=left, color=colours[name], height=0.7)
                left += width
            if b.get("note"):
                ax.text(left + 0.01 * longest, y, b["note"], va="center", fontsize=8)
        ax.set_yticks(range(len(bars)), [b["label"] for b in bars])
        ax.invert_yaxis()
        ax.set_xlim(0, longest * 1.55)
        ax.set_xlabel("wall time of one phase (h)")
        ax.grid(axis="x", alpha=0.3, lw=0.5)
        ax.legend([Rectangle((0, 0), 1, 1, color=colours[n]) for n in names], names, frameon=False,
                  loc="upper center", bbox_to_anchor=(0.5, -0.09 - 0.6 / (len(bars) + 3)), ncol=len(names))
        if title:
            ax.set_title(title)
        if note:
            fig.text(0.01, 0.01, note, fontsize=7, color="#555555")
        fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return Path(path)


def plot_memory(panels: List[Dict[str, Any]], path: Path, dpi: int = DPI) -> Path:
    """Exemplars held per class after the last phase, one bar series per variant, one panel each."""
    _check_panels(panels, "bars", "plot_memory")
    labels = [b["label"] for p in panels for b in p["bars"]]
    colours = variant_colours(labels)
    rows, cols = _grid(len(panels), 2)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.2 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, panels):
            bars = panel["bars"]
            width = 0.85 / max(len(bars), 1)
            n_cls = max((len(_as_np(b["mean"])) for b in bars), default=0)
            top = 0.0
            for k, bar in enumerate(bars):
                mean = _as_np(bar["mean"], float)
                std = _as_np(bar.get("std", np.full_like(mean, np.nan)), float)
                x = np.arange(len(mean)) + (k - (len(bars) - 1) / 2) * width
                err = None if not np.isfinite(std).any() else np.nan_to_num(std, nan=0.0)
                top = max(top, float(np.nanmax(mean + (0 if err is None else err), initial=0.0)))
                ax.bar(x, mean, width=width, color=colours[bar["label"]], label=bar["label"],
                       yerr=err, error_kw={"lw": 0.6, "capsize": 0})
            ax.set_title(panel["title"])
            ax.set_xlabel(panel.get("xlabel", "class (incremental id)"))
            ax.set_ylabel("exemplars held")
            ax.set_xlim(-0.6, n_cls - 0.4)
            ax.set_ylim(0, max(top, 1.0) * 1.3)  # headroom for the legend
            if n_cls <= 30:
                ax.set_xticks(np.arange(n_cls))
                if panel.get("ticklabels") is not None:
                    ax.set_xticklabels(panel["ticklabels"])
            ax.grid(axis="y", alpha=0.3, lw=0.5)
            ax.legend(frameon=False, loc="upper left", ncol=min(len(bars), 4))
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        note = seeds_note([b.get("seeds") for p in panels for b in p["bars"]])
        fig.suptitle(f"Exemplars per class after the last phase ({note})", fontsize=12)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return Path(path)


def _hwc(img) -> np.ndarray:
    a = _as_np(img)
    if a.ndim != 3 or a.shape[0] != 3:
        raise ValueError(f"images must be uint8 (3, H, W), got shape {a.shape}")
    return np.transpose(a, (1, 2, 0))


def _draw_box(ax, box, colour, style="-") -> None:
    x0, y0, x1, y1 = (float(v) for v in _as_np(box).reshape(4))
    # pixel centres are at integers: the box covers [x0, x1) -> edges at x0 - 0.5 .. x1 - 0.5
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=colour, lw=1.6, ls=style))


def _blank(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="0.4", transform=ax.transAxes)


ROW_LABELS = ("original", "CAM overlay", "mask box", "decoded (stored)")


def plot_exemplars(columns: List[Dict[str, Any]], path: Path, title: str = "", dpi: int = DPI) -> Path:
    """Grid of exemplars: one column per exemplar, rows original / CAM / box / decoded image.

    The box row shows the stored box (solid, yellow) over the original and, where known, the
    true object box (dashed, cyan).
    """
    if not isinstance(columns, (list, tuple)) or not columns:
        raise ValueError("plot_exemplars needs a non-empty list of exemplar columns")
    n = len(columns)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(4, n, figsize=(1.9 * n + 0.9, 8.0), squeeze=False)
        for j, col in enumerate(columns):
            base = col.get("original")
            if base is None:
                base = col.get("decoded")
            img = None if base is None else _hwc(base)
            # row 0: original
            ax = axes[0, j]
            if col.get("original") is not None:
                ax.imshow(_hwc(col["original"]), interpolation="nearest")
            else:
                _blank(ax, "original\nnot available")
            ax.set_title(col.get("title", ""), fontsize=9)
            # row 1: CAM heat-map over the image
            ax = axes[1, j]
            cam = col.get("cam")
            if cam is not None and img is not None:
                ax.imshow(img.mean(axis=2), cmap="gray", interpolation="nearest")
                ax.imshow(_as_np(cam, float), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            else:
                _blank(ax, "no CAM stored")
            # row 2: box
            ax = axes[2, j]
            if img is not None:
                ax.imshow(img, interpolation="nearest")
                if col.get("true_box") is not None:
                    _draw_box(ax, col["true_box"], "cyan", "--")
                if col.get("box") is not None:
                    _draw_box(ax, col["box"], "yellow")
            else:
                _blank(ax, "no image")
            # row 3: decoded compressed exemplar
            ax = axes[3, j]
            if col.get("decoded") is not None:
                ax.imshow(_hwc(col["decoded"]), interpolation="nearest")
            else:
                _blank(ax, "memory.pt\nnot available")
        for i, label in enumerate(ROW_LABELS):
            axes[i, 0].set_ylabel(label, fontsize=10)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        if title:
            fig.suptitle(title, fontsize=11)
        has_true = any(col.get("true_box") is not None for col in columns)
        fig.text(0.5, 0.005, "box row: stored mask box (solid yellow)"
                 + (", true object box (dashed cyan)" if has_true else "; the dataset has no true object boxes"),
                 ha="center", fontsize=8, color="0.3")
        fig.tight_layout(rect=(0, 0.02, 1, 1))
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return Path(path)
