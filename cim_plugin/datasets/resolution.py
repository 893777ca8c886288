"""Folder datasets at one chosen resolution: every image decoded and resized once, held in memory.

PyCIL opens, decodes and resizes each photo of a path dataset at every epoch. For a run at a chosen
resolution S (config key ``"resolution"``) the plug-in instead decodes every image once, resizes its
shorter side to S (antialiased bilinear) and centre-crops S x S, and keeps the result as one uint8
array (N, S, S, 3): an in-memory dataset like CIFAR, with ``use_path`` False. The arrays are cached on
disk (``"resolution_cache"``, default ``~/.cache/cim_plugin/folders``, false to turn it off), keyed by
the file list, sizes and modification times and by S, so the benchmark's runs decode the photos once.

Transforms at resolution S (the same at every S, so a resolution sweep changes nothing but S):
training ``RandomCrop(S, padding=S // 8)`` + horizontal flip (as CIFAR and the plug-in's synthetic
data), test the stored S x S image itself.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torchvision import transforms

from ..io import atomic_write_bytes
from .base import DatasetLayoutError

__all__ = ["RESOLUTION_KEYS", "ResolutionOptions", "decode_at", "resolution_options", "set_resolution_transforms"]

#: config keys read by every folder dataset (see :func:`resolution_options`)
RESOLUTION_KEYS = ("resolution", "resolution_upsample", "resolution_cache", "train_per_class", "test_per_class")
_DEFAULT_CACHE = os.path.join("~", ".cache", "cim_plugin", "folders")
_MAX_RESOLUTION = 1024


class ResolutionOptions:
    """The resolution keys of one config, checked (see :func:`resolution_options`)."""

    def __init__(self, size: Optional[int], upsample: bool, cache: Optional[str],
                 train_per_class: Optional[int], test_per_class: Optional[int]) -> None:
        self.size, self.upsample, self.cache = size, upsample, cache
        self.train_per_class, self.test_per_class = train_per_class, test_per_class

    def __repr__(self) -> str:
        return (f"ResolutionOptions(size={self.size}, upsample={self.upsample}, cache={self.cache!r}, "
                f"train_per_class={self.train_per_class}, test_per_class={self.test_per_class})")


def _positive_int(options: Dict[str, Any], key: str, hint: str) -> Optional[int]:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'config key "{key}" must be a positive integer ({hint}), got {value!r}; '
                         f'write e.g. "{key}": 64, or leave the key out')
    return int(value)


def resolution_options(options: Dict[str, Any]) -> ResolutionOptions:
    """Read and check the keys of :data:`RESOLUTION_KEYS` from a run config.

    - ``"resolution"``: S, the side in pixels of the square training and test images (default: none,
      PyCIL's own 224 px transforms on the files, read at every epoch); at most 1024.
    - ``"resolution_upsample"``: false makes a stored image smaller than S an error (default true).
    - ``"resolution_cache"``: folder of the decoded arrays, or false for none (default ~/.cache/cim_plugin/folders).
    - ``"train_per_class"`` / ``"test_per_class"``: keep only the first N images of each class (file names in
      sorted order), to fit a CPU budget (default: all). Both need ``"resolution"``.
    Raises ValueError naming the key, what it expects and how to fix it.
    """
    size = _positive_int(options, "resolution", "the side of the square images in pixels")
    if size is not None and size > _MAX_RESOLUTION:
        raise ValueError(f'config key "resolution" must be at most {_MAX_RESOLUTION} pixels, got {size}; '
                         f"leave the key out to train on the files at PyCIL's own 224 px transforms")
    upsample = options.get("resolution_upsample", True)
    if not isinstance(upsample, bool):
        raise ValueError(f'config key "resolution_upsample" must be true or false, got {upsample!r}')
    cache = options.get("resolution_cache", _DEFAULT_CACHE)
    if cache is False or cache is None:
        cache = None
    elif not isinstance(cache, (str, os.PathLike)) or cache is True:
        raise ValueError(f'config key "resolution_cache" must be a folder path or false, got {cache!r}')
    else:
        cache = os.path.abspath(os.path.expanduser(os.fspath(cache)))
    train_n = _positive_int(options, "train_per_class", "training images kept per class")
    test_n = _positive_int(options, "test_per_class", "test images kept per class")
    if size is None:
        given = [k for k in RESOLUTION_KEYS[1:] if k in options and k != "resolution_cache"]
        if given:
            raise ValueError(f"config key(s) {given} need \"resolution\" (the images are read at one size only then); "
                             f'add e.g. "resolution": 112, or remove them')
    return ResolutionOptions(size, upsample, cache, train_n, test_n)


def set_resolution_transforms(idata, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
    """Training and test transforms of an in-memory S x S dataset (see the module doc)."""
    idata.train_trsf = [transforms.RandomCrop(size, padding=size // 8), transforms.RandomHorizontalFlip()]
    idata.test_trsf = []
    idata.common_trsf = [transforms.ToTensor(), transforms.Normalize(mean=tuple(mean), std=tuple(std))]


def keep_first_per_class(paths: np.ndarray, targets: np.ndarray, per_class: Optional[int]) -> np.ndarray:
    """Indices of the first ``per_class`` items of each class, in their order (all when None)."""
    if per_class is None:
        return np.arange(len(targets))
    order = np.argsort(targets, kind="stable")
    sorted_t = targets[order]
    first = np.searchsorted(sorted_t, sorted_t, side="left")
    rank = np.arange(len(sorted_t)) - first
    return np.sort(order[rank < per_class])


def _load_one(path: str, size: int, upsample: bool) -> Tuple[np.ndarray, Tuple[int, int]]:
    with Image.open(path) as im:
        original = im.size
        if min(original) > 2 * size:  # JPEG: decode directly at a reduced scale, at least 2x the target
            im.draft("RGB", (2 * size, 2 * size))
        img = im.convert("RGB")
    w, h = img.size
    if not upsample and min(original) < size:
        return np.zeros((0,), np.uint8), original
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8), original


def _cache_key(paths: Sequence[str], size: int) -> str:
    digest = hashlib.sha256(f"cim-plugin-folders/1 {size}\n".encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def decode_at(paths: Sequence[str], size: int, upsample: bool = True, cache: Optional[str] = None,
              threads: Optional[int] = None) -> np.ndarray:
    """Images at ``paths`` as uint8 (N, size, size, 3): shorter side resized to ``size``, centre crop.

    With ``upsample`` False, an image whose shorter side is below ``size`` is a DatasetLayoutError naming it.
    With ``cache`` (a folder), the array is read from / written to ``cache/<key>_<size>px.npy``.
    """
    paths = [os.fspath(p) for p in paths]
    target = None
    if cache is not None and paths:
        target = os.path.join(cache, f"{_cache_key(paths, size)}_{size}px.npy")
        if os.path.isfile(target):
            try:
                cached = np.load(target, mmap_mode="r")
                if cached.shape == (len(paths), size, size, 3) and cached.dtype == np.uint8:
                    return np.ascontiguousarray(cached)
            except (OSError, ValueError):
                pass  # a damaged cache file is rebuilt below
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    workers = threads or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding and resizing
        for i, (img, original) in enumerate(pool.map(lambda p: _load_one(p, size, upsample), paths, chunksize=64)):
            if img.size == 0:
                raise DatasetLayoutError(
                    f"{paths[i]} is {original[0]}x{original[1]} px, smaller than \"resolution\" {size} while "
                    f'"resolution_upsample" is false; lower "resolution" to at most {min(original)} or set '
                    f'"resolution_upsample": true')
            out[i] = img
    if target is not None:
        try:
            os.makedirs(cache, exist_ok=True)
            buf = io.BytesIO()
            np.save(buf, out)
            atomic_write_bytes(target, buf.getvalue())
        except OSError:
            pass  # a cache that cannot be written only costs the next run a decode
    return out
