"""CompressedMemory: a replay buffer that holds the real compressed bytes of its exemplars (CIM step 5).

Storage (all CPU tensors):
  * ``payload``      uint8 (P,)  : for every exemplar its low-res frame (the low-res pixels that a decoded
                                   pixel outside the box reads, 3 bytes each, :func:`cim_plugin.method.codec.raw.encode`)
                                   and its crop (box_h, box_w, 3) HWC flattened;
  * ``boxes``        int16 (N,4) : (x0, y0, x1, y1), exclusive ends;
  * ``labels``       int64 (N,)  ; ``sizes`` int64 (N,2) = original (H, W);
  * ``frame_off``, ``crop_off`` int64 (N,) : byte offsets of the two parts inside ``payload``.
The lengths of the parts follow from box, size and ratio (:func:`cim_plugin.method.codec.raw.frame_npixels`),
so an exemplar costs ``3*box_h*box_w + 3*frame_pixels + 8`` bytes, about ``a + (1 - a)/r`` images.
The budgeted size :attr:`CompressedMemory.nbytes` is ``payload`` bytes + ``boxes`` bytes, i.e. exactly
the sum of :func:`cim_plugin.method.codec.raw.exemplar_nbytes`; labels, sizes and offsets are bookkeeping
and are not counted (as the label of a full-image exemplar is not counted by PyCIL's memory_size).

Exemplars keep their insertion order; within a class that is the herding order, so shrinking a
class drops its last-selected exemplars.
"""

from __future__ import annotations

import operator
import os
from typing import Dict, Iterator, List, Tuple, Union

import torch

from ..codec.raw import box_nbytes, check_ratio, compress, decode, encode, exemplar_nbytes, frame_npixels
from ..herding import herding_order
from ..masks.boxes import box_areas, check_boxes
from ..timing import codec_timed
from .fit import first_within, keep_within_shares, prefix_within
from .legacy import convert_v1, lowres_len_v1
from .packing import DECODE_CHUNK, INT16_MAX, group_by_size, image_sizes, packed_ranges, select_images
from .registry import Codec, memory_from_state, register
from .state import check_state, save_state

