"""What the stored exemplars give the host: where each came from (``exemplars.pt``, for the figures and the
benchmark's box checks) and the NME class means of the decoded exemplars."""

from __future__ import annotations

from typing import Any, Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F

from ..timing import codec_seconds
from .raw import CompressedMemory

__all__ = ["exemplar_record", "class_means", "phase_report"]


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


def phase_report(cim) -> Dict[str, Any]:
    """What :meth:`CIM.report` returns after a phase: the memory (exemplars, real bytes held, budget, box
    areas, cost per exemplar in full-image units), CIM's own work (meta steps, mean kept fraction of the
    masks, seconds and calls per part, codec seconds) and the JPEG quality used."""
    memory = cim.memory
    counts = torch.bincount(memory.labels, minlength=cim.total)[: cim.total]
    sizes = memory.sizes.double()
    areas = (memory.boxes[:, 2] - memory.boxes[:, 0]).double() * (memory.boxes[:, 3] - memory.boxes[:, 1]).double()
    full = sizes[:, 0] * sizes[:, 1]
    return {
        "exemplars": len(memory), "memory_bytes": int(memory.nbytes),
        "memory_budget_bytes": cim.budget_bytes(), "image_bytes": cim.image_bytes,
        "exemplars_per_class": {"min": int(counts.min()), "mean": float(counts.double().mean()),
                                "max": int(counts.max())},
        "exemplars_per_class_counts": [int(c) for c in counts],
        "mean_box_fraction": float((areas / full).mean()),
        "mean_exemplar_cost": float((memory.exemplar_nbytes().double() / (3 * full)).mean()),
        "cim_mask": cim.config["cim_mask"], "cam_update_interval": getattr(cim, "cam_interval", None),
        "exemplar_codec": memory.codec, "meta_steps": len(cim.meta_log),
        "mask_mean": float(np.mean([m["mask_mean"] for m in cim.meta_log])) if cim.meta_log else None,
        "seconds": {**{k: round(v, 3) for k, v in cim.seconds.items()},  # codec: encode + decode, all parts
                    "codec": round(codec_seconds(memory) - cim.codec_start, 3)}, "calls": dict(cim.calls),
        "jpeg_quality": getattr(memory, "quality", None), "jpeg_auto": getattr(cim, "jpeg_auto", None),
        "jpeg_decoder": getattr(memory, "decoder", None),
    }
