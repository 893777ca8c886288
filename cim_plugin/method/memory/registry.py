"""The exemplar codecs, one registry: which memory a configuration asks for (``exemplar_codec``, its quality
knob, ``cim_mask``) and which one a saved state holds.

Each codec is one file of this package that defines its memory class and ends with ``register(Codec(...))``:
``raw.py`` (:class:`CompressedMemory`, uint8 pixels) and ``jpeg.py`` (:class:`JpegMemory`). Adding a codec is
one such file plus its import in ``memory/__init__.py`` (which registers it). Everything that depends on the
codec (config validation, CIM, the budget check, the benchmark's variant names) reads the :class:`Codec`
record instead of testing its name.

This module imports no memory class (the codec files import it), so every memory can use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

__all__ = ["Codec", "register", "get_codec", "codec_names", "make_memory", "memory_from_state", "load_memory",
           "decoding_on", "augment_compressor"]


@dataclass(frozen=True)
class Codec:
    """One exemplar codec.

    Attributes:
        name: the value of ``"exemplar_codec"`` that selects it.
        description: what it stores, one phrase (config errors list it).
        make: ``(budget_bytes, compress_ratio, implicit_boxes, config, device) -> memory``, the memory a
            configuration asks for.
        empty: ``device -> memory``, an empty memory to load one of its states into.
        quality_key: the configuration key of its quality knob (``"jpeg_quality"``), or None if it has none.
        quality_default: that knob's value when the key is absent.
        quality_grid: the qualities ``"auto"`` chooses among (empty: no ``"auto"``).
        choose_quality: the ``"auto"`` choice, as :func:`cim_plugin.method.memory.jpeg.choose_quality`.
        augments: CIM's compression augmentation trains new-class images as this codec would replay them.
        variant_suffix: appended to a benchmark variant's name (``"cim-full" + "-jpeg"``).
        budget_note: appended, formatted with ``quality`` and ``shared`` (bytes held once per memory), to the
            description of the smallest exemplar when a budget is too small.
    """

    name: str
    description: str
    make: Callable[..., Any]
    empty: Callable[[Any], Any]
    quality_key: Optional[str] = None
    quality_default: Any = None
    quality_grid: Tuple[int, ...] = ()
    choose_quality: Optional[Callable[..., Dict]] = None
    augments: bool = False
    variant_suffix: str = ""
    budget_note: str = ""

    @property
    def has_quality(self) -> bool:
        """Whether the codec has a quality knob (``quality_key``)."""
        return self.quality_key is not None

    def quality(self, config: Mapping[str, Any]) -> Any:
        """The quality ``config`` asks for (None for a codec without a knob)."""
        return config.get(self.quality_key, self.quality_default) if self.has_quality else None

    def auto_quality(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` asks for the ``"auto"`` quality (chosen on the first phase's model)."""
        return self.choose_quality is not None and self.quality(config) == "auto"


_CODECS: Dict[str, Codec] = {}


def register(codec: Codec) -> Codec:
    """Add ``codec`` to the registry (its name must be new); returns it."""
    if codec.name in _CODECS:
        raise ValueError(f"exemplar codec {codec.name!r} is already registered")
    _CODECS[codec.name] = codec
    return codec


def codec_names() -> Tuple[str, ...]:
    """The registered codecs' names, in registration order (``("raw", "jpeg")``)."""
    return tuple(_CODECS)


def get_codec(name: str) -> Codec:
    """The codec called ``name``; ValueError naming the registered ones otherwise."""
    try:
        return _CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown exemplar codec {name!r} (expected "
                         f"{' or '.join(repr(n) for n in _CODECS)})") from None


def make_memory(budget_bytes: int, config: Mapping[str, Any], device="cpu"):
    """The empty memory ``config`` asks for (keys compress_ratio, exemplar_codec, its quality, cim_mask).

    Mask mode "full" stores whole-image boxes only, so its boxes are implicit (not counted)."""
    ratio = config.get("compress_ratio", 4.0)
    implicit = config.get("cim_mask") == "full"
    return get_codec(config.get("exemplar_codec", "raw")).make(budget_bytes, ratio, implicit, config, device)


def decoding_on(memory, device):
    """``memory`` decoding on ``device`` (a JPEG memory's twin sharing its bytes; the raw codec decodes on the
    CPU wherever it runs, so a raw memory is returned as it is)."""
    return memory if memory is None else memory.decoding_on(device)


def memory_from_state(state: Mapping[str, Any], device="cpu"):
    """The memory a :meth:`CompressedMemory.state_dict` (of any codec) describes."""
    name = state.get("codec", "raw") if isinstance(state, Mapping) else "raw"
    memory = (_CODECS[name] if name in _CODECS else _CODECS["raw"]).empty(device)
    memory.load_state_dict(dict(state))
    return memory


def load_memory(path: Union[str, os.PathLike], device="cpu"):
    """Read a memory file written by :meth:`CompressedMemory.save`, whatever its codec."""
    return memory_from_state(torch.load(os.fspath(path), map_location="cpu", weights_only=True), device)


def augment_compressor(config: Mapping[str, Any], memory=None
                       ) -> Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """What CIM's compression augmentation applies to a new-class image: ``f(uint8 (B, 3, H, W), boxes (B, 4))
    -> uint8 (B, 3, H, W)``, the memory's own codec on the CPU (loader workers), JPEG at its quality included,
    so new-class images are trained on as they would be replayed. None for a codec that does not augment
    (the raw codec), for mask mode "full" unless ``"codec_augment_prob"`` > 0 (MRDC trains on its new data as
    it is), and for an ``"auto"`` quality until a first ``memory`` fixes it."""
    codec = get_codec(config.get("exemplar_codec", "raw"))
    if not codec.augments or (config.get("cim_mask") == "full" and not config.get("codec_augment_prob", 0.0)):
        return None
    if codec.has_quality:
        quality = getattr(memory, "quality", None) if memory is not None else codec.quality(config)
        if quality is None or quality == "auto":
            return None
        config = {**config, codec.quality_key: quality}
    return make_memory(0, config, "cpu").compressed
