"""The CIM exemplar codec (CIM step 4): full-resolution box + downsampled whole image.

An exemplar of an H x W RGB image is stored as
  * ``lowres``: the whole image downsampled by sqrt(r) per side (r = ``ratio``, the paper's
    ``compress_ratio``), uint8 (3, h, w) with (h, w) = :func:`lowres_size`;
  * ``crop``: the pixels inside its box at full resolution, uint8, laid out HWC row-major
    (box_h, box_w, 3) and flattened;
  * the box itself, 4 x int16.
Decoding pastes the crop into the bilinearly upsampled lowres image, so pixels inside the box are
exact and pixels outside equal ``upsample(downsample(x))``.

Resampling: downsampling is bilinear with antialiasing, upsampling bilinear, both
align_corners=False. On the CPU the uint8 kernels of torch are used (fast); on other devices the
images go through float32 and are rounded, which may differ by +-1 grey level from the CPU path
outside the box. Each path is deterministic, so decoding the same bytes twice gives identical pixels.
"""

from __future__ import annotations

import math
import operator
from typing import Tuple

import torch
import torch.nn.functional as F

from .boxes import box_areas, boxes_to_masks, check_boxes

__all__ = ["lowres_size", "downsample", "upsample", "degrade", "encode", "decode", "compress",
           "exemplar_nbytes", "exemplar_cost", "BOX_NBYTES"]

BOX_NBYTES = 8  # a box is stored as 4 x int16


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"compress ratio must be a finite number >= 1 (pixels of the image per pixel "
                         f"of its low-resolution copy), got {ratio!r}")
    return float(ratio)


def lowres_size(H: int, W: int, ratio: float) -> Tuple[int, int]:
    """Size (h, w) of the low-resolution copy: each side divided by sqrt(ratio), rounded half up, >= 1."""
    try:
        H, W = operator.index(H), operator.index(W)
    except TypeError:
        raise TypeError(f"H and W must be ints, got {H!r}, {W!r}") from None
    if H <= 0 or W <= 0:
        raise ValueError(f"H and W must be positive, got {H}, {W}")
    s = math.sqrt(_check_ratio(ratio))
    return max(1, int(math.floor(H / s + 0.5))), max(1, int(math.floor(W / s + 0.5)))


def _check_uint8_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise TypeError(f"{name} must be a Tensor(B,3,H,W), got {getattr(images, 'shape', type(images))}")
    if images.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 (0..255), got {images.dtype}; convert float images in [0,1] "
                        "with (x*255).round().clamp(0,255).to(torch.uint8)")


def _resize_uint8(images: torch.Tensor, size: Tuple[int, int], antialias: bool) -> torch.Tensor:
    """Bilinear resize of uint8 (B,C,H,W); keeps the memory format of ``images``."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images.clone()
    if images.numel() == 0:
        return images.new_zeros(images.shape[0], images.shape[1], *size)
    if images.device.type == "cpu":
        out = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    else:
        out = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=antialias)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out


def downsample(images: torch.Tensor, ratio: float = 4.0) -> torch.Tensor:
    """uint8 Tensor(B,3,H,W) -> uint8 Tensor(B,3,h,w), antialiased bilinear, (h,w) = lowres_size(H,W,ratio)."""
    _check_uint8_images(images)
    return _resize_uint8(images, lowres_size(images.shape[2], images.shape[3], ratio), antialias=True).contiguous()


def upsample(lowres: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """uint8 Tensor(B,3,h,w) -> uint8 Tensor(B,3,H,W), bilinear (align_corners=False); size = (H, W)."""
    _check_uint8_images(lowres, "lowres")
    try:
        size = tuple(operator.index(s) for s in size)
    except TypeError:
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size must be a pair of positive ints (H, W), got {size!r}")
    return _resize_uint8(lowres, size, antialias=False).contiguous()


def degrade(x: torch.Tensor, ratio: float = 4.0) -> torch.Tensor:
    """Differentiable ``up(down(x))`` for float images: the x_eta of CIM's hybrid input.

    Args:
        x: float Tensor(B, C, H, W), any value range (normalised or [0, 1]).
        ratio: compress ratio r (>= 1).
    Returns:
        float Tensor(B, C, H, W), same dtype/device; no rounding, gradients flow to ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise TypeError(f"x must be a float Tensor(B,C,H,W), got {getattr(x, 'shape', type(x))} "
                        f"{getattr(x, 'dtype', '')}")
    H, W = x.shape[2], x.shape[3]
    h, w = lowres_size(H, W, ratio)
    if (h, w) == (H, W):
        return x
    low = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)


