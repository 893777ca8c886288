"""PyCIL's data side under CIM: raw items <-> stored uint8 images <-> network inputs (ImagePipeline), the
data-manager proxy that expands the compressed memory into decoded exemplars and wraps new-class data
in CIM's compression augmentation, and the train loader that calls CIM's per-epoch hook."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from ..config import ConfigError
from ..method.data import Concat, LabelledSubset, to_pil
from ..method.memory import CompressedMemory


def _split_test_transform(data_manager) -> Tuple[List[Any], List[Any]]:
    """PyCIL's test transform split into (PIL->PIL geometric part, tensor part incl. Normalize)."""
    trsf = list(data_manager._test_trsf) + list(data_manager._common_trsf)
    for i, t in enumerate(trsf):
        if isinstance(t, transforms.ToTensor):
            return trsf[:i], trsf[i:]
    raise ConfigError("the dataset's test transforms have no ToTensor(); the plug-in needs one")


class ImagePipeline:
    """Raw dataset items <-> stored uint8 images <-> network inputs, for one data manager.

    Stored images are what the memory compresses: the raw arrays (CIFAR, synthetic), or for
    path datasets (ImageNet, Food-101) the image after the test transform's geometric part
    (Resize(256) + CenterCrop(224)), so that exemplars no longer need the original files.
    """

    def __init__(self, data_manager):
        self.use_path = bool(data_manager.use_path)
        geometric, tensor_part = _split_test_transform(data_manager)
        self.geometric = transforms.Compose(geometric) if geometric else None
        self.tensor_part = transforms.Compose(tensor_part)
        self.train_trsf = transforms.Compose([*data_manager._train_trsf, *data_manager._common_trsf])
        norm = [t for t in tensor_part if isinstance(t, transforms.Normalize)]
        simple = len(tensor_part) == 2 and isinstance(tensor_part[0], transforms.ToTensor) and len(norm) == 1
        self._norm = (torch.tensor(norm[0].mean).view(1, 3, 1, 1), torch.tensor(norm[0].std).view(1, 3, 1, 1)) \
            if simple else None

    def load(self, item) -> torch.Tensor:
        """One raw item (HxWx3 uint8 array or a path) -> stored uint8 Tensor(3, H, W)."""
        if self.use_path:
            with open(item, "rb") as handle:
                img = Image.open(handle).convert("RGB")
        elif self.geometric is None:  # raw array, nothing to resize: store it as it is
            return torch.from_numpy(np.ascontiguousarray(item)).permute(2, 0, 1)
        else:
            img = Image.fromarray(item)
        if self.geometric is not None:
            img = self.geometric(img)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def load_many(self, items) -> torch.Tensor:
        """Raw items -> uint8 Tensor(N, 3, H, W) (one image size required)."""
        if not self.use_path and self.geometric is None and isinstance(items, np.ndarray) and items.ndim == 4:
            return torch.from_numpy(np.ascontiguousarray(items)).permute(0, 3, 1, 2).contiguous()
        images = [self.load(item) for item in items]
        sizes = {tuple(t.shape) for t in images}
        if len(sizes) != 1:
            raise ValueError(f"images of one class have different sizes after the test transform: {sorted(sizes)[:3]}")
        return torch.stack(images)

    def to_input(self, images: torch.Tensor, device) -> torch.Tensor:
        """uint8 Tensor(N, 3, H, W) -> normalised float network input (N, 3, H, W) on `device`."""
        if self._norm is not None:
            mean, std = self._norm
            x = images.to(device, non_blocking=True).float().div_(255)
            return (x - mean.to(device)) / std.to(device)
        pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        return torch.stack([self.tensor_part(p) for p in pil]).to(device)

    to_pil = staticmethod(to_pil)


class MemoryAppendent:
    """What `_get_memory()` returns under CIM: a marker the data-manager proxy expands."""

    def __init__(self, memory: CompressedMemory):
        self.memory = memory

    def __len__(self) -> int:
        return len(self.memory)


