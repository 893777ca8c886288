"""The memory budget of a run in bytes: what PyCIL's memory setting grants, the check that one exemplar
per class fits before any training, and the per-phase memory record of results.json."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
import torch

from ..config import ConfigError
from ..method.memory import get_codec, make_memory
from .constants import learner_modules
from .data import ImagePipeline
from .mixin import keeps_memory


def bytes_per_image(learner, idata) -> int:
    """Bytes of one uncompressed exemplar (uint8 HxWx3) of this dataset.

    Datasets of varying size (ImageNet, Food-101) count the training resolution 224x224.
    """
    size = getattr(idata, "image_size", None) if idata is not None else None
    if size is not None:
        return int(3 * size[0] * size[1])
    memory = getattr(learner, "_data_memory", None)
    if memory is not None and len(memory) and isinstance(memory, np.ndarray) and memory.dtype == np.uint8:
        return int(memory[0].nbytes)
    return 3 * 224 * 224


def memory_budget_bytes(config: Dict[str, Any], total_classes: int, image_bytes: int) -> int:
    """Bytes PyCIL's memory setting grants: memory_size images, or memory_per_class per class."""
    if config.get("fixed_memory"):
        return int(config["memory_per_class"]) * total_classes * image_bytes
    return int(config["memory_size"]) * image_bytes


def smallest_cim_exemplar(config: Dict[str, Any], data_manager) -> Tuple[int, int, Tuple[int, int], int]:
    """(bytes of one stored image, bytes of the cheapest exemplar, (H, W), bytes held once per memory).

    Priced by the memory this config asks for (``exemplar_codec``, ``jpeg_quality``, ``cim_mask``) on the
    image the memory stores: the first training item through the adapter's ImagePipeline (e.g. 224x224
    after ImageNet's Resize + CenterCrop). The cheapest exemplar is that image fully at low resolution
    (an empty box), or the whole image for ``"cim_mask": "full"``. A JPEG's size depends on the image, so
    for ``"jpeg"`` this is the first image's cost (the check catches budgets that are plainly too small);
    its shared header (the tables) is the last element. ``"jpeg_quality": "auto"`` is priced at the
    lowest quality it may choose.
    """
    image = ImagePipeline(data_manager).load(data_manager._train_data[0])  # uint8 (3, H, W)
    H, W = int(image.shape[-2]), int(image.shape[-1])
    keys = dict(config)
    codec = get_codec(keys.get("exemplar_codec", "raw"))
    if codec.quality_grid and keys.get(codec.quality_key) == "auto":
        keys[codec.quality_key] = min(codec.quality_grid)
    memory = make_memory(0, keys)
    box = [0, 0, W, H] if keys.get("cim_mask") == "full" else [0, 0, 0, 0]
    cheapest = int(memory.candidate_nbytes(image.unsqueeze(0), torch.tensor([box]))[0])
    return 3 * H * W, cheapest, (H, W), int(memory.shared_nbytes)


def _budget_error(setting: str, detail: str, key: str, need: int) -> ConfigError:
    return ConfigError(f"memory budget too small for one exemplar per class: {setting} {detail}; "
                       f'raise "{key}" to at least {need}')


def check_bic_holdout(config: Dict[str, Any], learner, data_manager) -> None:
    """ConfigError, before any training, when PyCIL's BiC would hold out no exemplar for bias correction.

    BiC keeps ``int(split_ratio * memory_size / known classes)`` exemplars per old class aside; with 0 its
    validation loader is empty and PyCIL stops at the first incremental phase (with or without CIM). Checked
    for the last phase, which has the most known classes."""
    if type(learner).__name__ not in ("BiC", "CIMBiC") or len(data_manager._increments) < 2:
        return
    ratio = next((float(m.split_ratio) for m in learner_modules(type(learner)) if hasattr(m, "split_ratio")), 0.1)
    known = sum(data_manager._increments[:-1])
    if int(ratio * int(config["memory_size"]) / known) >= 1:
        return
    need = None
    if ratio > 0:  # the smallest memory_size PyCIL's own expression accepts
        need = max(1, int(known / ratio))
        while int(ratio * need / known) < 1:
            need += 1
    raise ConfigError(f'BiC holds out int(split_ratio {ratio:g} x "memory_size" {config["memory_size"]} / {known} '
                      f"known classes) = 0 exemplars per old class for its bias correction in the last phase, and "
                      f"PyCIL's BiC cannot train on an empty validation set; raise \"memory_size\" to at least {need}"
                      if need else 'BiC needs "split_ratio" > 0')


