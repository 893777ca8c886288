"""Version 1 of CompressedMemory's state (a full low-res image per exemplar, key ``lowres_off``): its
layout and the conversion to the current format (frames: only the low-res pixels that a decoded pixel
outside the box reads). Decoded images are unchanged by the conversion."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .codec import frame_from_lowres, frame_npixels, lowres_size
from .packing import _ranges, _size_groups

if TYPE_CHECKING:
    from .memory import CompressedMemory


def lowres_len_v1(memory: "CompressedMemory") -> torch.Tensor:
    """Version-1 layout: bytes of each exemplar's full low-res image (3*h*w), int64 Tensor(N,)."""
    out = torch.zeros(len(memory), dtype=torch.long)
    for (H, W), pos in _size_groups(memory._sizes):
        h, w = lowres_size(H, W, memory.compress_ratio)
        out[pos] = 3 * h * w
    return out


def convert_v1(memory: "CompressedMemory") -> None:
    """Replace version-1 full low-res images (CHW, at ``_frame_off``) by their frames."""
    frames = [torch.zeros(0, dtype=torch.uint8)] * len(memory)
    fr_len = torch.zeros(len(memory), dtype=torch.long)
    for (H, W), pos in _size_groups(memory._sizes):
        h, w = lowres_size(H, W, memory.compress_ratio)
        lowres = memory._payload[_ranges(memory._frame_off[pos], torch.full((pos.numel(),), 3 * h * w))]
        boxes = memory._boxes[pos].long()
        frame = frame_from_lowres(lowres.view(-1, 3, h, w), boxes, (H, W), memory.compress_ratio)
        fr_len[pos] = 3 * frame_npixels(boxes, H, W, memory.compress_ratio)
        for p, f in zip(pos.tolist(), frame.split(fr_len[pos].tolist())):
            frames[p] = f
    cr_len = memory._crop_len()
    crops = memory._payload[_ranges(memory._crop_off, cr_len)]
    memory._payload = torch.cat(frames + [crops])
    memory._frame_off = torch.cumsum(fr_len, 0) - fr_len
    memory._crop_off = int(fr_len.sum()) + torch.cumsum(cr_len, 0) - cr_len