def encode(images: torch.Tensor, boxes: torch.Tensor, ratio: float = 4.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Encode a batch: (lowres uint8 Tensor(B,3,h,w), crops uint8 1-D Tensor).

    Args:
        images: uint8 Tensor(B, 3, H, W).
        boxes: int Tensor(B, 4) (x0, y0, x1, y1), exclusive ends, inside the image.
        ratio: compress ratio r.
    Returns:
        lowres: uint8 Tensor(B, 3, h, w), (h, w) = lowres_size(H, W, ratio).
        crops: uint8 Tensor(3 * sum_i area_i,): image 0's crop, then image 1's, ...; each crop is
            (box_h, box_w, 3) HWC row-major, flattened.
    """
    _check_uint8_images(images)
    B, _, H, W = images.shape
    boxes = check_boxes(boxes, H, W).to(images.device)
    if boxes.shape[0] != B:
        raise ValueError(f"got {B} images but {boxes.shape[0]} boxes")
    nhwc = images.permute(0, 2, 3, 1).contiguous()  # free if images are channels_last already
    lowres = _resize_uint8(nhwc.permute(0, 3, 1, 2), lowres_size(H, W, ratio), antialias=True).contiguous()
    crops = nhwc.view(-1, 3).index_select(0, _box_pixel_index(boxes, H, W)).view(-1)
    return lowres, crops


def _box_pixel_index(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Flat indices into (B*H*W) pixels of all box pixels, image by image, row-major: int64 (P,)."""
    return boxes_to_masks(boxes, H, W).view(-1).nonzero().squeeze(1)


def decode(lowres: torch.Tensor, crops: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`encode`: uint8 Tensor(B, 3, H, W), box pixels exact, elsewhere upsampled lowres.

    Args:
        lowres: uint8 Tensor(B, 3, h, w).
        crops: uint8 1-D Tensor of length 3 * sum of box areas (layout of :func:`encode`).
        boxes: int Tensor(B, 4) in pixels of the full image.
        size: (H, W) of the full image.
    """
    _check_uint8_images(lowres, "lowres")
    try:
        size = tuple(operator.index(s) for s in size)
    except TypeError:
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size must be a pair of positive ints (H, W), got {size!r}")
    # upsample in channels_last so the box pixels can be pasted as rows of 3 bytes
    out = _resize_uint8(lowres.contiguous(memory_format=torch.channels_last), size, antialias=False)
    H, W = size
    boxes = check_boxes(boxes, H, W).to(lowres.device)
    if boxes.shape[0] != lowres.shape[0]:
        raise ValueError(f"got {lowres.shape[0]} lowres images but {boxes.shape[0]} boxes")
    if not isinstance(crops, torch.Tensor) or crops.dtype != torch.uint8 or crops.dim() != 1:
        raise TypeError(f"crops must be a 1-D uint8 tensor (as returned by encode), got "
                        f"{getattr(crops, 'shape', type(crops))} {getattr(crops, 'dtype', '')}")
    need = 3 * int(box_areas(boxes).sum())
    if crops.numel() != need:
        raise ValueError(f"crops has {crops.numel()} bytes but the boxes need 3 * total box area = {need}")
    nhwc = out.permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        nhwc = nhwc.contiguous()
    if need:
        nhwc.view(-1, 3).index_copy_(0, _box_pixel_index(boxes, H, W), crops.to(out.device).view(-1, 3))
    return nhwc.permute(0, 3, 1, 2).contiguous()


def compress(images: torch.Tensor, boxes: torch.Tensor, ratio: float = 4.0) -> torch.Tensor:
    """``decode(encode(images, boxes, ratio))``: uint8 Tensor(B,3,H,W) as the memory will replay it."""
    lowres, crops = encode(images, boxes, ratio)
    return decode(lowres, crops, boxes, (images.shape[2], images.shape[3]))


def exemplar_nbytes(boxes: torch.Tensor, H: int, W: int, ratio: float = 4.0) -> torch.Tensor:
    """Bytes of each stored exemplar, int64 Tensor(B,): 3*box_h*box_w + 3*h*w + 8 (box as 4 x int16)."""
    boxes = check_boxes(boxes, H, W)
    h, w = lowres_size(H, W, ratio)
    return 3 * box_areas(boxes) + (3 * h * w + BOX_NBYTES)


def exemplar_cost(boxes: torch.Tensor, H: int, W: int, ratio: float = 4.0) -> torch.Tensor:
    """Exemplar bytes in "full-image units": exemplar_nbytes / (3*H*W), float32 Tensor(B,).

    Approximately ``a + 1/r + 8/(3HW)`` for box area fraction ``a``: the lowres copy covers the whole
    image (the paper's ``a + (1 - a)/r`` would not store the lowres pixels under the box).
    """
    return exemplar_nbytes(boxes, H, W, ratio).to(torch.float32) / float(3 * H * W)
