"""What every plug-in dataset object shares: the error type, the attributes PyCIL reads, option parsing.

A dataset object ("idata", PyCIL's word) is built cheaply from the run's config and reads its data
only in :meth:`download_data`, after which PyCIL's ``DataManager`` reads

- ``train_data`` / ``test_data``: ``numpy.ndarray`` of uint8 images (N, H, W, 3) when ``use_path`` is
  False, or of file path strings (N,) when ``use_path`` is True;
- ``train_targets`` / ``test_targets``: int64 ``numpy.ndarray`` (N,) of class indices 0..C-1;
- ``train_trsf``, ``test_trsf``, ``common_trsf``: lists of torchvision transforms applied to a PIL image
  as ``[*train_trsf, *common_trsf]`` (``ToTensor`` exactly once, ``Normalize`` in ``common_trsf``);
- ``class_order``: list of the C class indices.

The plug-in also reads ``class_names``: a plain ``list`` of C readable names indexed by the original class
label (None when unknown) -- always an attribute or a property, never a method, so every reader does
``names = idata.class_names`` whatever the dataset; ``name``, ``train_boxes`` / ``test_boxes`` (int64 (N, 4) = x0, y0, x1, y1 in
pixels of the original image, x1/y1 exclusive, or None when unknown), ``image_size`` ((H, W) when all
images share one size, else None) and the class attribute ``option_keys`` (config keys it reads).
"""

from __future__ import annotations

import operator
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["DatasetLayoutError", "IData", "int_option", "require_data_root"]


class DatasetLayoutError(ValueError):
    """A dataset folder is missing or not laid out as expected (the message names the path and layout)."""


class IData:
    """Base of the plug-in's dataset objects: the attributes PyCIL and the plug-in read (see module doc)."""

    name: str = ""
    option_keys: Tuple[str, ...] = ()
    use_path: bool = False
    image_size: Optional[Tuple[int, int]] = None
    class_order: Optional[list] = None
    #: readable name of each original label, ``class_names[label]`` (a list, not a method); None = unknown
    class_names: Optional[List[str]] = None

    def __init__(self) -> None:
        self.train_trsf: list = []
        self.test_trsf: list = []
        self.common_trsf: list = []
        self.train_data: Optional[np.ndarray] = None
        self.train_targets: Optional[np.ndarray] = None
        self.test_data: Optional[np.ndarray] = None
        self.test_targets: Optional[np.ndarray] = None
        self.train_boxes: Optional[np.ndarray] = None
        self.test_boxes: Optional[np.ndarray] = None

    def download_data(self) -> None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes once the data are loaded (None before :meth:`download_data`)."""
        return None if self.class_order is None else len(self.class_order)

    def __repr__(self) -> str:
        n = None if self.train_targets is None else len(self.train_targets)
        return f"{type(self).__name__}(name={self.name!r}, train_images={n}, classes={self.num_classes})"


def int_option(options: Dict[str, Any], key: str, default: int, minimum: int, maximum: Optional[int] = None) -> int:
    """Read an integer config key (``default`` when absent); TypeError/ValueError name the key and range."""
    value = options.get(key, default)
    if isinstance(value, bool):
        raise TypeError(f'config key "{key}" must be an integer, got the boolean {value!r}')
    try:
        value = operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f'config key "{key}" must be an integer, got {value!r} '
                            f"({type(value).__name__})") from None
    if value < minimum or (maximum is not None and value > maximum):
        hi = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f'config key "{key}" must be >= {minimum}{hi}, got {value}')
    return int(value)


def require_data_root(options: Dict[str, Any], name: str, layout: str) -> str:
    """The config's "data_root" as an absolute path; a clear DatasetLayoutError when it is missing.

    ``layout`` describes what the folder should hold (used in the message).
    """
    root = options.get("data_root")
    if root is None or root == "":
        raise DatasetLayoutError(
            f'dataset "{name}" needs the folder of its files: add "data_root": "/path/to/{name}" '
            f"to the config (a folder holding {layout})")
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f'config key "data_root" must be a path string, got {root!r} ({type(root).__name__})')
    return os.path.abspath(os.path.expanduser(os.fspath(root)))
