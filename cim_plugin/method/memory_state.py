"""Checks of a saved memory state (the parts every codec shares) and the atomic write of a file."""

from __future__ import annotations

import os
import tempfile
from typing import Dict, Tuple, Union

import torch

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


def atomic_save(obj, path: Union[str, os.PathLike]) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temporary file in the same folder + os.replace)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".cim_memory.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
