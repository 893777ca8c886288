"""What code older than this package wrote, read here and only here: one module for the history.

* **Memory state version 1** (a full low-res image per exemplar, key ``lowres_off``): its layout and the
  conversion to the current format (frames: only the low-res pixels that a decoded pixel outside the box
  reads). Decoded images are unchanged by the conversion. ``CompressedMemory.load_state_dict`` calls it.
* **Checkpoints written before CIM became one object** restored its parts as learner attributes
  (``_cim_memory``, ...): :func:`adopt_legacy_state` hands them to the CIM object.
* **Class paths that moved**: a checkpoint pickles the classes of the objects it holds (the CIM object, its
  memory, branch, ...) under the module paths of the code that wrote it; :func:`load_checkpoint` finds them
  where they live now (:data:`MOVED_MODULES`: the flat ``cim_plugin.method`` modules before the memory,
  masks and codec sub-packages, and the names from before the split into ``method/``, ``pycil/``, ``bench/``).
"""

from __future__ import annotations

import importlib
import os
import pickle
import types
from typing import Any, Dict, MutableMapping, Tuple, Union

import torch

from ..codec.raw import frame_from_lowres, frame_npixels, lowres_size
from .packing import group_by_size, packed_ranges

__all__ = ["lowres_len_v1", "convert_v1", "LEGACY_CIM_ATTRIBUTES", "adopt_legacy_state", "MOVED_MODULES",
           "LegacyUnpickler", "load_checkpoint"]

_M = "cim_plugin.method."
_P = "cim_plugin.pycil.learners."
#: old module -> the module(s) that now hold its names (tried in order). Strings only: a module is imported
#: when a file names it, as unpickling does anyway.
MOVED_MODULES: Dict[str, Tuple[str, ...]] = {
    # method/ before its sub-packages
    **{_M + name: (_M + "masks." + name,) for name in ("cam", "boxes", "pau", "cim_branch", "bilevel")},
    _M + "codec": (_M + "codec.raw",), _M + "jpeg": (_M + "codec.jpeg",),
    _M + "memory": (_M + "memory.raw",), _M + "jpeg_memory": (_M + "memory.jpeg",),
    _M + "jpeg_auto": (_M + "memory.jpeg",), _M + "memory_kinds": (_M + "memory.registry",),
    _M + "memory_state": (_M + "memory.state",), _M + "memory_v1": (_M + "memory.legacy",),
    **{_M + name: (_M + "memory." + name,) for name in ("packing", "fit", "records")},
    # cim_plugin/ before the split into method/, pycil/ and bench/
    **{"cim_plugin." + name: (_M + "masks." + name,) for name in ("cam", "boxes", "pau", "cim_branch", "bilevel")},
    "cim_plugin.codec": (_M + "codec.raw",), "cim_plugin.memory": (_M + "memory.raw",),
    "cim_plugin.herding": (_M + "herding",), "cim_plugin.rng": (_M + "rng",),
    **{"cim_plugin." + name: ("cim_plugin.pycil." + name,) for name in ("runner", "cli", "checkpoint")},
    "cim_plugin.adapter": (_M + "data", _M + "network", _M + "cim", "cim_plugin.pycil.network",
                           "cim_plugin.pycil.data", "cim_plugin.pycil.mixin"),
    "cim_plugin.plots": ("cim_plugin.bench.figures",), "cim_plugin.bench.metrics": ("cim_plugin.metrics",),
    "cim_plugin.benchmark": ("cim_plugin.bench.layout", "cim_plugin.bench.plan", "cim_plugin.bench.execute",
                             "cim_plugin.bench.command", "cim_plugin.bench.tables", "cim_plugin.bench.sizes",
                             "cim_plugin.bench.report"),
    "cim_plugin.bench.runs": ("cim_plugin.bench.layout", "cim_plugin.bench.variants", "cim_plugin.bench.manifest",
                              "cim_plugin.bench.plan", "cim_plugin.bench.execute", "cim_plugin.bench.command"),
    # pycil/ before one module per learner (pycil/learners/)
    **{prefix + name: (_P + "der_p." + name,) for prefix in ("cim_plugin.", "cim_plugin.pycil.")
       for name in ("channel_masks", "pruning")},
    **{prefix + "der_p": (_P + "der_p.learner",) for prefix in ("cim_plugin.", "cim_plugin.pycil.")},
    **{prefix + "inner_losses": (_P + "losses", _P[:-1]) for prefix in ("cim_plugin.", "cim_plugin.pycil.")},
    "cim_plugin.pycil.lucir": (_P + "lucir.learner",), "cim_plugin.pycil.lucir_losses": (_P + "lucir.losses",),
    "cim_plugin.pycil.bic_hooks": (_P + "bic",), "cim_plugin.pycil.support": (_P[:-1],),
}
#: the CIM object's parts that such old checkpoints saved as learner attributes ``_cim_<name>``
LEGACY_CIM_ATTRIBUTES = ("memory", "branch", "branch_task", "generator", "image_bytes", "sources", "cams")


