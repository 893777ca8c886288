"""The byte-budgeted exemplar memory and its codecs.

- :class:`CompressedMemory` (``raw.py``): exemplars as the real bytes of the raw CIM codec (the "raw" codec);
  :class:`JpegMemory` (``jpeg.py``): as JPEG streams (the "jpeg" codec, with the ``"auto"`` quality).
- The codec registry (``registry.py``): :class:`Codec`, :func:`get_codec`, :func:`codec_names`, and the memory a
  configuration asks for (:func:`make_memory`) or a saved state holds (:func:`memory_from_state`,
  :func:`load_memory`). A new codec is one file registering its :class:`Codec`, imported below.
- Which exemplars fit a class's share (``fit.py``), the payload's index helpers (``packing.py``), a state's
  checks and atomic save (``state.py``), what the stored exemplars give the host (``records.py``), and what
  older code wrote (``legacy.py``).
"""

from .jpeg import JpegMemory, choose_quality  # registers the "jpeg" codec
from .raw import BudgetExceededError, CompressedMemory  # registers the "raw" codec
from .registry import (
                       Codec,
                       augment_compressor,
                       codec_names,
                       decoding_on,
                       get_codec,
                       load_memory,
                       make_memory,
                       memory_from_state,
                       register,
)

__all__ = [
    "CompressedMemory", "JpegMemory", "BudgetExceededError",
    "Codec", "register", "get_codec", "codec_names",
    "make_memory", "memory_from_state", "load_memory", "decoding_on", "augment_compressor", "choose_quality",
]
