"""Datasets around CIM's memory and new-class data, for any PyTorch training loop.

Items follow one convention (PyCIL's): ``(index, image Tensor(3, H, W) after the transform, label)``.
Stored images are uint8 Tensor(3, H, W); a *loader* turns a dataset's raw items into stored images
(``load(item) -> uint8 (3, H, W)``, ``load_many(items) -> uint8 (N, 3, H, W)``).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from .codec import compress
from .masks import full_boxes
from .memory import CompressedMemory, decoding_on

__all__ = ["to_pil", "StoredImages", "TensorImages", "ExemplarDataset", "CompressAugmentDataset", "LabelledSubset",
           "Concat"]


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 Tensor(3, H, W) -> PIL RGB image."""
    return Image.fromarray(image.permute(1, 2, 0).numpy())


class StoredImages:
    """Loader for raw items that already are stored images (uint8 Tensor(3, H, W))."""

    @staticmethod
    def load(item: torch.Tensor) -> torch.Tensor:
        return item

    @staticmethod
    def load_many(items) -> torch.Tensor:
        return items if isinstance(items, torch.Tensor) else torch.stack(list(items))


class TensorImages(Dataset):
    """uint8 images (N, 3, H, W) and labels (N,) as a dataset of ``(index, trsf(PIL image), label)``:
    the new-class data of a plain PyTorch loop. ``trsf`` is a torchvision transform on PIL images."""

    def __init__(self, images: torch.Tensor, labels, trsf: Callable):
        self.images = images
        self.labels = np.asarray(labels)
        self.trsf = trsf

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx):
        return idx, self.trsf(to_pil(self.images[idx])), int(self.labels[idx])


class ExemplarDataset(Dataset):
    """Decoded exemplars of a CompressedMemory as items ``(idx, trsf(image), label)``.

    The exemplars are decoded once, in one batch per image size, when the dataset is made (once per
    phase): a per-item decode costs about 1 ms of fixed overhead, 70x the batched cost, and would sit
    on the loader's hot path. The decoded copies are transient working memory for this phase's loader
    (PyCIL keeps raw exemplars in RAM the same way); what the budget counts is the stored memory.
    Above `cache_bytes` of decoded pixels the dataset decodes per item instead, on the CPU whatever the
    memory's device: items are made in the loader's forked workers, where CUDA cannot be initialised.
    """

    CACHE_BYTES = 2 << 30

    def __init__(self, memory: CompressedMemory, trsf, cache_bytes: Optional[int] = None):
        self.memory = memory
        self.trsf = trsf
        self.labels = memory.labels.numpy()
        limit = self.CACHE_BYTES if cache_bytes is None else cache_bytes
        sizes = memory.sizes
        decoded_bytes = int((3 * sizes[:, 0] * sizes[:, 1]).sum()) if len(memory) else 0
        self._decoded: Optional[List[torch.Tensor]] = (
            memory.decode_list() if 0 < decoded_bytes <= limit else None)
        self._per_item = decoding_on(memory, "cpu")  # used in loader workers (forked: no CUDA there)

    def __len__(self) -> int:
        return len(self.memory)

    def __getitem__(self, idx):
        decoded = self._per_item.decode_one(idx) if self._decoded is None else self._decoded[idx]
        return idx, self.trsf(to_pil(decoded)), int(self.labels[idx])


class CompressAugmentDataset(Dataset):
    """New-class training images, each compressed with its current box with probability ``max(prob, floor)``
    (CIM's compression augmentation; ``floor``: ``"codec_augment_prob"``, 0 in the official schedule). Boxes
    (N, 4) are in stored-image coordinates; before the first refresh (``boxes`` None) an image is compressed
    with a whole-image box, i.e. only by the memory's codec (JPEG), which is all a "full" memory does.

    ``base`` gives items ``(idx, image, label)`` and has ``images`` (raw items), ``labels`` and ``trsf``;
    ``loader`` turns raw items into stored uint8 images. Whether item `idx` is compressed in pass `salt`
    is a pure function of (seed, salt, idx), drawn from a generator of its own: the host's random stream
    (shuffling, crops, flips) is the same as without CIM, and the draws are the same in every loader worker."""

    def __init__(self, base, loader, compress_ratio: float, seed: int = 0,
                 compress_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                 floor: float = 0.0):
        self.base = base
        self.pipeline = loader
        self.ratio = compress_ratio
        #: ``compress_fn(uint8 (B, 3, H, W), boxes (B, 4)) -> uint8 (B, 3, H, W)``: what the memory would replay
        #: (e.g. :meth:`CompressedMemory.compressed`, JPEG included); None: the raw codec at ``compress_ratio``
        self.compress_fn = compress_fn
        self.boxes: Optional[torch.Tensor] = None
        self.prob = 0.0
        self.floor = float(floor)
        self.seed = int(seed)
        self.salt = 0  # set before each pass over the data
        self.images, self.labels = base.images, base.labels

    def _coin(self, idx: int) -> float:
        key = ((self.seed * 1_000_003 + self.salt) * 1_000_003 + int(idx)) % (1 << 62)
        return float(torch.rand((), generator=torch.Generator().manual_seed(key)))

    def stored_images(self) -> torch.Tensor:
        """All images as stored uint8 Tensor(N, 3, H, W) (for box refreshes)."""
        return self.pipeline.load_many(self.images)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx):
        prob = max(self.prob, self.floor)
        if (self.boxes is None and self.floor <= 0) or prob <= 0 or self._coin(idx) >= prob:
            return self.base[idx]
        stored = self.pipeline.load(self.base.images[idx])
        box = self.boxes[idx : idx + 1] if self.boxes is not None else full_boxes(1, *stored.shape[-2:])
        image = (self.compress_fn(stored.unsqueeze(0), box) if self.compress_fn is not None
                 else compress(stored.unsqueeze(0), box, self.ratio))[0]
        return idx, self.base.trsf(to_pil(image)), self.base.labels[idx]


class LabelledSubset(Dataset):
    """Items ``indices`` of a dataset that has ``labels`` (and maybe ``trsf``), renumbered from 0."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(dataset.labels)[self.indices]
        self.trsf = getattr(dataset, "trsf", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx):
        _, image, label = self.dataset[int(self.indices[idx])]
        return idx, image, label


class Concat(ConcatDataset):
    """ConcatDataset that keeps a `labels` attribute and returns global indices."""

    def __init__(self, datasets: Sequence[Dataset]):
        super().__init__(datasets)
        self.labels = np.concatenate([np.asarray(d.labels) for d in datasets])

    def __getitem__(self, idx):
        _, image, label = super().__getitem__(idx)
        return idx, image, label