def adopt_legacy_state(cim: Any, attributes: MutableMapping[str, Any]) -> None:
    """Move the ``_cim_<name>`` entries of ``attributes`` (a learner's ``vars``) onto ``cim`` as ``<name>``,
    so a run from a checkpoint written before CIM became one object resumes as it would have."""
    for name in LEGACY_CIM_ATTRIBUTES:
        if f"_cim_{name}" in attributes:
            setattr(cim, name, attributes.pop(f"_cim_{name}"))


class LegacyUnpickler(pickle.Unpickler):
    """An Unpickler that finds a class (or function) saved under a moved module path where it lives now."""

    def find_class(self, module: str, name: str):
        for target in MOVED_MODULES.get(module, ()):
            found = getattr(importlib.import_module(target), name, None)
            if found is not None:
                return found
        return super().find_class(module, name)


# torch.load's ``pickle_module``: the pickle module with the Unpickler above
_legacy_pickle = types.ModuleType("cim_plugin_legacy_pickle")
_legacy_pickle.__dict__.update({k: v for k, v in vars(pickle).items() if not k.startswith("__")})
_legacy_pickle.Unpickler = LegacyUnpickler


def load_checkpoint(path: Union[str, os.PathLike]) -> Any:
    """``torch.load`` of a checkpoint (full pickles, CPU) through :class:`LegacyUnpickler`."""
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_legacy_pickle)


def lowres_len_v1(memory) -> torch.Tensor:
    """Version-1 layout: bytes of each exemplar's full low-res image (3*h*w), int64 Tensor(N,)."""
    out = torch.zeros(len(memory), dtype=torch.long)
    for (H, W), pos in group_by_size(memory._sizes):
        h, w = lowres_size(H, W, memory.compress_ratio)
        out[pos] = 3 * h * w
    return out


def convert_v1(memory) -> None:
    """Replace version-1 full low-res images (CHW, at ``_frame_off``) by their frames."""
    frames = [torch.zeros(0, dtype=torch.uint8)] * len(memory)
    fr_len = torch.zeros(len(memory), dtype=torch.long)
    for (H, W), pos in group_by_size(memory._sizes):
        h, w = lowres_size(H, W, memory.compress_ratio)
        lowres = memory._payload[packed_ranges(memory._frame_off[pos], torch.full((pos.numel(),), 3 * h * w))]
        boxes = memory._boxes[pos].long()
        frame = frame_from_lowres(lowres.view(-1, 3, h, w), boxes, (H, W), memory.compress_ratio)
        fr_len[pos] = 3 * frame_npixels(boxes, H, W, memory.compress_ratio)
        for p, f in zip(pos.tolist(), frame.split(fr_len[pos].tolist())):
            frames[p] = f
    cr_len = memory._crop_len()
    crops = memory._payload[packed_ranges(memory._crop_off, cr_len)]
    memory._payload = torch.cat(frames + [crops])
    memory._frame_off = torch.cumsum(fr_len, 0) - fr_len
    memory._crop_off = int(fr_len.sum()) + torch.cumsum(cr_len, 0) - cr_len
