"""Which exemplars of a class fit its byte share: herding-order prefixes, with one fallback.

The official rule (``_construct_exemplar`` / ``_reduce_exemplar``) keeps a class's exemplars in herding
order while their summed cost stays within the class's share. If the first pick alone is over the share
(a share smaller than one image, and a first pick with a big box), that rule keeps nothing. In that case
only, the class keeps instead the first exemplar in herding order that fits alone. Everywhere else the
rule is the official prefix. (No stored exemplar costs more than its image, see
:meth:`cim_plugin.method.memory.CompressedMemory.select_class`, so a share of one image always holds
the first pick.)
"""

from __future__ import annotations

import torch

__all__ = ["prefix_within", "first_within", "keep_within_shares"]


def prefix_within(nbytes: torch.Tensor, budget: int) -> int:
    """Length of the longest prefix of ``nbytes`` (int Tensor(K,), bytes in herding order) whose sum is
    ``<= budget`` bytes."""
    return int((torch.cumsum(nbytes.long(), 0) <= budget).sum())  # cumsum of sizes >= 0: a prefix


def first_within(nbytes: torch.Tensor, budget: int) -> int:
    """Position of the first entry of ``nbytes`` (int Tensor(K,), herding order) that is ``<= budget``
    bytes on its own, or -1 if none is."""
    fits = (nbytes.long() <= budget).nonzero()
    return int(fits[0, 0]) if fits.numel() else -1


def keep_within_shares(nbytes: torch.Tensor, group: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """Which items to keep when every group (class) shrinks to its share, in one pass.

    Args:
        nbytes: int Tensor(N,), bytes of each item, items of a group in their herding order.
        group: int64 Tensor(N,), each item's group index in ``[0, G)``.
        share: int Tensor(G,), bytes each group may hold.
    Returns:
        bool Tensor(N,): per group the longest herding-order prefix within its share; a group whose
        first item alone exceeds the share keeps instead its first item that fits alone (nothing if no
        item fits).
    """
    nbytes, share = nbytes.long(), share.long()
    perm = torch.sort(group, stable=True).indices  # groups contiguous, herding order kept inside each
    g = group[perm]
    cum = torch.cumsum(nbytes[perm], 0)
    first = torch.ones_like(g, dtype=torch.bool)
    first[1:] = g[1:] != g[:-1]
    before = torch.cummax(torch.where(first, cum - nbytes[perm], torch.zeros_like(cum)), 0).values
    keep = torch.zeros_like(group, dtype=torch.bool)
    keep[perm] = cum - before <= share[g]
    kept = torch.zeros(share.numel(), dtype=torch.long).index_add_(0, group, keep.long())
    present = torch.zeros(share.numel(), dtype=torch.long).index_add_(0, group, torch.ones_like(group))
    for gi in ((kept == 0) & (present > 0)).nonzero().flatten().tolist():  # rare: a few groups at most
        items = (group == gi).nonzero().flatten()
        pos = first_within(nbytes[items], int(share[gi]))
        if pos >= 0:
            keep[items[pos]] = True
    return keep
