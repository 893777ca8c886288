"""Figure inputs from a benchmark's finished runs: the panels of :mod:`cim_plugin.bench.figures` (accuracy
curves, old vs new classes, accuracy matrices, exemplars per class) and the stored-exemplar columns, built
from the runs' results dicts and files; nothing here draws."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..method.memory import CompressedMemory
from .layout import read_exemplars, read_predictions
from .sizes import dataset_key
from .tables import old_new_rows

__all__ = ["curve_panels", "old_new_panels", "matrix_panels", "memory_panels", "class_names_of", "exemplar_columns"]


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
            pred = read_predictions(res["_dir"])
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
        _, info = datasets.get(dataset_key(panel["config"]), (None, None))
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
    ex = read_exemplars(run_dir)
    if ex is None or len(ex["labels"]) == 0:
        return [], ""
    memory_path = Path(run_dir) / "memory.pt"
    memory = CompressedMemory.load(memory_path) if memory_path.is_file() else None
    labels = torch.as_tensor(ex["labels"]).long()
    classes = torch.unique(labels)
    spread = np.unique(np.linspace(0, len(classes) - 1, min(n_classes, len(classes))).round().astype(np.int64))
    pick = classes[torch.from_numpy(spread)]
    cam_pos = {int(p): k for k, p in enumerate(torch.as_tensor(ex.get("cam_index", [])).long().tolist())}
    pred = read_predictions(run_dir)
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
