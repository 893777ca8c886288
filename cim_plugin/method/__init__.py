"""CIM itself, framework-free: nothing here imports PyCIL (tests/test_boundary.py checks it).

- :class:`CIM` (``cim.py``): the object a training loop drives (``examples/plain_torch.py`` is a whole loop);
  its configuration keys and defaults are :data:`CIM_DEFAULTS` (``defaults.py``).
- ``memory/``: the byte-budgeted exemplar memories (:class:`CompressedMemory`, :class:`JpegMemory`) and the
  codec registry (:func:`get_codec`, :func:`codec_names`, :func:`make_memory`, :func:`load_memory`).
- ``masks/``: CAMs, boxes, the PAUs, the CIM branch and the bilevel meta step.
- ``codec/``: the codec ops (the raw CIM codec, JPEG streams), plain tensor functions.
- Modules: ``data.py`` (datasets of stored images and exemplars), ``network.py`` (how CIM sees a network),
  ``herding.py``, ``schedule.py``, ``rng.py``, ``timing.py``, ``replicas.py`` (data parallelism).
"""

from .cim import CIM, CIM_KEYS, BudgetTooSmall
from .data import StoredImages, TensorImages
from .defaults import CIM_DEFAULTS
from .herding import herding_order
from .masks import PAU, CIMBranch, cam_from_feature_maps, cam_to_boxes, meta_step
from .memory import (
                     BudgetExceededError,
                     Codec,
                     CompressedMemory,
                     JpegMemory,
                     codec_names,
                     get_codec,
                     load_memory,
                     make_memory,
                     memory_from_state,
)
from .network import GapClassifierView
from .replicas import Replicas

__all__ = [
    "CIM", "CIM_KEYS", "CIM_DEFAULTS", "BudgetTooSmall",
    "StoredImages", "TensorImages", "GapClassifierView",
    "CompressedMemory", "JpegMemory", "BudgetExceededError", "make_memory", "memory_from_state", "load_memory",
    "Codec", "get_codec", "codec_names",
    "CIMBranch", "PAU", "cam_from_feature_maps", "cam_to_boxes", "meta_step", "herding_order",
    "Replicas",
]