__all__ = ["CompressedMemory", "BudgetExceededError"]

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
        implicit_boxes: every box is the whole image (mask mode "full"), so boxes carry no information
            and are not counted (an exemplar of a full box then costs exactly 3*H*W bytes).
    """

    codec = "raw"

    def __init__(self, budget_bytes: int, compress_ratio: float = 4.0, implicit_boxes: bool = False):
        budget_bytes = _as_int(budget_bytes, "budget_bytes")
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.compress_ratio = check_ratio(compress_ratio)
        self.implicit_boxes = bool(implicit_boxes)
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
        """Bytes held, measured on the stored tensors: payload + boxes (none for a whole-image box)."""
        return self._payload.numel() * self._payload.element_size() + int(self._box_bytes(self._boxes, self._sizes).sum())

    def decoding_on(self, device) -> "CompressedMemory":
        """This memory: the raw codec decodes on the CPU wherever it runs."""
        return self

    @property
    def shared_nbytes(self) -> int:
        """Bytes held once per memory, whatever the number of exemplars (none for raw pixels)."""
        return 0

    def _box_bytes(self, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """int64 Tensor(N,), bytes of each box (N, 4) of images of ``sizes`` (N, 2): 4 x int16, none for a
        whole-image box (its crop length says so; always the case with implicit boxes)."""
        out = torch.zeros(boxes.shape[0], dtype=torch.long)
        for (H, W), pos in group_by_size(sizes):
            out[pos] = box_nbytes(boxes[pos].long(), H, W)
        return out

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
        for (H, W), pos in group_by_size(self._sizes):  # few distinct sizes
            out[pos] = 3 * frame_npixels(self._boxes[pos].long(), H, W, self.compress_ratio)
        return out

    def _crop_len(self) -> torch.Tensor:
        return 3 * box_areas(self._boxes.long())

    def exemplar_nbytes(self) -> torch.Tensor:
        """int64 Tensor(N,), stored bytes of each exemplar (frame + crop + box)."""
        return self._frame_len() + self._crop_len() + self._box_bytes(self._boxes, self._sizes)

    def nbytes_per_class(self) -> Dict[int, int]:
        """label -> bytes held by its exemplars (sums to :attr:`nbytes`)."""
        u, inv = torch.unique(self._labels, return_inverse=True)
        tot = torch.zeros(u.numel(), dtype=torch.long).index_add_(0, inv, self.exemplar_nbytes())
        return dict(zip(u.tolist(), tot.tolist()))

    def candidate_nbytes(self, images, boxes: torch.Tensor) -> torch.Tensor:
        """int64 Tensor(N,): the bytes each image would cost if stored with its box (x0, y0, x1, y1)
        (uint8 Tensor(N, 3, H, W) or a list of Tensor(3, H_i, W_i)), by this memory's codec; what is held
        once for the whole memory (:attr:`shared_nbytes`) is not included. The memory is not changed."""
        sizes = image_sizes(images)
        boxes = boxes.cpu().long()
        for (H, W), pos in group_by_size(sizes):
            check_boxes(boxes[pos], H, W)
        return self._candidates(images, boxes, sizes)[0]

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
                herding order) that would exceed it (if that is the first one, the class keeps instead
                the first exemplar in herding order that fits alone, see :mod:`cim_plugin.method.memory.fit`).
                A candidate whose stored form would cost more than its image is stored as the whole image.
            replace: if the class is already stored, replace it (else that is an error).
        Returns:
            number of exemplars kept (>= 1). Raises ValueError (memory unchanged) if not even one
            fits, or if the memory as a whole would exceed its budget.
        """
        sizes = image_sizes(images)
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
        for (H, W), pos in group_by_size(sizes):
            check_boxes(boxes[pos], H, W)
        boxes = boxes.long()
        nb, encoded = self._candidates(images, boxes, sizes)
        over = nb > 3 * sizes.prod(dim=1)  # compressed, it would cost more than the image: store the image
        if bool(over.any()):  # (0, 0, W, H): the whole image
            boxes = torch.where(over[:, None], torch.cat([torch.zeros_like(sizes), sizes.flip(1)], dim=1), boxes)
            nb, encoded = self._candidates(images, boxes, sizes)
        kmax = min(n, budget_bytes // int(nb.min())) if budget_bytes >= 0 else 0
        if kmax == 0:
            i = int(nb.argmin())
            raise ValueError(f"class {label}: not even one exemplar fits in {budget_bytes} bytes (the smallest "
                             f"costs {int(nb[i])} bytes for a {sizes[i, 0]}x{sizes[i, 1]} image at compress_ratio "
                             f"{self.compress_ratio}); raise the budget or the compress ratio")
        order = herding_order(features, kmax).cpu()
        keep = prefix_within(nb[order], budget_bytes)
        if keep == 0:  # the first pick alone is over the share: the first one that fits alone (see fit.py)
            order = herding_order(features, n).cpu()
            order, keep = order[first_within(nb[order], budget_bytes)].reshape(1), 1
        order = order[:keep]
        add = int(nb[order].sum())
        old_class_bytes = self.nbytes_per_class().get(label, 0) if present else 0
        new_total = self.nbytes - old_class_bytes + add
        if new_total > self.budget_bytes:
            raise ValueError(f"class {label}: adding {keep} exemplars ({add} bytes) would bring the memory to "
                             f"{new_total} bytes > budget {self.budget_bytes} bytes; reduce the other classes "
                             "first or pass a smaller class budget")
        parts = self._encode_kept(images, boxes, order, sizes, encoded)
        if present:
            self._drop(self._labels == label)
        self._append(parts, boxes[order], label, sizes[order])
        self.check_budget()
        return keep

    @codec_timed
    def _candidates(self, images, boxes: torch.Tensor, sizes: torch.Tensor):
        """(int64 Tensor(N,) bytes each candidate would cost, what :meth:`_encode_kept` may reuse)."""
        nb = torch.empty(sizes.shape[0], dtype=torch.long)
        for (H, W), pos in group_by_size(sizes):
            nb[pos] = exemplar_nbytes(boxes[pos], H, W, self.compress_ratio)
            if self.implicit_boxes and bool((boxes[pos] != torch.tensor([0, 0, W, H])).any()):
                raise ValueError(f"this memory stores whole-image boxes only (implicit_boxes); got "
                                 f"{boxes[pos][:2].tolist()}...")
        return nb, None

    @codec_timed
    def _encode_kept(self, images, boxes: torch.Tensor, order: torch.Tensor, sizes: torch.Tensor, encoded) -> dict:
        """Encode candidates ``order`` (herding order), one batch per image size: the payload chunks and
        the offsets of each exemplar's frame and crop inside their concatenation."""
        sel_sizes = sizes[order]
        frame_off = torch.empty(len(order), dtype=torch.long)
        crop_off = torch.empty(len(order), dtype=torch.long)
        chunks = []
        base = 0
        for (H, W), pos in group_by_size(sel_sizes):
            idx = order[pos]
            batch = select_images(images, idx)
            frame, crops = encode(batch, boxes[idx].to(batch.device), self.compress_ratio)
            fr_len = 3 * frame_npixels(boxes[idx], H, W, self.compress_ratio)
            cr_len = 3 * box_areas(boxes[idx])
            frame_off[pos] = base + torch.cumsum(fr_len, 0) - fr_len
            base += frame.numel()
            crop_off[pos] = base + torch.cumsum(cr_len, 0) - cr_len
            base += crops.numel()
            chunks += [frame.cpu(), crops.cpu()]
        return {"chunks": chunks, "frame_off": frame_off, "crop_off": crop_off}

    def _append(self, parts: dict, boxes: torch.Tensor, label: int, sizes: torch.Tensor) -> None:
        start = self._payload.numel()
        self._payload = torch.cat([self._payload] + parts["chunks"])
        self._frame_off = torch.cat([self._frame_off, start + parts["frame_off"]])
        self._crop_off = torch.cat([self._crop_off, start + parts["crop_off"]])
        self._boxes = torch.cat([self._boxes, boxes.to(torch.int16)])
        self._labels = torch.cat([self._labels, torch.full((len(boxes),), label, dtype=torch.long)])
        self._sizes = torch.cat([self._sizes, sizes])

    @codec_timed
    def compressed(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """What the memory would replay for uint8 Tensor(B,3,H,W) ``images`` with ``boxes``: uint8 Tensor(B,3,H,W)."""
        return compress(images, boxes, self.compress_ratio)

    def _drop(self, drop: torch.Tensor) -> None:
        """Remove exemplars where bool Tensor(N,) ``drop`` is True and compact the payload."""
        keep = ~drop
        fr_len, cr_len = self._frame_len()[keep], self._crop_len()[keep]
        fr_idx = packed_ranges(self._frame_off[keep], fr_len)
        cr_idx = packed_ranges(self._crop_off[keep], cr_len)
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
            label -> number of exemplars kept. A class whose share cannot hold its first exemplar keeps
            its first one that fits alone (:func:`cim_plugin.method.memory.fit.keep_within_shares`). Raises
            ValueError (memory unchanged) if none fits (remove the class with :meth:`remove_class`).
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
        u, inv = torch.unique(self._labels, return_inverse=True)
        share = torch.tensor([shares[c] for c in u.tolist()], dtype=torch.long)
        keep = keep_within_shares(self.exemplar_nbytes(), inv, share)  # insertion order = herding order
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

    def _one_size(self, indices) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(positions, their common (H, W)); ValueError if none or if their sizes differ."""
        idx = self._indices(indices)
        if idx.numel() == 0:
            raise ValueError("decode needs at least one index (the image size is unknown otherwise)")
        sizes = self._sizes[idx]
        if bool((sizes != sizes[0]).any()):
            raise ValueError(f"exemplars {idx.tolist()[:8]}... have different image sizes "
                             f"{torch.unique(sizes, dim=0).tolist()}; use decode_list()")
        return idx, tuple(sizes[0].tolist())

    @codec_timed
    def decode(self, indices) -> torch.Tensor:
        """Decode exemplars of one image size: uint8 Tensor(n, 3, H, W) on the CPU. ``indices``: int sequence /
        Tensor of exemplar positions; ValueError if their original sizes differ (use :meth:`decode_list`)."""
        idx, (H, W) = self._one_size(indices)
        boxes = self._boxes[idx].long()
        frame = self._payload[packed_ranges(self._frame_off[idx], 3 * frame_npixels(boxes, H, W, self.compress_ratio))]
        crops = self._payload[packed_ranges(self._crop_off[idx], 3 * box_areas(boxes))]
        return decode(frame, crops, boxes, (H, W), self.compress_ratio)

    def decode_one(self, i: int) -> torch.Tensor:
        """Decode one exemplar: uint8 Tensor(3, H, W)."""
        return self.decode([_as_int(i, "i")])[0]

    def size_groups(self, indices=None) -> Iterator[Tuple[Tuple[int, int], torch.Tensor]]:
        """Yield ((H, W), int64 Tensor of positions in ``indices``) for each distinct image size."""
        idx = self._indices(range(len(self)) if indices is None else indices)
        yield from group_by_size(self._sizes[idx])

    def decode_list(self, indices=None) -> List[torch.Tensor]:
        """Decode exemplars of any sizes (all if ``indices`` is None): list of uint8 Tensor(3, H_i, W_i),
        in the order of ``indices``; decoded in batches of one size, at most ``DECODE_CHUNK`` each."""
        idx = self._indices(range(len(self)) if indices is None else indices)
        out: List[torch.Tensor] = [None] * idx.numel()  # type: ignore[list-item]
        for pos in (part for _, group in self.size_groups(idx) for part in group.split(DECODE_CHUNK)):
            for p, img in zip(pos.tolist(), self.decode(idx[pos])):
                out[p] = img
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Plain dict of tensors and numbers (loadable with torch.load(weights_only=True))."""
        return {"version": _STATE_VERSION, "budget_bytes": self.budget_bytes,
                "compress_ratio": self.compress_ratio, "implicit_boxes": self.implicit_boxes, "payload": self._payload.clone(),
                "boxes": self._boxes.clone(), "labels": self._labels.clone(), "sizes": self._sizes.clone(),
                "frame_off": self._frame_off.clone(), "crop_off": self._crop_off.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; validates shapes, dtypes and offsets.

        A version-1 state (full low-res image per exemplar, key ``lowres_off``) is converted to the
        current format: its hole pixels are dropped, decoded images are unchanged.
        """
        if isinstance(state, dict) and state.get("codec", "raw") != self.codec:
            raise ValueError(f"a {state.get('codec')!r} memory state cannot be loaded into a {self.codec!r} memory "
                             "(use cim_plugin.method.memory.memory_from_state)")
        version, off_key = check_state(state, self._state_versions, self._state_extra)
        new = self._empty_from_state(state)
        new._payload, new._boxes = state["payload"].cpu().clone(), state["boxes"].cpu().clone()
        new._labels, new._sizes = state["labels"].cpu().clone(), state["sizes"].cpu().clone()
        new._frame_off, new._crop_off = state[off_key].cpu().clone(), state["crop_off"].cpu().clone()
        if len(new):
            if int(new._sizes.min()) <= 0 or int(new._sizes.max()) > INT16_MAX:
                raise ValueError("state sizes must be positive image sides")
            for (H, W), pos in group_by_size(new._sizes):
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

    _state_versions = (1, _STATE_VERSION)
    _state_extra: dict = {}

    def _empty_from_state(self, state: dict) -> "CompressedMemory":
        return CompressedMemory(state["budget_bytes"], state["compress_ratio"], state.get("implicit_boxes", False))

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the memory to one file, atomically (temporary file in the same folder + os.replace)."""
        save_state(self.state_dict(), path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "CompressedMemory":
        """Read a memory written by :meth:`save` (a JPEG memory's file gives a JpegMemory)."""
        return memory_from_state(torch.load(os.fspath(path), map_location="cpu", weights_only=True))


register(Codec("raw", "uint8 pixels",
               make=lambda budget_bytes, ratio, implicit, config, device: CompressedMemory(
                   budget_bytes, ratio, implicit_boxes=implicit),
               empty=lambda device: CompressedMemory(0)))
