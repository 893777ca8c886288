"""The benchmark report: summary.md, summary.csv and the figures (curves.png, old_new.png, accuracy_matrix.png,
memory.png, exemplars.png) rebuilt from the finished runs of a benchmark folder; and the two figures every run
folder gets (:func:`write_run_figures`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ..io import atomic_write_text
from .runs import BASELINE, read_manifest
from .pairs import pairs_section
from .platforms import platform_section
from .recency import recency_section
from .sizes import SizeInfo, _dataset_key, _load_exemplars, _predictions, load_dataset, object_size_section, size_info
from .tables import _order, collect_runs, old_new_rows, old_new_section, results_table, summary_rows, write_csv
from .time_split import time_section


# ----------------------------------------------------------------------------------- figures
def curve_panels(groups, order) -> List[Dict[str, Any]]:
    panels: Dict[str, Dict[str, Any]] = {}
    for stem, variant in order:
        runs = groups[(stem, variant)]
        first = next(iter(runs.values()))
        n = min(len(r["phases"]) for r in runs.values())
        x = [p["classes"] for p in first["phases"][:n]]
        acc = np.asarray([[p["top1_cnn"] for p in r["phases"][:n]] for r in runs.values()], float)
        std = acc.std(axis=0, ddof=1) if len(acc) > 1 else np.full(n, np.nan)
        panel = panels.setdefault(stem, {"title": _stem_title(first, stem), "lines": []})
        panel["lines"].append({"label": variant, "x": x, "mean": acc.mean(axis=0), "std": std, "seeds": len(acc)})
    return list(panels.values())


def _stem_title(first: Dict[str, Any], stem: str) -> str:
    return f"{first.get('learner')} ({stem}, {first.get('dataset')})"


def old_new_panels(groups, order) -> List[Dict[str, Any]]:
    """Panels for :func:`cim_plugin.bench.figures.plot_old_new`: per config, each variant's top-1 on old and on
    new classes per phase, the numbers of the "Old and new classes per phase" table (:func:`old_new_rows`)."""
    rows: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for row in old_new_rows(groups, order):
        rows.setdefault((row["config"], row["variant"]), []).append(row)
    panels: Dict[str, Dict[str, Any]] = {}
    for stem, variant in order:
        mine = [r for r in rows.get((stem, variant), []) if np.isfinite(r["new"][0])]
        if not mine:  # runs without an accuracy matrix
            continue
        runs = groups[(stem, variant)]
        first = next(iter(runs.values()))
        panel = panels.setdefault(stem, {"title": _stem_title(first, stem), "lines": []})
        panel["lines"].append({
            "label": variant, "seeds": len(runs), "x": [first["phases"][r["phase"]]["classes"] for r in mine],
            "old_mean": [r["old"][0] if r["phase"] > 0 else np.nan for r in mine],
            "old_std": [r["old"][1] if r["phase"] > 0 else np.nan for r in mine],
            "new_mean": [r["new"][0] for r in mine], "new_std": [r["new"][1] for r in mine]})
    return list(panels.values())


def matrix_panels(groups, order) -> List[Dict[str, Any]]:
    """Panels for :func:`cim_plugin.bench.figures.plot_accuracy_matrix`: per (config, variant), the accuracy
    matrix (``accuracy_matrix_cnn``) averaged over the seeds, over the phases every seed finished."""
    panels = []
    for stem, variant in order:
        runs = [r for r in groups[(stem, variant)].values() if r.get("accuracy_matrix_cnn")]
        if not runs:
            continue
        n = min(len(r["accuracy_matrix_cnn"]) for r in runs)
        stack = np.asarray([[[np.nan if v is None else v for v in row[:n]] for row in r["accuracy_matrix_cnn"][:n]]
                            for r in runs], float)
        ends = [p["classes"] for p in runs[0]["phases"][:n]]
        tasks = [f"{a}–{b - 1}" if b - a > 1 else str(a) for a, b in zip([0] + ends[:-1], ends)]
        known = np.isfinite(stack).sum(axis=0)  # seeds with a value per cell (none above the diagonal)
        mean = np.where(known > 0, np.nansum(stack, axis=0) / np.maximum(known, 1), np.nan)
        panels.append({"title": f"{variant}: {_stem_title(runs[0], stem)}", "matrix": mean, "seeds": len(runs),
                       "tasks": tasks})
    return panels


def write_run_figures(run_dir: Path, results: Dict[str, Any]) -> Dict[str, Path]:
    """old_new.png and accuracy_matrix.png of one run (its results.json dict) into ``run_dir``."""
    from . import figures as plots  # matplotlib is the optional "plots" extra: imported only when drawing

    key = (results.get("learner") or "run", BASELINE if not results.get("cim") else "cim")
    groups, order = {key: {results.get("seed", 0): results}}, [key]
    written = {}
    panels = old_new_panels(groups, order)
    if panels:
        written["old_new.png"] = plots.plot_old_new(panels, Path(run_dir) / "old_new.png")
    panels = matrix_panels(groups, order)
    if panels:
        written["accuracy_matrix.png"] = plots.plot_accuracy_matrix(panels, Path(run_dir) / "accuracy_matrix.png")
    return written


def memory_panels(groups, order, datasets) -> List[Dict[str, Any]]:
    """Exemplars per class by original label (sorted by object size when known), mean over seeds."""
    panels: Dict[str, Dict[str, Any]] = {}
    for stem, variant in order:
        runs = groups[(stem, variant)]
        first = next(iter(runs.values()))
        per_seed, by_label = [], True
        for res in runs.values():
            counts = res["phases"][-1].get("exemplars_per_class_counts")
            if counts is None:
                continue
            pred = _predictions(res["_dir"])
            if pred is None:
                by_label = False
                per_seed.append(np.asarray(counts, float))
                continue
            order_ = np.asarray(pred["class_order"])[: len(counts)]
            row = np.full(int(order_.max()) + 1, np.nan)
            row[order_] = counts
            per_seed.append(row)
        if not per_seed:
            continue
        width = max(len(r) for r in per_seed)
        table = np.full((len(per_seed), width), np.nan)
        for i, r in enumerate(per_seed):
            table[i, : len(r)] = r
        mean = np.nanmean(table, axis=0)
        std = np.nanstd(table, axis=0, ddof=1) if len(per_seed) > 1 else np.full(width, np.nan)
        panel = panels.setdefault(stem, {"title": f"{first.get('learner')} ({stem})", "bars": [],
                                         "by_label": by_label, "config": first["config"]})
        panel["by_label"] = panel["by_label"] and by_label
        panel["bars"].append({"label": variant, "mean": mean, "std": std, "seeds": len(per_seed)})
    out = []
    for panel in panels.values():
        width = max(len(b["mean"]) for b in panel["bars"])
        for b in panel["bars"]:
            b["mean"], b["std"] = (np.pad(b[k], (0, width - len(b[k])), constant_values=np.nan)
                                   for k in ("mean", "std"))
        _, info = datasets.get(_dataset_key(panel["config"]), (None, None))
        if panel["by_label"] and info is not None:
            perm = np.argsort([info.class_fraction.get(c, np.inf) for c in range(width)], kind="stable")
            for b in panel["bars"]:
                b["mean"], b["std"] = b["mean"][perm], b["std"][perm]
            panel["xlabel"] = "class (original label), sorted by object size: small → large"
            panel["ticklabels"] = [str(int(c)) for c in perm]
        else:
            panel["xlabel"] = "class (original label)" if panel["by_label"] else "class (incremental id)"
        out.append({k: v for k, v in panel.items() if k not in ("config", "by_label")})
    return out


def _original_image(idata, index: int) -> Optional[np.ndarray]:
    if idata is None or index < 0:
        return None
    item = idata.train_data[index]
    if isinstance(item, (str, bytes, os.PathLike)) or (isinstance(item, np.ndarray) and item.dtype.kind in "SU"):
        from PIL import Image

        with Image.open(str(item)) as im:
            item = np.asarray(im.convert("RGB"))
    arr = np.asarray(item, dtype=np.uint8)
    return np.ascontiguousarray(np.transpose(arr, (2, 0, 1)))


def class_names_of(idata) -> Optional[List[str]]:
    """The dataset's ``class_names`` list (see :mod:`cim_plugin.datasets.base`), or None when unknown."""
    names = getattr(idata, "class_names", None) if idata is not None else None
    if names is None:
        return None
    if callable(names) or isinstance(names, (str, bytes)):
        raise TypeError(f"{type(idata).__name__}.class_names must be a list of names (attribute or property), "
                        f"got {type(names).__name__}")
    return [str(n) for n in names]


