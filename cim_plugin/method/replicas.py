"""CIM under data parallelism: what keeps every replica's CIM state identical, with torch.distributed only.

One process per device runs the same CIM object (same seed, so the same meta-batch draws). A meta step is
shared out: each replica takes every ``world``-th item of the inner and of the outer half of the meta batch
(:meth:`Replicas.share`), and φ's gradients are averaged over the replicas (:meth:`Replicas.average`)
before the clip and the Adam step, so φ takes the same step everywhere. Objects such as a memory's
``state_dict`` are sent from one replica to all (:meth:`Replicas.broadcast`), and :func:`digest` names
the content of a state (tensors' bytes, numbers, strings), to check that replicas agree.

Nothing here knows a CIL framework; a host makes one ``Replicas`` per process and gives it to
``CIM.replica``. Without one (``None``) CIM runs exactly as in one process.
"""

from __future__ import annotations

import hashlib
from typing import Any, List, Optional

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Replicas", "digest"]


class Replicas:
    """This process's place among ``world`` data-parallel replicas (an initialised process group).

    Args:
        rank: this process's rank in ``group`` (0 .. world-1).
        world: number of replicas.
        group: the torch.distributed process group (None: the default group).
    """

    def __init__(self, rank: int, world: int, group: Optional[Any] = None):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        self.rank, self.world, self.group = int(rank), int(world), group

    def share(self, indices: torch.Tensor) -> torch.Tensor:
        """This replica's part of ``indices`` (N,): every ``world``-th item from ``rank`` on; all of them when
        N < world (then every replica computes the same batch and the average changes nothing)."""
        return indices if len(indices) < self.world else indices[self.rank :: self.world]

    def average(self, tensors: List[torch.Tensor]) -> None:
        """Replace each tensor (any shapes, one dtype and device) by its mean over the replicas, in place
        (one all-reduce of the flattened tensors)."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of replica ``src`` (pickled: tensors travel as bytes), returned on every replica."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def broadcast_tensors(self, tensors: List[torch.Tensor], src: int = 0) -> None:
        """Overwrite each tensor with replica ``src``'s values, in place (e.g. BatchNorm running statistics)."""
        for t in tensors:
            dist.broadcast(t.data, src=src, group=self.group)


def _feed(h, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        h.update(f"A{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes() if value.dtype != object else repr(value.tolist()).encode())
    elif isinstance(value, dict):
        h.update(b"D")
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(repr(value).encode())


def digest(value: Any) -> str:
    """SHA-256 (hex) of a state: tensors and arrays by dtype, shape and bytes; dicts in key order;
    anything else by ``repr``. Equal digests mean equal contents."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()
