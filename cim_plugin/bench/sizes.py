"""Object sizes (datasets with true boxes): small / medium / large classes (terciles of the classes'
median box-area fraction), exemplars and accuracy per size group, and the IoU of the stored boxes with
the true ones beside same-size random and centred references."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from ..datasets import DATASETS, build_idata
from ..method.masks import box_coverage, box_iou, same_size_center_boxes, same_size_random_boxes
from .layout import BASELINE, read_exemplars, read_predictions
from .stats import fmt, mean_std

__all__ = ["SizeInfo", "size_info", "dataset_key", "load_dataset", "size_split", "REFERENCE_DRAWS", "REFERENCE_SEED",
           "BoxIoU", "box_ious", "box_iou_of_run", "object_size_section"]


# ------------------------------------------------------------------------------ object sizes
@dataclass
class SizeInfo:
    """Object sizes of a dataset's classes: a class's size is the median box-area fraction of its
    training images; ``thresholds`` are the terciles of those class sizes; ``class_group`` maps
    an original label to 0 (small), 1 (medium) or 2 (large)."""

    thresholds: Tuple[float, float]
    class_group: Dict[int, int]
    class_fraction: Dict[int, float]


def _fractions(boxes: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None) / float(size[0] * size[1])


def size_info(idata) -> Optional[SizeInfo]:
    """Object-size groups of a loaded dataset's classes, or None without boxes or a fixed image size."""
    if idata is None or getattr(idata, "train_boxes", None) is None:
        return None
    size = getattr(idata, "image_size", None)
    if size is None:
        return None
    train = _fractions(idata.train_boxes, size)
    targets = np.asarray(idata.train_targets)
    labels = np.unique(targets)
    medians = np.asarray([np.median(train[targets == c]) for c in labels])
    t1, t2 = (float(q) for q in np.quantile(medians, [1 / 3, 2 / 3]))
    groups = np.digitize(medians, [t1, t2], right=False)
    return SizeInfo((t1, t2), {int(c): int(g) for c, g in zip(labels, groups)},
                    {int(c): float(m) for c, m in zip(labels, medians)})


def dataset_key(config: Dict[str, Any]) -> str:
    cls = DATASETS.get(str(config.get("dataset", "")).lower())
    keys = ("dataset",) + tuple(getattr(cls, "option_keys", ()))
    return json.dumps({k: config.get(k) for k in keys}, sort_keys=True)


def load_dataset(config: Dict[str, Any]):
    """The run's dataset object with its data read (None for PyCIL's own datasets)."""
    idata = build_idata(config["dataset"], config)
    if idata is not None:
        idata.download_data()
    return idata


def size_split(runs: Dict[int, Dict[str, Any]], info: SizeInfo) -> Dict[str, List[Tuple[float, float]]]:
    """Per class size group (small, medium, large): (mean, std) over seeds of exemplars per class
    after the last phase and of last-phase top-1 accuracy (%) on the test images of those classes.
    Runs without predictions.npz (the class order) are left out."""
    exemplars: List[List[float]] = [[], [], []]
    accuracy: List[List[float]] = [[], [], []]
    for res in runs.values():
        pred = read_predictions(res["_dir"])
        if pred is None:
            continue
        order = np.asarray(pred["class_order"])
        group_of = np.asarray([info.class_group.get(int(label), -1) for label in order])  # by incremental id
        counts = res["phases"][-1].get("exemplars_per_class_counts")
        if counts is not None:
            counts = np.asarray(counts, float)
            groups = group_of[: len(counts)]
            for g in range(3):
                if (groups == g).any():
                    exemplars[g].append(float(counts[groups == g].mean()))
        y_true = np.asarray(pred["y_true"], dtype=np.int64)
        correct = np.asarray(pred["y_pred"]) == y_true
        test_groups = group_of[y_true]
        for g in range(3):
            if (test_groups == g).any():
                accuracy[g].append(float(100.0 * correct[test_groups == g].mean()))
    return {"exemplars": [mean_std(v)[:2] for v in exemplars], "accuracy": [mean_std(v)[:2] for v in accuracy]}


#: placements of the same-size random reference box per stored box, and the seed of their generator
REFERENCE_DRAWS = 16
REFERENCE_SEED = 0


class BoxIoU(NamedTuple):
    """Mean over a run's exemplars (a known source image each) of: IoU of the stored box with the true
    object box (``iou``); the same for a box of the same width and height at a random valid place
    (``random_iou``, averaged over :data:`REFERENCE_DRAWS` draws of a generator seeded with
    :data:`REFERENCE_SEED`) and at the image centre (``center_iou``); the fraction of the true box inside
    the stored box (``coverage``: the part of the object kept at full resolution) and inside the same-size
    random boxes (``random_coverage``); stored and true box area / image area (``box_fraction``,
    ``true_fraction``)."""

    iou: float
    random_iou: float
    center_iou: float
    coverage: float
    random_coverage: float
    box_fraction: float
    true_fraction: float


