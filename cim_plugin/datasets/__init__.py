"""Datasets the plug-in adds to PyCIL (no PyCIL import): a synthetic one and folder-based real ones.

``build_idata(name, options)`` returns a dataset object for PyCIL's ``DataManager`` (its
``download_data()`` reads the data), or None when the name is not ours, so the caller can fall back
to PyCIL's own datasets. "cifar100" is ours only when the config has a "data_root"; without it,
PyCIL's own CIFAR-100 (downloaded to ./data) is used. See :mod:`cim_plugin.datasets.base` for the
attributes every dataset object has.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from .base import DatasetLayoutError, IData
from .cifar import CIFAR100Folder
from .folders import Food101, ImageFolder, ImageNet100, ImageNet1000, Imagenette, Imagewoof, MiniImageNet, TinyImageNet
from .synthetic import SyntheticShapes

__all__ = ["DATASETS", "DatasetLayoutError", "IData", "build_idata", "dataset_names"]

DATASETS: Dict[str, type] = {
    cls.name: cls for cls in (SyntheticShapes, ImageNet100, ImageNet1000, ImageFolder, Imagenette, Imagewoof,
                              MiniImageNet, Food101, TinyImageNet, CIFAR100Folder)
}


def dataset_names() -> List[str]:
    """Names of the plug-in's datasets (the "dataset" values of a config), sorted."""
    return sorted(DATASETS)


def build_idata(name: str, options: Mapping[str, Any]) -> Optional[IData]:
    """The dataset object for ``name`` (case-insensitive) configured from the run config ``options``.

    Cheap: nothing is read until its ``download_data()``. Returns None for names that are not ours
    (and for "cifar100" without "data_root"). Raises DatasetLayoutError when a folder dataset's
    config lacks "data_root", TypeError/ValueError for bad synthetic_* values.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {name!r} ({type(name).__name__})")
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be the run's config dict, got {type(options).__name__}")
    key = name.lower()
    cls = DATASETS.get(key)
    if cls is None:
        return None
    if cls is CIFAR100Folder and options.get("data_root") in (None, ""):
        return None
    return cls.from_options(options)
