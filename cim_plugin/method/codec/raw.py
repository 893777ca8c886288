"""The CIM exemplar codec (CIM step 4): full-resolution box + the low-resolution frame around it.

An exemplar of an H x W RGB image with box B is stored as
  * ``crop``: the pixels inside B at full resolution, uint8, laid out HWC row-major
    (box_h, box_w, 3) and flattened;
  * ``frame``: the pixels of the low-resolution copy (the whole image downsampled by sqrt(r) per
    side, r = ``ratio``, the paper's ``compress_ratio``; grid (h, w) = :func:`lowres_size`) that some
    decoded pixel OUTSIDE the box reads, i.e. the low-res grid minus its "hole" rectangle
    (:func:`lowres_hole`), uint8, HWC (3 bytes per pixel), in row-major order of the low-res grid;
  * the box itself, 4 x int16 (8 bytes, :data:`BOX_NBYTES`), unless it is the whole image: a crop of
    ``3*H*W`` bytes says so, and the box costs nothing.
So an exemplar costs ``3*box_h*box_w + 3*frame_pixels + 8`` bytes (:func:`exemplar_nbytes`), about
``a + (1 - a)/r`` full images for box area fraction ``a``, and exactly ``3*H*W`` (one image) for a full box.

Decoding scatters the frame into a zero low-res grid, upsamples it bilinearly to (H, W) and pastes
the crop, so pixels inside the box are exact and pixels outside equal ``upsample(downsample(x))``:
the pixels of the hole are read only by decoded pixels inside the box, which the crop overwrites.

Resampling: downsampling is bilinear with antialiasing, upsampling bilinear, both
align_corners=False. On the CPU the uint8 kernels of torch are used (fast); on other devices the
images go through float32 and are rounded, which may differ by +-1 grey level from the CPU path
outside the box. Each path is deterministic, so decoding the same bytes twice gives identical pixels.
"""

from __future__ import annotations

import math
import operator
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..masks.boxes import box_areas, boxes_to_masks, check_boxes

__all__ = ["lowres_size", "downsample", "upsample", "degrade", "encode", "decode", "compress",
           "exemplar_nbytes", "box_nbytes", "exemplar_cost", "lowres_hole", "frame_mask", "frame_npixels",
           "frame_from_lowres", "BOX_NBYTES", "check_ratio", "check_uint8_images", "paste"]

BOX_NBYTES = 8  # a box is stored as 4 x int16


def check_ratio(ratio) -> float:
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
    s = math.sqrt(check_ratio(ratio))
    return max(1, int(math.floor(H / s + 0.5))), max(1, int(math.floor(W / s + 0.5)))


def _check_size(size) -> Tuple[int, int]:
    try:
        size = tuple(operator.index(s) for s in size)
    except TypeError:
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"size must be a pair of positive ints (H, W), got {size!r}")
    return size


def check_uint8_images(images: torch.Tensor, name: str = "images") -> None:
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
        if tuple(size) == (1, 1):  # torch's uint8 kernel asserts on a contiguous input with a 1x1 output
            images = images.contiguous(memory_format=torch.channels_last)
        out = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    else:
        out = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=antialias)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out


def downsample(images: torch.Tensor, ratio: float = 4.0) -> torch.Tensor:
    """uint8 Tensor(B,3,H,W) -> uint8 Tensor(B,3,h,w), antialiased bilinear, (h,w) = lowres_size(H,W,ratio)."""
    check_uint8_images(images)
    return _resize_uint8(images, lowres_size(images.shape[2], images.shape[3], ratio), antialias=True).contiguous()


