"""Keeping the host's random streams as they were: CIM's own work (meta batches drawn through the
training transforms, box refreshes, memory building) must not shift the host learner's shuffling and
augmentation, so that a CIM run and its baseline with the same seed see the same random numbers
(common random numbers: their paired difference then measures CIM, not a different draw)."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

__all__ = ["random_streams_untouched"]


@contextmanager
def random_streams_untouched() -> Iterator[None]:
    """Runs the block, then puts back the states of Python's `random`, NumPy's global generator, torch's
    CPU generator and every initialised CUDA generator (also when the block raises)."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
