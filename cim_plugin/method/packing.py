"""Index helpers for CompressedMemory's packed byte payload."""

from __future__ import annotations

from typing import Iterator, Tuple

import torch


def _ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(s, s + l) for each (s, l); int64 1-D, no Python loop."""
    total = int(lengths.sum()) if lengths.numel() else 0
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    excl = torch.cumsum(lengths, 0) - lengths
    return torch.arange(total, dtype=torch.long) + torch.repeat_interleave(starts - excl, lengths)


def _size_groups(sizes: torch.Tensor) -> Iterator[Tuple[Tuple[int, int], torch.Tensor]]:
    """For int64 Tensor(N, 2) of (H, W): yield ((H, W), int64 positions) per distinct size."""
    if sizes.numel() == 0:
        return
    uniq, inv = torch.unique(sizes, dim=0, return_inverse=True)
    for g, (H, W) in enumerate(uniq.tolist()):
        yield (H, W), (inv == g).nonzero().squeeze(1)