def upsample(lowres: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """uint8 Tensor(B,3,h,w) -> uint8 Tensor(B,3,H,W), bilinear (align_corners=False); size = (H, W)."""
    check_uint8_images(lowres, "lowres")
    return _resize_uint8(lowres, _check_size(size), antialias=False).contiguous()


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


# ---------------------------------------------------------------------------------- the frame
def _axis_reads(n_out: int, n_in: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Input indices that each output index of a bilinear (align_corners=False) upsampling may read.

    Output index i samples the input at s = (i + 0.5) * n_in / n_out - 0.5 = num / den with
    num = n_in * (2i + 1) - n_out, den = 2 * n_out, computed here exactly in integers; it reads
    input indices floor(s) and floor(s) + 1, clipped to [0, n_in - 1] (s < 0 reads index 0 only: torch
    clamps s to 0 and gives index 1 weight exactly 0). torch computes s in floating point, so the
    window is widened by ``margin / den`` (>= 1/den, > 32 float32 ulps of s) on both sides: a sample
    point exactly on, or within rounding of, an input index also counts its other neighbour.
    Equal lengths are copied (no resampling): i reads i.

    Returns:
        (lo, hi): int64 Tensor(n_out,) each, first and last input index read, non-decreasing.
    """
    i = torch.arange(n_out, dtype=torch.long, device=device)
    if n_in == n_out:
        return i, i.clone()
    num = n_in * (2 * i + 1) - n_out
    den = 2 * n_out
    margin = 1 + ((num.abs() + den) >> 18)
    lo = torch.div(num - margin, den, rounding_mode="floor").clamp_(0, n_in - 1)
    hi = (torch.div(num + margin, den, rounding_mode="floor") + 1).clamp_(0, n_in - 1)
    return lo, hi


def _axis_hole(a0: torch.Tensor, a1: torch.Tensor, n_out: int, n_in: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Input indices [start, end) read by no output index outside [a0, a1): int64 Tensor(B,) each, end >= start."""
    lo, hi = _axis_reads(n_out, n_in, a0.device)
    # last input index read by any output i < k, for k = 0..n_out (-1: none)
    before = torch.cat([lo.new_full((1,), -1), torch.cummax(hi, 0).values])
    # first input index read by any output i >= k, for k = 0..n_out (n_in: none)
    after = torch.cat([torch.cummin(lo.flip(0), 0).values.flip(0), lo.new_full((1,), n_in)])
    start = before[a0] + 1
    return start, torch.maximum(after[a1], start)


def lowres_hole(boxes: torch.Tensor, H: int, W: int, ratio: float = 4.0) -> torch.Tensor:
    """The low-res pixels an exemplar does NOT store: int64 Tensor(B, 4) (x0, y0, x1, y1), exclusive ends.

    Coordinates are in pixels of the (h, w) = :func:`lowres_size` grid. Every decoded pixel outside
    the full-resolution box reads only low-res pixels outside this rectangle (exact up to a margin
    for floating-point rounding in torch's resampling: at most one more low-res row/column per side,
    and only where a sample point falls on or next to a low-res pixel centre). A hole may be
    empty (x0 == x1 or y0 == y1, e.g. for an empty box); a full box gives the whole grid (0, 0, w, h).

    Args:
        boxes: int Tensor(B, 4) (x0, y0, x1, y1) in pixels of the H x W image, exclusive ends.
        ratio: compress ratio r (>= 1).
    """
    boxes = check_boxes(boxes, H, W)
    h, w = lowres_size(H, W, ratio)
    xs, xe = _axis_hole(boxes[:, 0], boxes[:, 2], W, w)
    ys, ye = _axis_hole(boxes[:, 1], boxes[:, 3], H, h)
    return torch.stack([xs, ys, xe, ye], dim=1)


def frame_mask(boxes: torch.Tensor, H: int, W: int, ratio: float = 4.0) -> torch.Tensor:
    """Which low-res pixels an exemplar stores: bool Tensor(B, h, w), False inside :func:`lowres_hole`."""
    hole = lowres_hole(boxes, H, W, ratio)
    h, w = lowres_size(H, W, ratio)
    rows = torch.arange(h, device=hole.device)
    cols = torch.arange(w, device=hole.device)
    in_rows = (rows >= hole[:, 1:2]) & (rows < hole[:, 3:4])  # (B, h)
    in_cols = (cols >= hole[:, 0:1]) & (cols < hole[:, 2:3])  # (B, w)
    return ~(in_rows.unsqueeze(2) & in_cols.unsqueeze(1))


def frame_npixels(boxes: torch.Tensor, H: int, W: int, ratio: float = 4.0) -> torch.Tensor:
    """Number of low-res pixels each exemplar stores, int64 Tensor(B,): h*w - area of its hole."""
    h, w = lowres_size(H, W, ratio)
    return h * w - box_areas(lowres_hole(boxes, H, W, ratio))


def frame_from_lowres(lowres: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int],
                      ratio: float = 4.0) -> torch.Tensor:
    """The stored frame of full low-res images: uint8 1-D Tensor(3 * sum frame_npixels).

    Args:
        lowres: uint8 Tensor(B, 3, h, w), (h, w) = lowres_size(H, W, ratio) (any memory format).
        boxes: int Tensor(B, 4) in pixels of the full image.
        size: (H, W) of the full image.
    Returns:
        exemplar 0's frame pixels, then exemplar 1's, ...; each in row-major order of the low-res
        grid, 3 bytes (RGB) per pixel.
    """
    check_uint8_images(lowres, "lowres")
    H, W = _check_size(size)
    hw = lowres_size(H, W, ratio)
    if tuple(lowres.shape[2:]) != hw:
        raise ValueError(f"lowres has size {tuple(lowres.shape[2:])} but a {H}x{W} image at ratio {ratio} "
                         f"needs {hw} (lowres_size)")
    boxes = check_boxes(boxes, H, W).to(lowres.device)
    if boxes.shape[0] != lowres.shape[0]:
        raise ValueError(f"got {lowres.shape[0]} lowres images but {boxes.shape[0]} boxes")
    nhwc = lowres.permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        nhwc = nhwc.contiguous()
    keep = frame_mask(boxes, H, W, ratio).view(-1).nonzero().squeeze(1)  # index_select beats bool indexing
    return nhwc.reshape(-1, 3).index_select(0, keep).view(-1)


# ---------------------------------------------------------------------------------- codec
def encode(images: torch.Tensor, boxes: torch.Tensor, ratio: float = 4.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Encode a batch: (frame uint8 1-D Tensor, crops uint8 1-D Tensor).

    Args:
        images: uint8 Tensor(B, 3, H, W) (contiguous or channels_last).
        boxes: int Tensor(B, 4) (x0, y0, x1, y1), exclusive ends, inside the image.
        ratio: compress ratio r.
    Returns:
        frame: uint8 Tensor(3 * sum_i frame_npixels_i,): image 0's stored low-res pixels, then image
            1's, ...; layout of :func:`frame_from_lowres`.
        crops: uint8 Tensor(3 * sum_i area_i,): image 0's crop, then image 1's, ...; each crop is
            (box_h, box_w, 3) HWC row-major, flattened.
    """
    check_uint8_images(images)
    B, _, H, W = images.shape
    boxes = check_boxes(boxes, H, W).to(images.device)
    if boxes.shape[0] != B:
        raise ValueError(f"got {B} images but {boxes.shape[0]} boxes")
    nhwc = images.permute(0, 2, 3, 1).contiguous()  # free if images are channels_last already
    lowres = _resize_uint8(nhwc.permute(0, 3, 1, 2), lowres_size(H, W, ratio), antialias=True)
    frame = frame_from_lowres(lowres, boxes, (H, W), ratio)
    crops = nhwc.view(-1, 3).index_select(0, _box_pixel_index(boxes, H, W)).view(-1)
    return frame, crops


def _box_pixel_index(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Flat indices into (B*H*W) pixels of all box pixels, image by image, row-major: int64 (P,)."""
    return boxes_to_masks(boxes, H, W).view(-1).nonzero().squeeze(1)


def paste(lowres: torch.Tensor, crops: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Upsample uint8 (B,3,h,w) to ``size`` and paste the crops of (checked, same-device) boxes."""
    H, W = size
    if not isinstance(crops, torch.Tensor) or crops.dtype != torch.uint8 or crops.dim() != 1:
        raise TypeError(f"crops must be a 1-D uint8 tensor (as returned by encode), got "
                        f"{getattr(crops, 'shape', type(crops))} {getattr(crops, 'dtype', '')}")
    need = 3 * int(box_areas(boxes).sum())
    if crops.numel() != need:
        raise ValueError(f"crops has {crops.numel()} bytes but the boxes need 3 * total box area = {need}")
    # upsample in channels_last so the box pixels can be pasted as rows of 3 bytes
    out = _resize_uint8(lowres.contiguous(memory_format=torch.channels_last), size, antialias=False)
    nhwc = out.permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        nhwc = nhwc.contiguous()
    if need:
        nhwc.view(-1, 3).index_copy_(0, _box_pixel_index(boxes, H, W), crops.to(out.device).view(-1, 3))
    return nhwc.permute(0, 3, 1, 2).contiguous()


def decode(frame: torch.Tensor, crops: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int],
           ratio: Optional[float] = None) -> torch.Tensor:
    """Inverse of :func:`encode`: uint8 Tensor(B, 3, H, W), box pixels exact, elsewhere upsampled lowres.

    Args:
        frame: the stored low-res pixels, uint8 1-D Tensor (layout of :func:`encode`; needs
            ``ratio``), or full low-res images uint8 Tensor(B, 3, h, w) (pixels in the hole are
            then ignored in effect: the crop overwrites every decoded pixel they influence).
        crops: uint8 1-D Tensor of length 3 * sum of box areas (layout of :func:`encode`).
        boxes: int Tensor(B, 4) in pixels of the full image.
        size: (H, W) of the full image.
        ratio: compress ratio r used by :func:`encode`; required for a 1-D frame.
    Returns:
        uint8 Tensor(B, 3, H, W) on the device of ``frame``.
    """
    H, W = _check_size(size)
    if not isinstance(frame, torch.Tensor) or frame.dtype != torch.uint8 or frame.dim() not in (1, 4):
        raise TypeError(f"frame must be a 1-D uint8 tensor (as returned by encode) or uint8 low-res images "
                        f"Tensor(B,3,h,w), got {getattr(frame, 'shape', type(frame))} {getattr(frame, 'dtype', '')}")
    boxes = check_boxes(boxes, H, W).to(frame.device)
    B = boxes.shape[0]
    if frame.dim() == 4:
        check_uint8_images(frame, "lowres")
        if frame.shape[0] != B:
            raise ValueError(f"got {frame.shape[0]} lowres images but {B} boxes")
        if ratio is not None and tuple(frame.shape[2:]) != lowres_size(H, W, ratio):
            raise ValueError(f"lowres has size {tuple(frame.shape[2:])} but ratio {ratio} needs "
                             f"{lowres_size(H, W, ratio)}")
        return paste(frame, crops, boxes, (H, W))
    if ratio is None:
        raise ValueError("decode of a 1-D frame needs the compress ratio it was encoded with: "
                         "decode(frame, crops, boxes, size, ratio=r)")
    h, w = lowres_size(H, W, ratio)
    keep = frame_mask(boxes, H, W, ratio).view(-1)
    # gather, not scatter (faster): low-res pixel j takes frame pixel cumsum(keep)[j] - 1, hole pixels a zero pixel
    pos = torch.cumsum(keep, 0, dtype=torch.int32 if keep.numel() < 2**31 - 1 else torch.long)
    stored = int(pos[-1]) if pos.numel() else 0
    if frame.numel() != 3 * stored:
        raise ValueError(f"frame has {frame.numel()} bytes but the boxes need 3 * stored low-res pixels = "
                         f"{3 * stored} (is ratio={ratio} the one it was encoded with?)")
    src = torch.where(keep, pos - 1, stored)
    grid = torch.cat([frame.view(-1, 3), frame.new_zeros(1, 3)]).index_select(0, src)
    return paste(grid.view(B, h, w, 3).permute(0, 3, 1, 2), crops, boxes, (H, W))


def compress(images: torch.Tensor, boxes: torch.Tensor, ratio: float = 4.0) -> torch.Tensor:
    """``decode(encode(images, boxes, ratio), ...)``: uint8 Tensor(B,3,H,W) as the memory will replay it.

    Computed without building the frame (the hole pixels it drops never reach the output).
    """
    check_uint8_images(images)
    B, _, H, W = images.shape
    boxes = check_boxes(boxes, H, W).to(images.device)
    if boxes.shape[0] != B:
        raise ValueError(f"got {B} images but {boxes.shape[0]} boxes")
    nhwc = images.permute(0, 2, 3, 1).contiguous()
    lowres = _resize_uint8(nhwc.permute(0, 3, 1, 2), lowres_size(H, W, ratio), antialias=True)
    crops = nhwc.view(-1, 3).index_select(0, _box_pixel_index(boxes, H, W)).view(-1)
    return paste(lowres, crops, boxes, (H, W))


def box_nbytes(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Bytes of each stored box, int64 Tensor(B,): :data:`BOX_NBYTES` (4 x int16), or 0 for a box that is
    the whole H x W image (its crop, of 3*H*W bytes, already says so)."""
    boxes = check_boxes(boxes, H, W).long()
    whole = (boxes == torch.tensor([0, 0, W, H], device=boxes.device)).all(dim=1)
    return torch.where(whole, 0, BOX_NBYTES)


def exemplar_nbytes(boxes: torch.Tensor, H: int, W: int, ratio: float = 4.0) -> torch.Tensor:
    """Bytes of each stored exemplar, int64 Tensor(B,): 3*box_h*box_w + 3*frame_npixels + the box's bytes
    (8, or 0 for a whole-image box: :func:`box_nbytes`)."""
    boxes = check_boxes(boxes, H, W)
    return 3 * box_areas(boxes) + 3 * frame_npixels(boxes, H, W, ratio) + box_nbytes(boxes, H, W)


def exemplar_cost(boxes: torch.Tensor, H: int, W: int, ratio: float = 4.0) -> torch.Tensor:
    """Exemplar bytes in "full-image units": exemplar_nbytes / (3*H*W), float32 Tensor(B,).

    About the paper's ``a + (1 - a)/r`` for box area fraction ``a`` (plus 8/(3HW) for the box and
    the low-res pixels straddling the box border); exactly 1 for a full box.
    """
    return exemplar_nbytes(boxes, H, W, ratio).to(torch.float32) / float(3 * H * W)
