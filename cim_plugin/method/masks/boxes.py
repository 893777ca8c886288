"""Axis-aligned boxes as int64 Tensor(B, 4) = (x0, y0, x1, y1) in pixels, x1/y1 EXCLUSIVE (CIM step 3).

A box covers columns ``x0 <= x < x1`` and rows ``y0 <= y < y1``; its area is ``(x1-x0)*(y1-y0)``.
Valid boxes satisfy ``0 <= x0 <= x1 <= W`` and ``0 <= y0 <= y1 <= H`` (an empty box, x0 == x1 or
y0 == y1, is allowed: it means "no full-resolution pixels", i.e. pure downsampling).
"""

from __future__ import annotations

import math
import operator
from typing import Optional, Tuple

import torch

__all__ = ["masks_to_boxes", "cam_to_boxes", "boxes_to_masks", "box_areas", "box_area_fraction", "box_iou", "box_coverage",
           "random_boxes", "center_boxes", "check_boxes", "full_boxes", "same_size_random_boxes",
           "same_size_center_boxes"]


def _size(H, W):
    try:
        H, W = operator.index(H), operator.index(W)
    except TypeError:
        raise TypeError(f"H and W must be ints (pixels), got {H!r}, {W!r}") from None
    if H <= 0 or W <= 0:
        raise ValueError(f"H and W must be positive, got H={H}, W={W}")
    return H, W


def check_boxes(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Validate boxes for an H x W image and return them as int64 Tensor(B, 4) (same device).

    Raises TypeError for a non-integer / wrongly shaped tensor, ValueError for out-of-image or
    inverted boxes.
    """
    H, W = _size(H, W)
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise TypeError(f"boxes must be a Tensor(B,4) of (x0,y0,x1,y1), got "
                        f"{getattr(boxes, 'shape', type(boxes).__name__)}")
    if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"boxes must be an integer tensor (pixels), got {boxes.dtype}; round and "
                        "cast with .round().long() first")
    boxes = boxes.long()
    if boxes.numel():
        x0, y0, x1, y1 = boxes.unbind(1)
        bad = (x0 < 0) | (y0 < 0) | (x1 > W) | (y1 > H) | (x1 < x0) | (y1 < y0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"box {i} = {boxes[i].tolist()} is not a valid (x0,y0,x1,y1) box with "
                             f"0<=x0<=x1<={W}, 0<=y0<=y1<={H} (x1/y1 exclusive)")
    return boxes


def full_boxes(n: int, H: int, W: int, device=None) -> torch.Tensor:
    """Boxes covering the whole image: int64 Tensor(n, 4) of rows (0, 0, W, H)."""
    H, W = _size(H, W)
    return torch.tensor([0, 0, W, H], dtype=torch.long, device=device).repeat(n, 1)


def masks_to_boxes(mask: torch.Tensor) -> torch.Tensor:
    """Tightest box around the True pixels of each mask.

    Args:
        mask: bool Tensor(B, H, W).
    Returns:
        int64 Tensor(B, 4) (x0, y0, x1, y1), exclusive ends; an all-False mask gives (0, 0, W, H).
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 3:
        raise TypeError(f"mask must be a bool Tensor(B,H,W), got {getattr(mask, 'shape', type(mask))}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}; threshold it first (e.g. cam > 0.6)")
    B, H, W = mask.shape
    if H == 0 or W == 0:
        raise ValueError(f"mask must have a non-empty image size, got H={H}, W={W}")
    rows = mask.any(dim=2).to(torch.uint8)  # (B, H)
    cols = mask.any(dim=1).to(torch.uint8)  # (B, W)
    y0 = rows.argmax(dim=1)  # first maximum = first True
    y1 = H - rows.flip(1).argmax(dim=1)
    x0 = cols.argmax(dim=1)
    x1 = W - cols.flip(1).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).long()
    empty = rows.amax(dim=1) == 0 if B else torch.zeros(0, dtype=torch.bool, device=mask.device)
    full = torch.tensor([0, 0, W, H], dtype=torch.long, device=mask.device)
    return torch.where(empty.unsqueeze(1), full, boxes)


def cam_to_boxes(cam: torch.Tensor, threshold: float = 0.6) -> torch.Tensor:
    """Boxes around ``cam > threshold``: float Tensor(B, H, W) -> int64 Tensor(B, 4).

    A map with no pixel above the threshold (e.g. a constant CAM) gives the full image.
    """
    if not isinstance(cam, torch.Tensor) or cam.dim() != 3 or not cam.is_floating_point():
        raise TypeError(f"cam must be a float Tensor(B,H,W), got {getattr(cam, 'shape', type(cam))}")
    if not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise TypeError(f"threshold must be a float, got {threshold!r}")
    return masks_to_boxes(cam.detach() > threshold)