def exemplar_columns(run_dir: str, idata, n_classes: int = 6) -> Tuple[List[Dict[str, Any]], str]:
    """Columns for :func:`cim_plugin.bench.figures.plot_exemplars` from one CIM run: one exemplar (with a
    CAM when one is stored) for each of up to ``n_classes`` classes spread over the classes held."""
    import torch.nn.functional as F

    from ..method.memory import CompressedMemory

    ex = _load_exemplars(run_dir)
    if ex is None or len(ex["labels"]) == 0:
        return [], ""
    memory_path = Path(run_dir) / "memory.pt"
    memory = CompressedMemory.load(memory_path) if memory_path.is_file() else None
    labels = torch.as_tensor(ex["labels"]).long()
    classes = torch.unique(labels)
    spread = np.unique(np.linspace(0, len(classes) - 1, min(n_classes, len(classes))).round().astype(np.int64))
    pick = classes[torch.from_numpy(spread)]
    cam_pos = {int(p): k for k, p in enumerate(torch.as_tensor(ex.get("cam_index", [])).long().tolist())}
    pred = _predictions(run_dir)
    names = class_names_of(idata)
    columns = []
    for c in pick.tolist():
        positions = (labels == c).nonzero().squeeze(1).tolist()
        with_cam = [p for p in positions if p in cam_pos]
        i = (with_cam or positions)[0]
        src = int(ex["source_index"][i])
        original = _original_image(idata, src)
        decoded = memory.decode_one(i).numpy() if memory is not None else None
        cam = None
        if ex.get("cams") is not None and i in cam_pos:
            cam = ex["cams"][cam_pos[i]].float()
            shape = (original if original is not None else decoded)
            if shape is not None and tuple(cam.shape) != tuple(shape.shape[1:]):
                cam = F.interpolate(cam[None, None], size=shape.shape[1:], mode="bilinear", align_corners=False)[0, 0]
            cam = cam.numpy()
        label = int(pred["class_order"][c]) if pred is not None else c
        name = names[label] if names is not None and label < len(names) else f"class {label}"
        true_box = None
        if idata is not None and getattr(idata, "train_boxes", None) is not None and src >= 0:
            true_box = np.asarray(idata.train_boxes[src])
        columns.append({"title": f"{name}\n{len(positions)} kept", "original": original, "cam": cam,
                        "box": None if ex.get("boxes") is None else ex["boxes"][i].numpy(),
                        "true_box": true_box, "decoded": decoded})
    return columns, f"Stored exemplars ({Path(run_dir).parent.parent.name}, {Path(run_dir).parent.name}, " \
                    f"{Path(run_dir).name})"


