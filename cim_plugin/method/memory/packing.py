"""Index helpers for CompressedMemory's packed byte payload, and the checks of its candidate images."""

from __future__ import annotations

from typing import Iterator, Tuple

import torch

from ..codec.raw import check_uint8_images

__all__ = ["INT16_MAX", "DECODE_CHUNK", "select_images", "packed_ranges", "group_by_size", "image_sizes"]

INT16_MAX = 32767  # boxes are stored as int16
#: Exemplars decoded per call by ``CompressedMemory.decode_list``: the upsampled float frames, masks and paste
#: indices of one call are a few times the chunk's pixels (on a GPU, a whole memory of 224 px images at once
#: would be tens of GB), while a chunk of 256 keeps the per-call overhead negligible.
DECODE_CHUNK = 256


def select_images(images, idx: torch.Tensor) -> torch.Tensor:
    """Candidates ``idx`` of a uint8 Tensor(N,3,H,W) or of a list of same-size uint8 Tensor(3,H,W)."""
    if isinstance(images, torch.Tensor):
        return images.index_select(0, idx.to(images.device))
    return torch.stack([images[i] for i in idx.tolist()])


def packed_ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(s, s + l) for each (s, l); int64 1-D, no Python loop."""
    total = int(lengths.sum()) if lengths.numel() else 0
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    excl = torch.cumsum(lengths, 0) - lengths
    return torch.arange(total, dtype=torch.long) + torch.repeat_interleave(starts - excl, lengths)


def group_by_size(sizes: torch.Tensor) -> Iterator[Tuple[Tuple[int, int], torch.Tensor]]:
    """For int64 Tensor(N, 2) of (H, W): yield ((H, W), int64 positions) per distinct size."""
    if sizes.numel() == 0:
        return
    uniq, inv = torch.unique(sizes, dim=0, return_inverse=True)
    for g, (H, W) in enumerate(uniq.tolist()):
        yield (H, W), (inv == g).nonzero().squeeze(1)


def image_sizes(images) -> torch.Tensor:
    """Validate candidate images; int64 Tensor(N, 2) of their (H, W)."""
    if isinstance(images, torch.Tensor):
        check_uint8_images(images)
        sizes = torch.tensor([[images.shape[2], images.shape[3]]], dtype=torch.long).repeat(images.shape[0], 1)
    elif isinstance(images, (list, tuple)):
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dim() != 3 or im.shape[0] != 3 or im.dtype != torch.uint8:
                raise TypeError(f"images[{i}] must be a uint8 Tensor(3,H,W), got "
                                f"{getattr(im, 'shape', type(im))} {getattr(im, 'dtype', '')}")
        sizes = torch.tensor([[im.shape[1], im.shape[2]] for im in images], dtype=torch.long).view(-1, 2)
    else:
        raise TypeError(f"images must be a uint8 Tensor(N,3,H,W) or a list of uint8 Tensor(3,H,W), "
                        f"got {type(images).__name__}")
    if sizes.numel() and (int(sizes.max()) > INT16_MAX or int(sizes.min()) <= 0):
        raise ValueError(f"image sides must be in [1, {INT16_MAX}] pixels (int16 boxes), got "
                         f"{sizes.min().item()}..{sizes.max().item()}")
    return sizes
