"""Which memory a configuration asks for (``exemplar_codec``, ``jpeg_quality``, ``cim_mask``) and which
one a saved state holds."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional, Union

import torch

from .jpeg_memory import JpegMemory
from .memory import CompressedMemory

__all__ = ["make_memory", "memory_from_state", "load_memory", "augment_compressor", "decoding_on"]


def make_memory(budget_bytes: int, config: Mapping[str, Any], device="cpu") -> CompressedMemory:
    """An empty memory for CIM keys ``config`` (compress_ratio, exemplar_codec, jpeg_quality, cim_mask).

    Mask mode "full" stores whole-image boxes only, so its boxes are implicit (not counted)."""
    ratio = config.get("compress_ratio", 4.0)
    implicit = config.get("cim_mask") == "full"
    codec = config.get("exemplar_codec", "raw")
    if codec == "raw":
        return CompressedMemory(budget_bytes, ratio, implicit_boxes=implicit)
    if codec == "jpeg":
        return JpegMemory(budget_bytes, ratio, implicit_boxes=implicit, quality=config.get("jpeg_quality", 75),
                          device=device)
    raise ValueError(f"unknown exemplar codec {codec!r} (expected 'raw' or 'jpeg')")


def decoding_on(memory: CompressedMemory, device) -> CompressedMemory:
    """``memory`` decoding on ``device`` (a JPEG memory's twin sharing its bytes; the raw codec decodes on the
    CPU wherever it runs, so a raw memory is returned as it is)."""
    return memory.decoding_on(device) if isinstance(memory, JpegMemory) else memory


def memory_from_state(state: Mapping[str, Any], device="cpu") -> CompressedMemory:
    """The memory a :meth:`CompressedMemory.state_dict` (of any codec) describes."""
    codec = state.get("codec", "raw") if isinstance(state, Mapping) else "raw"
    memory = JpegMemory(0, device=device) if codec == "jpeg" else CompressedMemory(0)
    memory.load_state_dict(dict(state))
    return memory


def load_memory(path: Union[str, os.PathLike], device="cpu") -> CompressedMemory:
    """Read a memory file written by :meth:`CompressedMemory.save`, whatever its codec."""
    return memory_from_state(torch.load(os.fspath(path), map_location="cpu", weights_only=True), device)


def augment_compressor(config: Mapping[str, Any], memory: Optional[CompressedMemory] = None
                       ) -> Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """What CIM's compression augmentation applies to a new-class image: ``f(uint8 (B, 3, H, W), boxes (B, 4))
    -> uint8 (B, 3, H, W)``, the memory's own codec on the CPU (loader workers), JPEG at its quality included,
    so new-class images are trained on as they would be replayed. None (the raw codec) for "raw", for mask
    mode "full" unless ``"codec_augment_prob"`` > 0 (MRDC trains on its new data as it is), and for
    ``"jpeg_quality": "auto"`` until a first ``memory`` fixes the quality."""
    if config.get("exemplar_codec", "raw") == "raw" or (
            config.get("cim_mask") == "full" and not config.get("codec_augment_prob", 0.0)):
        return None
    quality = getattr(memory, "quality", None) if memory is not None else config.get("jpeg_quality", 75)
    if quality is None or quality == "auto":
        return None
    return make_memory(0, {**config, "jpeg_quality": quality}, "cpu").compressed
