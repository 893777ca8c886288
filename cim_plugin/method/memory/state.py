"""Checks of a saved memory state (the parts every codec shares) and its atomic write to a file."""

from __future__ import annotations

import os
from typing import Dict, Tuple, Union

import torch

from ...io import atomic_write

__all__ = ["check_state", "save_state"]

Spec = Dict[str, Tuple[torch.dtype, int]]  # key -> (dtype, number of dimensions)


def check_state(state, versions: Tuple[int, ...], extra: Spec) -> Tuple[int, str]:
    """Validate the keys, dtypes and lengths of a CompressedMemory state dict.

    Args:
        state: the dict (as from ``state_dict()``).
        versions: the state versions the caller reads.
        extra: tensors of a codec besides the shared ones, each one entry per exemplar (first dim N).
    Returns:
        (version, key of the frame offsets: ``lowres_off`` in version 1, else ``frame_off``).
    Raises ValueError naming what is wrong.
    """
    if not isinstance(state, dict) or "version" not in state:
        raise ValueError("not a CompressedMemory state dict: missing 'version'")
    version = state["version"]
    if version not in versions:
        raise ValueError(f"unsupported CompressedMemory state version {version!r} (this code reads "
                         f"{' and '.join(map(str, versions))})")
    off_key = "lowres_off" if version == 1 else "frame_off"
    spec: Spec = {"payload": (torch.uint8, 1), "boxes": (torch.int16, 2), "labels": (torch.long, 1),
                  "sizes": (torch.long, 2), off_key: (torch.long, 1), "crop_off": (torch.long, 1), **extra}
    keys = {"version", "budget_bytes", "compress_ratio"} | set(spec)
    if not keys <= set(state):
        raise ValueError(f"not a CompressedMemory state dict: missing {sorted(keys - set(state))}")
    for k, (dt, nd) in spec.items():
        t = state[k]
        if not isinstance(t, torch.Tensor) or t.dtype != dt or t.dim() != nd:
            raise ValueError(f"state[{k!r}] must be a {nd}-D {dt} tensor, got {getattr(t, 'dtype', type(t))}")
    n = state["labels"].numel()
    per_exemplar = [off_key, "crop_off"] + list(extra)
    if not (state["boxes"].shape == (n, 4) and state["sizes"].shape == (n, 2)
            and all(state[k].shape[0] == n for k in per_exemplar)):
        raise ValueError("state tensors disagree on the number of exemplars")
    return version, off_key


def save_state(state: dict, path: Union[str, os.PathLike]) -> None:
    """``torch.save(state)`` to ``path`` atomically (:func:`cim_plugin.io.atomic_write`)."""
    atomic_write(os.fspath(path), lambda handle: torch.save(state, handle))
