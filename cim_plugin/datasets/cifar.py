"""CIFAR-100 read from the extracted python batch files under the config's "data_root" (no PyCIL code)."""

from __future__ import annotations

import os
import pickle
from typing import Tuple

import numpy as np
from torchvision import transforms

from .base import DatasetLayoutError
from .folders import _RootedIData

__all__ = ["CIFAR100Folder"]


def _load_cifar_pickle(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR-100 python batch file -> uint8 images (N, 32, 32, 3), int64 fine labels (N,)."""
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except Exception as err:  # truncated / not a pickle
        raise DatasetLayoutError(f"{path} is not a readable CIFAR-100 python batch file ({err}); "
                                 f"re-extract cifar-100-python.tar.gz") from None
    get = lambda k: entry.get(k, entry.get(k.encode())) if isinstance(entry, dict) else None  # noqa: E731
    data, labels = get("data"), get("fine_labels")
    if data is None or labels is None:
        raise DatasetLayoutError(f'{path} lacks the "data" / "fine_labels" entries of a CIFAR-100 batch file')
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DatasetLayoutError(f'{path}: "data" must be (N, 3072) with one fine label each, got {data.shape} '
                                 f"and {len(labels)} labels")
    images = np.ascontiguousarray(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, np.asarray(labels, dtype=np.int64)


class CIFAR100Folder(_RootedIData):
    """CIFAR-100 from data_root/cifar-100-python (files train, test, meta, as extracted from
    cifar-100-python.tar.gz). When that folder is absent it is downloaded there with torchvision
    (``download=True``); if that fails too, DatasetLayoutError says where it was expected.
    In-memory uint8 (N, 32, 32, 3) images (``use_path`` False), no boxes, PyCIL's CIFAR-100 transforms.
    """

    name = "cifar100"
    use_path = False
    image_size = (32, 32)
    layout = "cifar-100-python/ (train, test, meta, extracted from cifar-100-python.tar.gz)"

    def __init__(self, data_root: str, download: bool = True) -> None:
        super().__init__(data_root)
        self.download = bool(download)
        self.train_trsf = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                           transforms.ColorJitter(brightness=63 / 255), transforms.ToTensor()]
        self.test_trsf = [transforms.ToTensor()]
        self.common_trsf = [transforms.Normalize(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))]

    def download_data(self) -> None:
        folder = os.path.join(self.data_root, "cifar-100-python")
        files = [os.path.join(folder, f) for f in ("train", "test")]
        if not all(os.path.isfile(f) for f in files):
            reason = "downloading is off"
            if self.download:
                try:
                    # only to download: torchvision.datasets is slow to import
                    from torchvision.datasets import CIFAR100

                    CIFAR100(root=self.data_root, train=True, download=True)
                    reason = ""
                except Exception as err:  # offline, no permission, bad checksum...
                    reason = f"downloading it failed ({type(err).__name__}: {err})"
            if reason:
                missing = folder if not os.path.isdir(folder) else next(f for f in files if not os.path.isfile(f))
                raise DatasetLayoutError(
                    f"expected the extracted CIFAR-100 at {folder} (files train and test from "
                    f"cifar-100-python.tar.gz) but {missing} does not exist, and {reason}; "
                    f"extract cifar-100-python.tar.gz into data_root={self.data_root}")
        self.train_data, self.train_targets = _load_cifar_pickle(files[0])
        self.test_data, self.test_targets = _load_cifar_pickle(files[1])
        n = int(max(self.train_targets.max(initial=-1), self.test_targets.max(initial=-1))) + 1
        if self.train_targets.min(initial=0) < 0 or n > 100:
            raise DatasetLayoutError(f"{files[0]}: fine labels must be in 0..99, got up to {n - 1}")
        self.class_order = list(range(n))
