"""Class activation maps (CAM) for single- and multi-backbone classifiers (CIM step 2).

The CAM of an image ``x`` of class ``y`` is ``A = w_y^T F(x)`` evaluated at every position of the
last feature map ``F(x)``; for networks that concatenate the pooled features of several backbones
(DER, FOSTER) the classifier row ``w_y`` spans all of them, so the CAM is the sum over backbones of
``w_y[slice_k]^T F_k(x)``. Maps are min-max normalised per image to ``[0, 1]``.
"""

from __future__ import annotations

import operator
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["cam_from_feature_maps", "raw_cam", "minmax_normalize"]


def _check_inputs(fmaps, weight, labels) -> None:
    if isinstance(fmaps, torch.Tensor):
        raise TypeError("fmaps must be a list of per-backbone feature maps [Tensor(B,C_k,h,w)], "
                        "not a single tensor; wrap it as [fmap]")
    if not isinstance(fmaps, (list, tuple)) or len(fmaps) == 0:
        raise TypeError(f"fmaps must be a non-empty list of Tensor(B,C_k,h,w), got {type(fmaps).__name__}")
    for k, f in enumerate(fmaps):
        if not isinstance(f, torch.Tensor) or f.dim() != 4 or not f.is_floating_point():
            raise TypeError(f"fmaps[{k}] must be a floating Tensor(B,C,h,w), got "
                            f"{getattr(f, 'shape', type(f).__name__)} {getattr(f, 'dtype', '')}")
    b = fmaps[0].shape[0]
    if any(f.shape[0] != b for f in fmaps):
        raise ValueError(f"all feature maps must share the batch size, got {[f.shape[0] for f in fmaps]}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(f"weight must be the classifier matrix Tensor(K, sum_k C_k), got "
                        f"{getattr(weight, 'shape', type(weight).__name__)}")
    c_total = sum(f.shape[1] for f in fmaps)
    if weight.shape[1] != c_total:
        raise ValueError(f"weight has {weight.shape[1]} input features but the feature maps have "
                         f"{[f.shape[1] for f in fmaps]} channels (sum {c_total}); pass the classifier weight "
                         "whose columns are the concatenated features of the backbones in fmaps order")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype not in (
            torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"labels must be an integer Tensor(B,), got "
                        f"{getattr(labels, 'shape', type(labels).__name__)} {getattr(labels, 'dtype', '')}")
    if labels.shape[0] != b:
        raise ValueError(f"labels has {labels.shape[0]} entries but the batch size is {b}")
    if b and (int(labels.min()) < 0 or int(labels.max()) >= weight.shape[0]):
        raise ValueError(f"labels must lie in [0, {weight.shape[0]}) (rows of weight), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def raw_cam(fmaps: Sequence[torch.Tensor], weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unnormalised CAM summed over backbones.

    Args:
        fmaps: list of K feature maps, ``fmaps[k]`` float Tensor(B, C_k, h_k, w_k).
        weight: float Tensor(num_classes, sum_k C_k), classifier weight; columns follow ``fmaps`` order.
        labels: int Tensor(B,), the class whose CAM is wanted per image.
    Returns:
        float Tensor(B, h, w) with ``h = max_k h_k`` and ``w = max_k w_k``; a backbone whose map is
        smaller is bilinearly upsampled (align_corners=False) to that size before summing.
        Units: logit contribution per position (no bias, not averaged).
    """
    _check_inputs(fmaps, weight, labels)
    labels = labels.to(device=weight.device, dtype=torch.long)
    rows = weight.index_select(0, labels)  # (B, sum C)
    h = max(f.shape[2] for f in fmaps)
    w = max(f.shape[3] for f in fmaps)
    out = None
    offset = 0
    for f in fmaps:  # one pass per backbone (few), batched over images
        c = f.shape[1]
        a = torch.einsum("bc,bchw->bhw", rows[:, offset:offset + c].to(f.dtype), f)
        offset += c
        if a.shape[1:] != (h, w):
            a = F.interpolate(a.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
        out = a if out is None else out + a
    return out


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of a float Tensor(B, H, W) to ``[0, 1]``.

    A (numerically) constant map becomes all zeros, never NaN; differentiable elsewhere.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or not maps.is_floating_point():
        raise TypeError(f"maps must be a float Tensor(B,H,W), got {getattr(maps, 'shape', type(maps))}")
    flat = maps.flatten(1)
    mn = flat.amin(dim=1).view(-1, 1, 1)
    mx = flat.amax(dim=1).view(-1, 1, 1)
    rng = mx - mn
    finfo = torch.finfo(maps.dtype)
    # relative tolerance: interpolation of a constant map leaves a few ulps of noise
    tol = 64 * finfo.eps * torch.maximum(mx.abs(), mn.abs()) + finfo.tiny
    ok = rng > tol
    norm = (maps - mn) / torch.where(ok, rng, torch.ones_like(rng))
    return torch.where(ok, norm, torch.zeros_like(norm)).clamp(0.0, 1.0)


def cam_from_feature_maps(fmaps: Sequence[torch.Tensor], weight: torch.Tensor, labels: torch.Tensor,
                          out_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Normalised class activation maps, batched and differentiable.

    Args:
        fmaps: list of per-backbone last feature maps, float Tensor(B, C_k, h_k, w_k).
        weight: classifier weight float Tensor(num_classes, sum_k C_k) (row y spans all backbones,
            concatenated in ``fmaps`` order).
        labels: int Tensor(B,) class per image.
        out_size: optional (H, W) in pixels; the summed CAM is bilinearly upsampled to it
            (align_corners=False) before normalisation. ``None`` keeps the feature-map size.
    Returns:
        float Tensor(B, H, W) in [0, 1] (per image min-max normalised; constant map -> zeros),
        on the device of the inputs, with gradients w.r.t. ``fmaps`` and ``weight``.
    """
    cam = raw_cam(fmaps, weight, labels)
    if out_size is not None:
        try:
            size = tuple(operator.index(s) for s in out_size)
        except TypeError:
            size = ()
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"out_size must be a pair of positive ints (H, W), got {out_size!r}")
        if tuple(cam.shape[1:]) != size:
            cam = F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return minmax_normalize(cam)