# ------------------------------------------------------------------------------------ report
def build_report(out_dir: Path, dataset_loader: Callable[[Dict[str, Any]], Any] = load_dataset) -> Dict[str, Path]:
    """(Re)build summary.md, summary.csv and the figures from the finished runs under out_dir.

    Returns name -> path of the files written. ``dataset_loader(config)`` loads a run's dataset
    (for object sizes, box IoU and the original images); a failure there only drops those parts.
    """
    from . import figures as plots

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    groups = collect_runs(out_dir)
    written: Dict[str, Path] = {}
    lines = ["# CIM benchmark: plug-in vs baseline", ""]
    if manifest:
        paths = ", ".join(f"`{e['path']}`" for e in manifest["configs"].values())
        lines.append(f"Configs {paths}; seeds {manifest['seeds']}.")
        per_config = manifest.get("config_seeds", {})
        if any(list(seeds) != list(manifest["seeds"]) for seeds in per_config.values()):
            lines.append("Seeds per config: " + "; ".join(f"{s} {v}" for s, v in per_config.items()) + ".")
        if manifest.get("joined_from"):
            lines.append("Joined (`exps/benchmark.py --join`) from " +
                         ", ".join(f"`{p}`" for p in manifest["joined_from"]) + ".")
    if not groups:
        lines += ["", "No finished run yet."]
        atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
        write_csv(out_dir / "summary.csv", [])
        return {"summary.md": out_dir / "summary.md", "summary.csv": out_dir / "summary.csv"}
    order = _order(groups, manifest)
    rows = summary_rows(groups, order)
    write_csv(out_dir / "summary.csv", rows)
    written["summary.csv"] = out_dir / "summary.csv"

    datasets: Dict[str, Tuple[Any, Optional[SizeInfo]]] = {}
    notes = []
    for runs in groups.values():
        config = next(iter(runs.values()))["config"]
        key = _dataset_key(config)
        if key in datasets:
            continue
        try:
            idata = dataset_loader(config)
            datasets[key] = (idata, size_info(idata))
        except Exception as err:  # the tables and curves do not need the data
            datasets[key] = (None, None)
            notes.append(f"dataset {config.get('dataset')!r} could not be loaded ({type(err).__name__}: {err}); "
                         f"object-size tables, box IoU and original images are left out")

    lines += ["", "## Results (mean ± std over seeds)", ""] + results_table(rows) + [
        "", "Average incremental accuracy = mean top-1 over phases. std = sample std over seeds (none with one "
        "seed). Gains are CIM minus baseline of the same config, paired by seed, shown as mean ± standard error "
        "(s.e. = sample std of the paired differences / √seeds; summary.csv also has their std); a gain is "
        "resolved from noise when gain − 1 s.e. > 0. Time ratio = total wall time "
        "of the variant / of the baseline over the same seeds. Memory is the bytes held after the last phase."]
    lines += pairs_section(groups, order)
    lines += old_new_section(groups, order)
    lines += recency_section(groups, order)
    lines += time_section(groups, order)
    lines += object_size_section(groups, order, datasets)
    lines += platform_section(groups, order)

    panels = curve_panels(groups, order)
    written["curves.png"] = plots.plot_curves(panels, out_dir / "curves.png")
    figures = ["", "## Figures", "", "![accuracy per phase](curves.png)"]
    on_panels = old_new_panels(groups, order)
    if on_panels:
        written["old_new.png"] = plots.plot_old_new(on_panels, out_dir / "old_new.png")
        figures.append("![top-1 on old vs new classes per phase](old_new.png)")
    mat_panels = matrix_panels(groups, order)
    if mat_panels:
        written["accuracy_matrix.png"] = plots.plot_accuracy_matrix(mat_panels, out_dir / "accuracy_matrix.png")
        figures.append("![accuracy matrix: top-1 on each task after each phase](accuracy_matrix.png)")
    mem_panels = memory_panels(groups, order, datasets)
    if mem_panels:
        written["memory.png"] = plots.plot_memory(mem_panels, out_dir / "memory.png")
    if "memory.png" in written:
        figures.append("![exemplars per class](memory.png)")
    for stem, variant in order:
        if variant == BASELINE:
            continue
        runs = groups[(stem, variant)]
        run = runs[min(runs)]
        idata = datasets.get(_dataset_key(run["config"]), (None, None))[0]
        columns, title = exemplar_columns(run["_dir"], idata)
        if columns:
            written["exemplars.png"] = plots.plot_exemplars(columns, out_dir / "exemplars.png", title=title)
            figures.append(f"![stored exemplars: original, CAM, box, decoded](exemplars.png) — {title}")
            break
    lines += figures
    expected = manifest and {(s, v) for s, vs in manifest.get("variants", {}).items() for v in vs}
    if manifest:
        seeds_of = manifest.get("config_seeds", {})
        missing = [f"{s}/{v}/seed_{seed}" for s, v in sorted(expected) for seed in seeds_of.get(s, manifest["seeds"])
                   if seed not in groups.get((s, v), {})]
        if missing:
            notes.append(f"{len(missing)} run(s) not finished, left out: {', '.join(missing)}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    written["summary.md"] = out_dir / "summary.md"
    return written
