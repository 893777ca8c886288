"""CompressedMemory: a replay buffer that holds the real compressed bytes of its exemplars (CIM step 5).

Storage (all CPU tensors):
  * ``payload``      uint8 (P,)  : for every exemplar its low-res frame (the low-res pixels that a decoded
                                   pixel outside the box reads, 3 bytes each, :func:`cim_plugin.method.codec.encode`)
                                   and its crop (box_h, box_w, 3) HWC flattened;
  * ``boxes``        int16 (N,4) : (x0, y0, x1, y1), exclusive ends;
  * ``labels``       int64 (N,)  ; ``sizes`` int64 (N,2) = original (H, W);
  * ``frame_off``, ``crop_off`` int64 (N,) : byte offsets of the two parts inside ``payload``.
The lengths of the parts follow from box, size and ratio (:func:`cim_plugin.method.codec.frame_npixels`),
so an exemplar costs ``3*box_h*box_w + 3*frame_pixels + 8`` bytes, about ``a + (1 - a)/r`` images.
The budgeted size :attr:`CompressedMemory.nbytes` is ``payload`` bytes + ``boxes`` bytes, i.e. exactly
the sum of :func:`cim_plugin.method.codec.exemplar_nbytes`; labels, sizes and offsets are bookkeeping
and are not counted (as the label of a full-image exemplar is not counted by PyCIL's memory_size).

Exemplars keep their insertion order; within a class that is the herding order, so shrinking a
class drops its last-selected exemplars.
"""

from __future__ import annotations

import operator
import os
import tempfile
from typing import Dict, Iterator, List, Tuple, Union

import torch

from .boxes import box_areas, check_boxes
from .codec import decode, encode, exemplar_nbytes, frame_npixels, _check_ratio, _check_uint8_images
from .herding import herding_order
from .packing import _ranges, _size_groups

__all__ = ["CompressedMemory", "BudgetExceededError"]

_INT16_MAX = 32767
_STATE_VERSION = 2  # 1: full low-res image per exemplar ("lowres_off"), converted on load


class BudgetExceededError(RuntimeError):
    """The memory holds more bytes than its budget."""