def check_budget_fits(config: Dict[str, Any], learner, data_manager) -> None:
    """ConfigError, before any training, when one class's share of the memory cannot hold one exemplar.

    Checked for the last phase (all ``data_manager`` classes known: the smallest share). Baseline:
    PyCIL keeps memory_size // classes full images per class (fixed_memory: memory_per_class >= 1,
    checked with the config). CIM: the share memory_budget_bytes // classes must hold the cheapest
    exemplar (:func:`smallest_cim_exemplar`). Learners that keep no memory are not checked.
    """
    check_bic_holdout(config, learner, data_manager)
    if not keeps_memory(type(learner)) or len(data_manager._train_data) == 0:
        return
    classes = len(data_manager._class_order)
    fixed = bool(config.get("fixed_memory"))
    setting = (f'"memory_per_class" {config["memory_per_class"]} (fixed_memory)' if fixed
               else f'"memory_size" {config["memory_size"]} shared by {classes} classes')
    if not config.get("cim"):
        if not fixed and config["memory_size"] // classes < 1:
            raise _budget_error(setting, "leaves PyCIL memory_size // classes = 0 exemplars per class (the smallest "
                                "possible exemplar is a full image)", "memory_size", classes)
        return
    image_bytes, cheapest, (H, W), shared = smallest_cim_exemplar(config, data_manager)
    # a class's share less its part of what the memory holds once (as CIM.class_budget_bytes)
    share = memory_budget_bytes(config, classes, image_bytes) // classes - (-(-shared // classes))
    if share >= cheapest:
        return
    # the smallest setting whose share holds `cheapest` (and the shared bytes)
    per_class = cheapest + -(-shared // classes)
    key, need = ("memory_per_class", -(-per_class // image_bytes)) if fixed else (
        "memory_size", -(-classes * per_class // image_bytes))
    codec = get_codec(config.get("exemplar_codec", "raw"))
    what = (f"the whole {H}x{W} image" if config.get("cim_mask") == "full"
            else f"the {H}x{W} image kept only at 1/{config['compress_ratio']:g} resolution plus its box")
    what += codec.budget_note.format(quality=codec.quality(config), shared=shared)
    raise _budget_error(setting, f"gives each class {share} bytes, but the smallest possible exemplar, {what}, costs "
                        f"{cheapest} bytes (a full image: {image_bytes})", key, need)


def memory_report(learner, config, idata) -> Dict[str, Any]:
    """Exemplars held after a phase and the bytes they occupy (baseline: exemplars x image bytes)."""
    if hasattr(learner, "cim_memory_report"):
        return learner.cim_memory_report()
    targets = np.asarray(getattr(learner, "_targets_memory", np.array([])))
    image_bytes = bytes_per_image(learner, idata)
    counts = np.bincount(targets.astype(np.int64), minlength=learner._total_classes) if len(targets) else None
    return {
        "exemplars": int(len(targets)),
        "memory_bytes": int(len(targets)) * image_bytes,
        "exemplars_per_class": None
        if counts is None
        else {"min": int(counts.min()), "mean": float(counts.mean()), "max": int(counts.max())},
        "exemplars_per_class_counts": None if counts is None else [int(c) for c in counts],
    }