class DataManagerProxy:
    """A PyCIL DataManager whose `get_dataset` understands MemoryAppendent; all else delegates."""

    def __init__(self, data_manager, learner):
        self._dm = data_manager
        self._learner = learner

    def __getattr__(self, name):
        return getattr(self._dm, name)

    def get_dataset(self, indices, source, mode, appendent=None, ret_data=False, m_rate=None):
        learner = self._learner
        memory_part = appendent if isinstance(appendent, MemoryAppendent) else None
        if memory_part is not None:
            appendent = None
        if len(indices) == 0 and memory_part is not None:
            if ret_data:
                raise NotImplementedError("ret_data with compressed memory only: the exemplars are not raw data")
            return learner._cim.replay(self._trsf(mode), training=False)
        result = self._dm.get_dataset(indices, source, mode, appendent=appendent, ret_data=ret_data, m_rate=m_rate)
        dataset = result[2] if ret_data else result
        if source == "train" and mode == "train":
            dataset = learner._cim.augmented(dataset, learner._cim_pipeline)  # compression augmentation
        if memory_part is not None and len(memory_part):
            trsf = dataset.trsf if hasattr(dataset, "trsf") else dataset.base.trsf
            # decoded once per phase; the training one is reused by the meta batches
            dataset = Concat([dataset, learner._cim.replay(trsf, training=source == "train" and mode == "train")])
        return (*result[:2], dataset) if ret_data else dataset

    def get_dataset_with_split(self, indices, source, mode, appendent=None, val_samples_per_class=0):
        """BiC's split: PyCIL splits the new classes (its own random draw); the compressed memory is split
        here, per class, into ``val_samples_per_class`` exemplars for the bias-correction set and the rest
        for training (CIM's own random stream, see :func:`split_memory`). New-class training images get the
        compression augmentation; the memory's training part is the phase's training replay."""
        if not isinstance(appendent, MemoryAppendent):
            return self._dm.get_dataset_with_split(indices, source, mode, appendent=appendent,
                                                   val_samples_per_class=val_samples_per_class)
        learner = self._learner
        train, val = self._dm.get_dataset_with_split(indices, source, mode, appendent=None,
                                                     val_samples_per_class=val_samples_per_class)
        if source == "train" and mode == "train":
            train = learner._cim.augmented(train, learner._cim_pipeline)
        trsf = train.trsf if hasattr(train, "trsf") else train.base.trsf
        replay = learner._cim.replay(trsf, training=source == "train" and mode == "train")
        keep, held_out = split_memory(replay.labels, val_samples_per_class,
                                      torch.Generator().manual_seed(learner._cim.seed * 7919 + learner._cim.task))
        return (Concat([train, LabelledSubset(replay, keep)]),
                Concat([val, LabelledSubset(replay, held_out)]) if len(held_out) else val)

    def _trsf(self, mode):
        dm = self._dm
        if mode == "train":
            return transforms.Compose([*dm._train_trsf, *dm._common_trsf])
        if mode == "flip":
            return transforms.Compose([*dm._test_trsf, transforms.RandomHorizontalFlip(p=1.0), *dm._common_trsf])
        return transforms.Compose([*dm._test_trsf, *dm._common_trsf])


def split_memory(labels, per_class: int, generator: torch.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out) of a memory whose exemplars have ``labels`` (N,): ``per_class`` exemplars
    of each class (all of a class that has fewer) drawn at random by ``generator`` are held out, as
    PyCIL's get_dataset_with_split draws its validation exemplars; both index arrays are sorted."""
    labels = torch.as_tensor(np.asarray(labels))
    held = []
    for label in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == label).flatten()
        held.append(idx[torch.randperm(len(idx), generator=generator)[: max(0, int(per_class))]])
    held_out = torch.cat(held) if held else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten().numpy(), torch.sort(held_out).values.numpy()


class EpochHookLoader:
    """A train loader that calls `hook()` before every pass (= every epoch) over the data; with `when`, only
    before the passes where `when()` is true (BiC also iterates its train loader to measure accuracy)."""

    def __init__(self, loader, hook, when: Optional[Callable[[], bool]] = None):
        self._loader = loader
        self._hook = hook
        self._when = when

    def __iter__(self):
        if self._when is None or self._when():
            self._hook()
        return iter(self._loader)

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)