def _as_int(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None


class CompressedMemory:
    """Byte-budgeted exemplar memory of CIM-compressed images.

    Args:
        budget_bytes: total bytes the memory may hold (payload + boxes). A PyCIL budget of
            ``memory_size`` full 32x32 RGB images is ``memory_size * 3 * 32 * 32``.
        compress_ratio: r, pixels of an image per pixel of its low-resolution copy (>= 1).
    """

    def __init__(self, budget_bytes: int, compress_ratio: float = 4.0):
        budget_bytes = _as_int(budget_bytes, "budget_bytes")
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.compress_ratio = _check_ratio(compress_ratio)
        self._payload = torch.zeros(0, dtype=torch.uint8)
        self._boxes = torch.zeros(0, 4, dtype=torch.int16)
        self._labels = torch.zeros(0, dtype=torch.long)
        self._sizes = torch.zeros(0, 2, dtype=torch.long)
        self._frame_off = torch.zeros(0, dtype=torch.long)
        self._crop_off = torch.zeros(0, dtype=torch.long)

    # ------------------------------------------------------------------ read-only views
    def __len__(self) -> int:
        return int(self._labels.numel())

    def __repr__(self) -> str:
        return (f"CompressedMemory(n={len(self)}, classes={len(self.classes())}, nbytes={self.nbytes}, "
                f"budget_bytes={self.budget_bytes}, compress_ratio={self.compress_ratio})")

    @property
    def labels(self) -> torch.Tensor:
        """int64 Tensor(N,), label of each exemplar."""
        return self._labels.clone()

    @property
    def boxes(self) -> torch.Tensor:
        """int64 Tensor(N, 4), box of each exemplar in pixels of its original image."""
        return self._boxes.long()

    @property
    def sizes(self) -> torch.Tensor:
        """int64 Tensor(N, 2), original (H, W) of each exemplar."""
        return self._sizes.clone()

    @property
    def nbytes(self) -> int:
        """Bytes held, measured on the stored tensors: payload + boxes."""
        return (self._payload.numel() * self._payload.element_size()
                + self._boxes.numel() * self._boxes.element_size())

    def classes(self) -> List[int]:
        """Sorted list of the labels present."""
        return torch.unique(self._labels).tolist()

    def counts(self) -> Dict[int, int]:
        """label -> number of exemplars."""
        u, c = torch.unique(self._labels, return_counts=True)
        return dict(zip(u.tolist(), c.tolist()))

    def _frame_len(self) -> torch.Tensor:
        """int64 Tensor(N,), bytes of each exemplar's low-res frame (3 per stored low-res pixel)."""
        out = torch.zeros(len(self), dtype=torch.long)
        for (H, W), pos in _size_groups(self._sizes):  # few distinct sizes
            out[pos] = 3 * frame_npixels(self._boxes[pos].long(), H, W, self.compress_ratio)
        return out

    def _crop_len(self) -> torch.Tensor:
        return 3 * box_areas(self._boxes.long())

    def exemplar_nbytes(self) -> torch.Tensor:
        """int64 Tensor(N,), stored bytes of each exemplar (frame + crop + box)."""
        return self._frame_len() + self._crop_len() + self._boxes.shape[1] * self._boxes.element_size()

    def nbytes_per_class(self) -> Dict[int, int]:
        """label -> bytes held by its exemplars (sums to :attr:`nbytes`)."""
        u, inv = torch.unique(self._labels, return_inverse=True)
        tot = torch.zeros(u.numel(), dtype=torch.long).index_add_(0, inv, self.exemplar_nbytes())
        return dict(zip(u.tolist(), tot.tolist()))

    def check_budget(self) -> None:
        """Raise :class:`BudgetExceededError` if the bytes held exceed the budget."""
        if self.nbytes > self.budget_bytes:
            raise BudgetExceededError(f"memory holds {self.nbytes} bytes > budget {self.budget_bytes} bytes")

    # ------------------------------------------------------------------ mutation
    def select_class(self, images, features: torch.Tensor, boxes: torch.Tensor, label: int,
                     budget_bytes: int, replace: bool = False) -> int:
        """Add exemplars of one class in herding order while the class stays within ``budget_bytes``.

        Args:
            images: the class's candidate images, uint8 Tensor(N, 3, H, W), or a list of N uint8
                Tensor(3, H_i, W_i) when their sizes differ (any device; stored on the CPU).
            features: float Tensor(N, D), their features (herding on L2-normalised rows).
            boxes: int Tensor(N, 4), their boxes (x0, y0, x1, y1) in pixels of each image, exclusive ends.
            label: the class label.
            budget_bytes: bytes this class may use; selection stops at the first exemplar (in
                herding order) that would exceed it.
            replace: if the class is already stored, replace it (else that is an error).
        Returns:
            number of exemplars kept (>= 1). Raises ValueError (memory unchanged) if not even one
            fits, or if the memory as a whole would exceed its budget.
        """
        sizes = self._image_sizes(images)
        n = sizes.shape[0]
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] != n:
            raise TypeError(f"features must be a float Tensor(N={n}, D), got {getattr(features, 'shape', type(features))}")
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[0] != n:
            raise ValueError(f"got {n} images but boxes of shape {getattr(boxes, 'shape', type(boxes))}; "
                             "expected one (x0,y0,x1,y1) row per image")
        boxes = boxes.cpu()
        label = _as_int(label, "label")
        budget_bytes = _as_int(budget_bytes, "budget_bytes")
        present = bool((self._labels == label).any())
        if present and not replace:
            raise ValueError(f"class {label} is already in memory; pass replace=True or call remove_class({label})")
        if n == 0:
            raise ValueError(f"class {label}: no candidate images given")
        nb = torch.empty(n, dtype=torch.long)
        groups = list(_size_groups(sizes))
        for (H, W), pos in groups:
            b = check_boxes(boxes[pos], H, W)
            nb[pos] = exemplar_nbytes(b, H, W, self.compress_ratio)
        boxes = boxes.long()
        kmax = min(n, budget_bytes // int(nb.min())) if budget_bytes >= 0 else 0
        if kmax == 0:
            i = int(nb.argmin())
            raise ValueError(f"class {label}: not even one exemplar fits in {budget_bytes} bytes (the smallest "
                             f"costs {int(nb[i])} bytes for a {sizes[i, 0]}x{sizes[i, 1]} image at compress_ratio "
                             f"{self.compress_ratio}); raise the budget or the compress ratio")
        order = herding_order(features, kmax).cpu()
        keep = int((torch.cumsum(nb[order], 0) <= budget_bytes).sum())  # cumsum increasing: a prefix
        if keep == 0:
            raise ValueError(f"class {label}: the first herding exemplar costs {int(nb[order[0]])} bytes > "
                             f"class budget {budget_bytes} bytes")
        order = order[:keep]
        add = int(nb[order].sum())
        old_class_bytes = self.nbytes_per_class().get(label, 0) if present else 0
        new_total = self.nbytes - old_class_bytes + add
        if new_total > self.budget_bytes:
            raise ValueError(f"class {label}: adding {keep} exemplars ({add} bytes) would bring the memory to "
                             f"{new_total} bytes > budget {self.budget_bytes} bytes; reduce the other classes "
                             "first or pass a smaller class budget")
        # encode the kept exemplars, one batch per image size; entries stay in herding order
        sel_sizes = sizes[order]
        frame_off = torch.empty(keep, dtype=torch.long)
        crop_off = torch.empty(keep, dtype=torch.long)
        chunks = []
        base = 0
        for (H, W), pos in _size_groups(sel_sizes):
            idx = order[pos]
            if isinstance(images, torch.Tensor):
                batch = images.index_select(0, idx.to(images.device))
            else:
                batch = torch.stack([images[i] for i in idx.tolist()])
            frame, crops = encode(batch, boxes[idx].to(batch.device), self.compress_ratio)
            fr_len = 3 * frame_npixels(boxes[idx], H, W, self.compress_ratio)
            cr_len = 3 * box_areas(boxes[idx])
            frame_off[pos] = base + torch.cumsum(fr_len, 0) - fr_len
            base += frame.numel()
            crop_off[pos] = base + torch.cumsum(cr_len, 0) - cr_len
            base += crops.numel()
            chunks += [frame.cpu(), crops.cpu()]
        if present:
            self._drop(self._labels == label)
        start = self._payload.numel()
        self._payload = torch.cat([self._payload] + chunks)
        self._frame_off = torch.cat([self._frame_off, start + frame_off])
        self._crop_off = torch.cat([self._crop_off, start + crop_off])
        self._boxes = torch.cat([self._boxes, boxes[order].to(torch.int16)])
        self._labels = torch.cat([self._labels, torch.full((keep,), label, dtype=torch.long)])
        self._sizes = torch.cat([self._sizes, sel_sizes])
        self.check_budget()
        return keep

    @staticmethod
    def _image_sizes(images) -> torch.Tensor:
        """Validate candidate images; int64 Tensor(N, 2) of their (H, W)."""
        if isinstance(images, torch.Tensor):
            _check_uint8_images(images)
            sizes = torch.tensor([[images.shape[2], images.shape[3]]], dtype=torch.long).repeat(images.shape[0], 1)
        elif isinstance(images, (list, tuple)):
            for i, im in enumerate(images):
                if not isinstance(im, torch.Tensor) or im.dim() != 3 or im.shape[0] != 3 or im.dtype != torch.uint8:
                    raise TypeError(f"images[{i}] must be a uint8 Tensor(3,H,W), got "
                                    f"{getattr(im, 'shape', type(im))} {getattr(im, 'dtype', '')}")
            sizes = torch.tensor([[im.shape[1], im.shape[2]] for im in images], dtype=torch.long).view(-1, 2)
        else:
            raise TypeError(f"images must be a uint8 Tensor(N,3,H,W) or a list of uint8 Tensor(3,H,W), "
                            f"got {type(images).__name__}")
        if sizes.numel() and (int(sizes.max()) > _INT16_MAX or int(sizes.min()) <= 0):
            raise ValueError(f"image sides must be in [1, {_INT16_MAX}] pixels (int16 boxes), got "
                             f"{sizes.min().item()}..{sizes.max().item()}")
        return sizes

    def _drop(self, drop: torch.Tensor) -> None:
        """Remove exemplars where bool Tensor(N,) ``drop`` is True and compact the payload."""
        keep = ~drop
        fr_len, cr_len = self._frame_len()[keep], self._crop_len()[keep]
        fr_idx = _ranges(self._frame_off[keep], fr_len)
        cr_idx = _ranges(self._crop_off[keep], cr_len)
        # new layout: all kept frames, then all kept crops
        self._payload = torch.cat([self._payload[fr_idx], self._payload[cr_idx]])
        self._frame_off = torch.cumsum(fr_len, 0) - fr_len
        self._crop_off = int(fr_len.sum()) + torch.cumsum(cr_len, 0) - cr_len
        self._boxes = self._boxes[keep]
        self._labels = self._labels[keep]
        self._sizes = self._sizes[keep]

    def remove_class(self, label: int) -> int:
        """Drop all exemplars of ``label``; returns how many were removed."""
        drop = self._labels == _as_int(label, "label")
        n = int(drop.sum())
        if n:
            self._drop(drop)
        self.check_budget()
        return n

    def reduce(self, budget_per_class: Union[Dict[int, int], int]) -> Dict[int, int]:
        """Shrink every class to its byte share by dropping its last-selected exemplars.

        Args:
            budget_per_class: bytes per class, one int for all classes or a dict covering every
                stored class.
        Returns:
            label -> number of exemplars kept. Raises ValueError (memory unchanged) if a class's
            share cannot hold even its first exemplar (remove it with :meth:`remove_class`).
        """
        classes = self.classes()
        if isinstance(budget_per_class, dict):
            missing = [c for c in classes if c not in budget_per_class]
            if missing:
                raise ValueError(f"budget_per_class has no entry for stored classes {missing}")
            shares = {c: _as_int(budget_per_class[c], f"budget_per_class[{c}]") for c in classes}
        else:
            b = _as_int(budget_per_class, "budget_per_class")
            shares = {c: b for c in classes}
        if not classes:
            return {}
        nb = self.exemplar_nbytes()
        u, inv = torch.unique(self._labels, return_inverse=True)
        share = torch.tensor([shares[c] for c in u.tolist()], dtype=torch.long)[inv]
        # running bytes of each exemplar's class, in insertion (= herding) order: sort by class, stable
        perm = torch.sort(inv, stable=True).indices
        cum = torch.cumsum(nb[perm], 0)
        cls_sorted = inv[perm]
        first = torch.ones_like(cls_sorted, dtype=torch.bool)
        first[1:] = cls_sorted[1:] != cls_sorted[:-1]
        start_cum = torch.where(first, cum - nb[perm], torch.zeros_like(cum))
        start_cum = torch.cummax(start_cum, 0).values  # cum bytes before each class's first exemplar
        within = torch.empty_like(cum)
        within[perm] = cum - start_cum
        keep = within <= share
        kept = torch.zeros(u.numel(), dtype=torch.long).index_add_(0, inv, keep.long())
        empty = [c for c, k in zip(u.tolist(), kept.tolist()) if k == 0]
        if empty:
            raise ValueError(f"classes {empty}: their share cannot hold even one exemplar (shares "
                             f"{ {c: shares[c] for c in empty} } bytes); raise the budget or remove_class() them")
        if not bool(keep.all()):
            self._drop(~keep)
        self.check_budget()
        return dict(zip(u.tolist(), kept.tolist()))

    # ------------------------------------------------------------------ decoding
    def _indices(self, indices) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"exemplar indices must be in [-{n}, {n}), got [{int(idx.min())}, {int(idx.max())}]")
        return idx % max(n, 1)

    def decode(self, indices) -> torch.Tensor:
        """Decode exemplars of one image size: uint8 Tensor(n, 3, H, W) on the CPU.

        ``indices``: int sequence / Tensor of exemplar positions. Raises ValueError if they have
        different original sizes (use :meth:`decode_list` then).
        """
        idx = self._indices(indices)
        if idx.numel() == 0:
            raise ValueError("decode needs at least one index (the image size is unknown otherwise)")
        sizes = self._sizes[idx]
        if bool((sizes != sizes[0]).any()):
            raise ValueError(f"exemplars {idx.tolist()[:8]}... have different image sizes "
                             f"{torch.unique(sizes, dim=0).tolist()}; use decode_list()")
        H, W = sizes[0].tolist()
        boxes = self._boxes[idx].long()
        frame = self._payload[_ranges(self._frame_off[idx], 3 * frame_npixels(boxes, H, W, self.compress_ratio))]
        crops = self._payload[_ranges(self._crop_off[idx], 3 * box_areas(boxes))]
        return decode(frame, crops, boxes, (H, W), self.compress_ratio)

    def decode_one(self, i: int) -> torch.Tensor:
        """Decode one exemplar: uint8 Tensor(3, H, W)."""
        return self.decode([_as_int(i, "i")])[0]

    def size_groups(self, indices=None) -> Iterator[Tuple[Tuple[int, int], torch.Tensor]]:
        """Yield ((H, W), int64 Tensor of positions in ``indices``) for each distinct image size."""
        idx = self._indices(range(len(self)) if indices is None else indices)
        yield from _size_groups(self._sizes[idx])

    def decode_list(self, indices=None) -> List[torch.Tensor]:
        """Decode exemplars of any sizes (all if ``indices`` is None): list of uint8 Tensor(3, H_i, W_i),
        in the order of ``indices``; decoded in one batch per size."""
        idx = self._indices(range(len(self)) if indices is None else indices)
        out: List[torch.Tensor] = [None] * idx.numel()  # type: ignore[list-item]
        for _, pos in self.size_groups(idx):
            imgs = self.decode(idx[pos])
            for p, img in zip(pos.tolist(), imgs):
                out[p] = img
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Plain dict of tensors and numbers (loadable with torch.load(weights_only=True))."""
        return {"version": _STATE_VERSION, "budget_bytes": self.budget_bytes,
                "compress_ratio": self.compress_ratio, "payload": self._payload.clone(),
                "boxes": self._boxes.clone(), "labels": self._labels.clone(), "sizes": self._sizes.clone(),
                "frame_off": self._frame_off.clone(), "crop_off": self._crop_off.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; validates shapes, dtypes and offsets.

        A version-1 state (full low-res image per exemplar, key ``lowres_off``) is converted to the
        current format: its hole pixels are dropped, decoded images are unchanged.
        """
        if not isinstance(state, dict) or "version" not in state:
            raise ValueError("not a CompressedMemory state dict: missing 'version'")
        version = state["version"]
        if version not in (1, _STATE_VERSION):
            raise ValueError(f"unsupported CompressedMemory state version {version!r} (this code reads 1 and "
                             f"{_STATE_VERSION})")
        off_key = "lowres_off" if version == 1 else "frame_off"
        from .memory_v1 import convert_v1, lowres_len_v1  # the old format, needed only to read it

        keys = {"version", "budget_bytes", "compress_ratio", "payload", "boxes", "labels", "sizes",
                off_key, "crop_off"}
        if not keys <= set(state):
            raise ValueError(f"not a CompressedMemory state dict: missing {sorted(keys - set(state))}")
        spec = {"payload": (torch.uint8, 1), "boxes": (torch.int16, 2), "labels": (torch.long, 1),
                "sizes": (torch.long, 2), off_key: (torch.long, 1), "crop_off": (torch.long, 1)}
        for k, (dt, nd) in spec.items():
            t = state[k]
            if not isinstance(t, torch.Tensor) or t.dtype != dt or t.dim() != nd:
                raise ValueError(f"state[{k!r}] must be a {nd}-D {dt} tensor, got {getattr(t, 'dtype', type(t))}")
        n = state["labels"].numel()
        if not (state["boxes"].shape == (n, 4) and state["sizes"].shape == (n, 2)
                and state[off_key].numel() == n and state["crop_off"].numel() == n):
            raise ValueError("state tensors disagree on the number of exemplars")
        new = CompressedMemory(state["budget_bytes"], state["compress_ratio"])
        new._payload, new._boxes = state["payload"].cpu().clone(), state["boxes"].cpu().clone()
        new._labels, new._sizes = state["labels"].cpu().clone(), state["sizes"].cpu().clone()
        new._frame_off, new._crop_off = state[off_key].cpu().clone(), state["crop_off"].cpu().clone()
        if n:
            if int(new._sizes.min()) <= 0 or int(new._sizes.max()) > _INT16_MAX:
                raise ValueError("state sizes must be positive image sides")
            for (H, W), pos in _size_groups(new._sizes):
                check_boxes(new._boxes[pos], H, W)
            part_len = lowres_len_v1(new) if version == 1 else new._frame_len()
            ends = torch.cat([new._frame_off + part_len, new._crop_off + new._crop_len()])
            if int(new._frame_off.min()) < 0 or int(new._crop_off.min()) < 0 or \
                    int(ends.max()) > new._payload.numel():
                raise ValueError("state offsets point outside the payload")
            if new._payload.numel() != int(part_len.sum() + new._crop_len().sum()):
                raise ValueError("state payload size does not match its exemplars")
            if version == 1:
                convert_v1(new)
        self.__dict__.update(new.__dict__)
        self.check_budget()

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the memory to one file, atomically (temporary file in the same folder + os.replace)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".cim_memory.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(self.state_dict(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "CompressedMemory":
        """Read a memory written by :meth:`save`."""
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        mem = cls(0)
        mem.load_state_dict(state)
        return mem