def boxes_to_masks(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Rasterise boxes: int Tensor(B, 4) -> bool Tensor(B, H, W), True inside [x0,x1) x [y0,y1)."""
    H, W = _size(H, W)
    boxes = check_boxes(boxes, H, W)
    xs = torch.arange(W, device=boxes.device)
    ys = torch.arange(H, device=boxes.device)
    inx = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])  # (B, W)
    iny = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])  # (B, H)
    return iny.unsqueeze(2) & inx.unsqueeze(1)


def box_areas(boxes: torch.Tensor) -> torch.Tensor:
    """Area in pixels of int Tensor(B, 4) boxes -> int64 Tensor(B,)."""
    b = boxes.long()
    return (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)


def box_area_fraction(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Box area / image area, float32 Tensor(B,) in [0, 1]."""
    H, W = _size(H, W)
    boxes = check_boxes(boxes, H, W)
    return box_areas(boxes).to(torch.float32) / float(H * W)


def _intersection(a: torch.Tensor, b: torch.Tensor, op: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked int64 copies of two box sets Tensor(B, 4) and their elementwise intersection areas (B,)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != 4:
            raise TypeError(f"{name} must be a Tensor(B,4), got {getattr(t, 'shape', type(t))}")
    if a.shape != b.shape:
        raise ValueError(f"{op} is elementwise: a and b need the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = a.long(), b.long()
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    return a, b, iw * ih


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num.float() / den.clamp_min(1).float(), torch.zeros_like(num, dtype=torch.float32))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise IoU of two box sets Tensor(B, 4) -> float32 Tensor(B,).

    Two empty boxes (union 0) have IoU 0.
    """
    a, b, inter = _intersection(a, b, "box_iou")
    return _ratio(inter, box_areas(a) + box_areas(b) - inter)


def box_coverage(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise fraction of box ``b``'s area that lies inside box ``a``: Tensor(B, 4) x 2 -> float32
    Tensor(B,) in [0, 1] (1 when ``a`` contains ``b``; 0 for an empty ``b``). With ``a`` a stored box and
    ``b`` the true object box, it is the part of the object kept at full resolution.
    """
    a, b, inter = _intersection(a, b, "box_coverage")
    return _ratio(inter, box_areas(b))


def _check_fraction(area_fraction):
    if not isinstance(area_fraction, (int, float)) or not (0.0 < float(area_fraction) <= 1.0):
        raise ValueError(f"area_fraction must be a number in (0, 1], got {area_fraction!r}")
    return float(area_fraction)


def random_boxes(n: int, H: int, W: int, area_fraction: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random boxes whose area is ``area_fraction`` of the image (up to pixel rounding).

    The width fraction is drawn log-uniformly in [area_fraction, 1] (so width and height fractions
    are exchangeable), the height follows from the area, the position is uniform. For ablations
    (random-box baseline). Returns int64 Tensor(n, 4) on the CPU (generator must be a CPU generator).
    """
    H, W = _size(H, W)
    a = _check_fraction(area_fraction)
    n = operator.index(n)
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    fw = torch.exp(math.log(a) * u[:, 0])  # in [a, 1]
    w = (fw * W).round().clamp(1, W)
    h = (a * H * W / w).round().clamp(1, H)
    x0 = (u[:, 1] * (W - w + 1)).floor().clamp(max=W - w)
    y0 = (u[:, 2] * (H - h + 1)).floor().clamp(max=H - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1).long()


def center_boxes(n: int, H: int, W: int, area_fraction: float) -> torch.Tensor:
    """Centred boxes with the image's aspect ratio and area ``area_fraction`` (pixel rounding).

    For ablations (centre-box baseline). Returns int64 Tensor(n, 4), all rows equal.
    """
    H, W = _size(H, W)
    s = math.sqrt(_check_fraction(area_fraction))
    w = min(W, max(1, int(math.floor(W * s + 0.5))))
    h = min(H, max(1, int(math.floor(H * s + 0.5))))
    x0, y0 = (W - w) // 2, (H - h) // 2
    return torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.long).repeat(operator.index(n), 1)


def same_size_random_boxes(boxes: torch.Tensor, H: int, W: int, draws: int = 1,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each box moved to a uniformly random valid place, keeping its width and height (a reference:
    how well a box of that size overlaps the object by chance).

    Args:
        boxes: int Tensor(B, 4) valid boxes of an H x W image.
        draws: number of independent placements per box.
        generator: optional CPU torch.Generator (fixed seed -> the same placements).
    Returns:
        int64 Tensor(draws, B, 4) on the CPU; ``x0`` uniform in ``[0, W - w]``, ``y0`` in ``[0, H - h]``.
    """
    H, W = _size(H, W)
    boxes = check_boxes(boxes, H, W).cpu()
    draws = operator.index(draws)
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    w = (boxes[:, 2] - boxes[:, 0]).double()
    h = (boxes[:, 3] - boxes[:, 1]).double()
    u = torch.rand(draws, len(boxes), 2, generator=generator, dtype=torch.float64)
    x0 = torch.minimum((u[..., 0] * (W - w + 1)).floor(), W - w)
    y0 = torch.minimum((u[..., 1] * (H - h + 1)).floor(), H - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=-1).long()


def same_size_center_boxes(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Each box moved to the image centre, keeping its width and height: int Tensor(B, 4) -> int64
    Tensor(B, 4) (same device); ``x0 = (W - w) // 2``, ``y0 = (H - h) // 2``."""
    H, W = _size(H, W)
    boxes = check_boxes(boxes, H, W)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    x0, y0 = (W - w) // 2, (H - h) // 2
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)
