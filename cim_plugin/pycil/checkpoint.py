"""Per-phase checkpoints of a run: the learner's state, RNG states and results so far.

A checkpoint is written atomically after every finished phase, so a run killed mid-phase resumes
from the last finished phase and, because the RNG states are restored too, ends with the same
numbers as an uninterrupted run (on the CPU; on CUDA only up to the GPU's non-deterministic kernels, e.g. the
backward of bilinear ``interpolate`` that CIM's masks go through, which sums in a different order each time: a
resumed CUDA run continues the same run, but need not end with the bit-identical numbers).

Where a learner runs is the resuming process's business, not the checkpoint's: ``_device`` and
``_multiple_gpus`` (PyCIL's placement: process 0's ``cuda:0`` under torchrun, a GPU on a machine that may have
none) are never restored, and CUDA random states are restored for the GPUs present.
"""

from __future__ import annotations

import logging
import pickle
import random
import types
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from ..io import atomic_write
from ..method.memory.legacy import load_checkpoint

log = logging.getLogger("cim_plugin")

CHECKPOINT = "checkpoint.pt"

# Attributes a learner rebuilds itself (loaders, datasets, data managers) are not saved.
_SKIP_TYPE_NAMES = {"DataLoader", "DataManager", "DataManagerProxy", "ImagePipeline", "CompressAugmentDataset",
                    "DummyDataset", "ConcatDataset", "Concat", "ExemplarDataset", "EpochHookLoader",
                    "EpochShardedLoader"}
# Where the learner runs: set by the resuming process from its own config (and torchrun's LOCAL_RANK).
PLACEMENT = ("_device", "_multiple_gpus")


class _GeneratorState:
    """A picklable stand-in for a torch.Generator (its device and state)."""

    def __init__(self, gen: torch.Generator):
        self.device = str(gen.device)
        self.state = gen.get_state()

    def restore(self) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.set_state(self.state)
        return gen


def _saveable(value: Any) -> bool:
    if isinstance(value, (types.FunctionType, types.MethodType, types.LambdaType)):
        return False
    return type(value).__name__ not in _SKIP_TYPE_NAMES


def learner_state(learner) -> Dict[str, Any]:
    """The learner's attributes worth saving (networks, memory, counters, the CIM branch...)."""
    state = {}
    for key, value in vars(learner).items():
        if not _saveable(value):
            continue
        state[key] = _GeneratorState(value) if isinstance(value, torch.Generator) else value
    return state


def restore_learner(learner, state: Dict[str, Any]) -> None:
    """Set the saved attributes on a freshly built learner, except its placement (``PLACEMENT``): the
    learner keeps the device this process chose, whatever device the checkpoint was written on."""
    for key, value in state.items():
        if key in PLACEMENT:
            continue
        setattr(learner, key, value.restore() if isinstance(value, _GeneratorState) else value)


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        restore_cuda_rng(state["cuda"])


def restore_cuda_rng(states) -> None:
    """The saved CUDA generator states, one per GPU present (``torch.cuda.set_rng_state_all`` fails when a
    job moved to a node with fewer GPUs than the one that wrote the checkpoint); a count mismatch is logged."""
    present = torch.cuda.device_count()
    if len(states) != present:
        log.warning("the checkpoint holds random states of %d GPU(s), this machine has %d: restoring the first "
                    "%d (the random streams of the others start afresh)", len(states), present,
                    min(len(states), present))
    for index, state in enumerate(list(states)[:present]):
        torch.cuda.set_rng_state(state, index)


def save(path: Path, payload: Dict[str, Any]) -> None:
    """torch.save atomically (:func:`cim_plugin.io.atomic_write`: never a half-written file)."""
    atomic_write(path, lambda handle: torch.save(payload, handle, pickle_protocol=pickle.HIGHEST_PROTOCOL))


def load(path: Path) -> Dict[str, Any]:
    """The checkpoint at `path` (classes saved under module paths that have since moved are found where they
    live now: :func:`cim_plugin.method.memory.legacy.load_checkpoint`)."""
    return load_checkpoint(path)