def box_ious(stored: torch.Tensor, true: torch.Tensor, size: Tuple[int, int],
             draws: int = REFERENCE_DRAWS, seed: int = REFERENCE_SEED) -> BoxIoU:
    """:class:`BoxIoU` of stored boxes int Tensor(N, 4) vs true boxes int Tensor(N, 4) of (H, W) images."""
    H, W = size
    stored, true = stored.long().cpu(), true.long().cpu()
    gen = torch.Generator().manual_seed(seed)
    moved = same_size_random_boxes(stored, H, W, draws=draws, generator=gen).reshape(-1, 4)  # (draws·N, 4)
    repeated = true.repeat(draws, 1)
    centred = same_size_center_boxes(stored, H, W)
    return BoxIoU(float(box_iou(stored, true).mean()), float(box_iou(moved, repeated).mean()),
                  float(box_iou(centred, true).mean()), float(box_coverage(stored, true).mean()),
                  float(box_coverage(moved, repeated).mean()),
                  float(_fractions(stored.numpy(), size).mean()), float(_fractions(true.numpy(), size).mean()))


def box_iou_of_run(run_dir: str, idata) -> Optional[BoxIoU]:
    """:class:`BoxIoU` of a run's stored boxes (exemplars.pt) vs the dataset's true boxes; None without
    exemplars.pt, boxes or a known source image."""
    ex = read_exemplars(run_dir)
    if ex is None or ex.get("boxes") is None or getattr(idata, "train_boxes", None) is None:
        return None
    src = torch.as_tensor(ex["source_index"]).long()
    keep = src >= 0
    if not bool(keep.any()):
        return None
    stored = torch.as_tensor(ex["boxes"]).long()[keep]
    true = torch.as_tensor(np.asarray(idata.train_boxes)[src[keep].numpy()]).long()
    return box_ious(stored, true, tuple(idata.image_size))


def object_size_section(groups, order, datasets: Dict[str, Any]) -> List[str]:
    """Markdown of the object-size tables and the box IoU table (configs whose dataset has boxes)."""
    lines: List[str] = []
    size_rows, iou_rows = [], []
    for stem, variant in order:
        runs = groups[(stem, variant)]
        config = next(iter(runs.values()))["config"]
        idata, info = datasets.get(dataset_key(config), (None, None))
        if info is None:
            continue
        split = size_split(runs, info)
        size_rows.append((stem, variant, split, info))
        if variant != BASELINE and idata is not None:
            ious = [box_iou_of_run(r["_dir"], idata) for r in runs.values()]
            ious = [x for x in ious if x is not None]
            if ious:
                stats = [mean_std(column)[:2] for column in zip(*ious)]
                iou_rows.append((stem, variant, config.get("cim_mask"), stats, len(ious)))
    if not size_rows:
        return lines
    lines += ["", "## By object size", "",
              "Object size = true box area / image area; a class's size is that of its median training image, "
              "and classes are split at the terciles of the class sizes (the paper gives no numeric split). "
              "Accuracy is top-1 after the last phase on the test images of each group's classes."]
    seen = set()
    for stem, variant, _, info in size_rows:
        if id(info) in seen:
            continue
        seen.add(id(info))
        (t1, t2), counts = info.thresholds, np.bincount(list(info.class_group.values()), minlength=3)
        dataset = next(iter(groups[(stem, variant)].values()))["dataset"]
        lines.append(f"- {dataset} ({stem}): small < {t1:.3f} ≤ medium < {t2:.3f} ≤ large; {counts[0]} small, "
                     f"{counts[1]} medium, {counts[2]} large classes.")
    lines += ["",
              "| config | variant | exemplars/class small | exemplars/class medium | exemplars/class large "
              "| last top-1 small (%) | last top-1 medium (%) | last top-1 large (%) |",
              "|---|---|---|---|---|---|---|---|"]
    for stem, variant, split, _ in size_rows:
        ex = [fmt(m, s, 1) for m, s in split["exemplars"]]
        acc = [fmt(m, s) for m, s in split["accuracy"]]
        lines.append(f"| {stem} | {variant} | " + " | ".join(ex + acc) + " |")
    if iou_rows:
        lines += ["", "## Mask boxes vs true object boxes", "",
                  "Mean IoU of the stored box of each exemplar with its image's true object box (mean ± std over "
                  "seeds), next to two references computed on the same exemplars: a box of the same width and "
                  f"height at a random valid place (mean of {REFERENCE_DRAWS} draws, generator seed "
                  f"{REFERENCE_SEED}) and at the image centre. Masks find objects when the stored boxes beat "
                  "both. A whole-image box would score the true box's area fraction. \"object kept\" = the "
                  "fraction of the true box inside the stored box (the part of the object stored at full "
                  "resolution; 1 for a whole-image box), beside the same for the random same-size boxes.", "",
                  "| config | variant | mask mode | mean IoU | same-size random IoU | same-size centred IoU "
                  "| object kept | object kept, random ref. "
                  "| stored box area fraction | true box area fraction | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for stem, variant, mode, stats, n in iou_rows:
            lines.append(f"| {stem} | {variant} | {mode} | " + " | ".join(fmt(m, s, 3) for m, s in stats) + f" | {n} |")
    return lines
