"""Wall-time accounting of CIM's own work (meta steps, box refreshes, memory builds) and of a memory's codec."""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from typing import Dict, Iterator

import torch

__all__ = ["timed", "codec_seconds", "codec_timed"]


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


def codec_seconds(memory) -> float:
    """Wall seconds ``memory`` has spent in its codec (methods marked :func:`codec_timed`) since it was made or
    loaded; not saved with it."""
    return memory.__dict__.get("_codec_seconds", 0.0)


def codec_timed(method):
    """Marks a memory method as codec work (encoding, decoding, compressing) for :func:`codec_seconds`; nested
    marked calls count once."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        outer = not self.__dict__.get("_codec_busy", False)
        start = time.perf_counter()
        self._codec_busy = True
        try:
            return method(self, *args, **kwargs)
        finally:
            if outer:
                self._codec_busy = False
                self._codec_seconds = codec_seconds(self) + time.perf_counter() - start
    return wrapper
