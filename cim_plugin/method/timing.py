"""Wall-time accounting of CIM's own work (meta steps, box refreshes, memory builds)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator

import torch


@contextmanager
def timed(seconds: Dict[str, float], calls: Dict[str, int], key: str, device="cpu") -> Iterator[None]:
    """Adds the wall seconds of the block to ``seconds[key]`` and one to ``calls[key]`` (CUDA work on
    ``device`` synchronised before and after)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    try:
        yield
    finally:
        sync()
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
        calls[key] = calls.get(key, 0) + 1
