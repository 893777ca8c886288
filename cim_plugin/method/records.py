"""What the stored exemplars give the host: where each came from (``exemplars.pt``, for the figures and the
benchmark's box checks) and the NME class means of the decoded exemplars."""

from __future__ import annotations

from typing import Any, Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F

from .memory import CompressedMemory

__all__ = ["exemplar_record", "class_means"]


def exemplar_record(memory: CompressedMemory, sources: Dict[int, torch.Tensor],
                    cams: Dict[int, torch.Tensor]) -> Dict[str, Any]:
    """Labels, source index (-1: unknown), box of each exemplar, and the CAMs kept for figures.

    Args:
        memory: the memory (exemplars in insertion order, a class's in herding order).
        sources: class -> int64 source indices of its exemplars, in memory order.
        cams: class -> CAMs (k, H, W) of its first k exemplars.
    """
    labels = memory.labels
    source = torch.full((len(memory),), -1, dtype=torch.long)
    cam_index, kept_cams = [], []
    for label, src in sources.items():
        pos = (labels == label).nonzero().squeeze(1)[: len(src)]
        source[pos] = src[: len(pos)]
        kept = cams.get(label)
        if kept is not None:
            k = min(len(kept), len(pos))
            cam_index.append(pos[:k])
            kept_cams.append(kept[:k])
    return {"labels": labels.clone(), "source_index": source, "boxes": memory.boxes.long().clone(),
            "cam_index": torch.cat(cam_index) if cam_index else torch.zeros(0, dtype=torch.long),
            "cams": torch.cat(kept_cams) if kept_cams else None}


def class_means(memory: CompressedMemory, total: int,
                features_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
    """L2-normalised class means (total, D) of the decoded exemplars, float64; zeros for classes with none.

    ``features_of(uint8 images (n, 3, H, W), labels (n,)) -> float features (n, D)``."""
    means, labels = None, memory.labels
    for class_idx in range(total):
        idx = (labels == class_idx).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        features = features_of(memory.decode(idx), labels[idx])
        if means is None:
            means = np.zeros((total, features.shape[1]))
        mean = F.normalize(features.double(), dim=1).mean(0)
        means[class_idx] = (mean / mean.norm()).numpy()
    return means if means is not None else np.zeros((total, 0))
