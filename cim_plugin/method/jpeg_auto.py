"""``"jpeg_quality": "auto"``: MRDC's choice of the JPEG quality without retraining (Wang et al., ICLR 2022).

On the first phase's model, for each quality q of :data:`QUALITY_GRID`, every new class is herded into
its byte share as JPEG exemplars of quality q (real encoded sizes, as the memory will do), and the
log-volume of the L2-normalised features F of the exemplars kept (:func:`log_volume`, log sqrt det F F^T)
is compared with that of the same exemplars uncompressed: compression that changes what the model sees
changes the volume (its artefacts can also spread the features, so the comparison is two-sided). The
chosen quality is the lowest one whose mean log-volume stays within :data:`TOLERANCE` (relative) of the
uncompressed one, else the highest of the grid. The paper gives no tolerance; this one is ours, and
comparing with the same exemplars uncompressed is our reading of "close to the uncompressed one".
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F

from .herding import herding_order
from .jpeg_memory import JpegMemory

__all__ = ["QUALITY_GRID", "TOLERANCE", "log_volume", "choose_quality"]

log = logging.getLogger(__name__)

QUALITY_GRID = (10, 20, 30, 40, 50, 60, 70, 80, 90)
TOLERANCE = 0.05  # relative change of log-volume allowed against the uncompressed exemplars
RIDGE = 1e-4  # added to the Gram matrix's diagonal: more exemplars than feature dimensions stay finite


def log_volume(features: torch.Tensor) -> float:
    """log sqrt det(F F^T + RIDGE I) of the L2-normalised rows of float Tensor(k, D) (<= 0 for unit rows)."""
    f = F.normalize(features.detach().double(), dim=1)
    gram = f @ f.T + RIDGE * torch.eye(f.shape[0], dtype=f.dtype, device=f.device)
    return 0.5 * float(torch.linalg.slogdet(gram)[1])


def choose_quality(classes: Sequence[Tuple[int, torch.Tensor, torch.Tensor]], class_bytes: int, total_classes: int,
                   config: Mapping[str, Any], features_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   grid: Sequence[int] = QUALITY_GRID, tolerance: float = TOLERANCE) -> Dict:
    """The quality MRDC's criterion picks, and the scores behind it (also logged).

    Args:
        classes: per new class (label, uint8 images Tensor(N, 3, H, W), boxes Tensor(N, 4)).
        class_bytes: bytes one class may hold; its part of the shared JPEG header (one of
            ``total_classes`` parts) is taken off, as the memory's class shares are.
        config: CIM keys (compress_ratio, cim_mask) of the memory to be made.
        features_of: (uint8 images, labels) -> float features (N, D) of the phase's model.
    Returns:
        {"quality": chosen int, "scores": {q: mean log-volume of the JPEG exemplars}, "reference": {q:
        mean log-volume of the same exemplars uncompressed}, "exemplars": {q: exemplars kept, all classes}}.
    """
    implicit = config.get("cim_mask") == "full"
    share = class_bytes - -(-JpegMemory(0).shared_nbytes // total_classes)
    scores: Dict[int, float] = {}
    reference: Dict[int, float] = {}
    kept: Dict[int, int] = {}
    for q in sorted(grid):
        memory = JpegMemory(1 << 62, config.get("compress_ratio", 4.0), implicit_boxes=implicit, quality=q)
        vols: List[float] = []
        refs: List[float] = []
        kept[q] = 0
        for label, images, boxes in classes:
            labels = torch.full((len(images),), label, dtype=torch.long)
            features = features_of(memory.compressed(images, boxes), labels)
            k = memory.select_class(images, features, boxes, label, share, replace=True)
            pick = herding_order(features, k)
            vols.append(log_volume(features[pick]))
            refs.append(log_volume(features_of(images[pick.to(images.device)], labels[:k])))
            kept[q] += k
        scores[q], reference[q] = sum(vols) / len(vols), sum(refs) / len(refs)
    ok = [q for q in sorted(grid) if abs(scores[q] - reference[q]) <= tolerance * abs(reference[q])]
    chosen = ok[0] if ok else max(grid)
    log.info("jpeg_quality auto: log-volume per quality (JPEG / uncompressed, exemplars) %s -> quality %d",
             {q: (round(scores[q], 2), round(reference[q], 2), kept[q]) for q in sorted(grid)}, chosen)
    return {"quality": chosen, "scores": scores, "reference": reference, "exemplars": kept}
