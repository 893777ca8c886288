"""The "jpeg" exemplar codec (``"exemplar_codec": "jpeg"``): :class:`JpegMemory`, the ``"auto"`` quality
(:func:`choose_quality`) and its registration.

:class:`JpegMemory`: a CompressedMemory whose exemplar parts are JPEG streams.

An exemplar of an H x W image with box B holds
  * the **crop** (the pixels inside B) as a JPEG of (box_h, box_w), if B is not empty;
  * the **frame**: the whole low-resolution copy (h, w) = ``lowres_size(H, W, r)`` as a JPEG (its hole,
    the pixels only decoded pixels inside B read, is kept as it is: filling it with a flat colour made
    smooth test images both larger and worse around the box); no frame at all when the hole is the
    whole grid (a whole-image box: mask mode "full", MRDC's uniform compression);
  * the box, 4 x int16 (not counted when the memory's boxes are implicit, i.e. all whole-image).
Streams are stored without their tables (:mod:`cim_plugin.method.codec.jpeg`): per exemplar only the
entropy-coded scans, in ``payload`` at ``frame_off`` / ``crop_off`` with lengths ``frame_len`` /
``crop_len`` (0: no stream); the header (SOI .. SOS header, the quantisation and Huffman tables) is
held once per memory. Bytes held = scans + boxes + the header (once, while the memory is not empty).
Decoding rebuilds each stream (header + the size from the box + scan + EOI), decodes the streams in
one batch on ``device`` (the GPU when it is a CUDA device; CIM's runs use the CPU, see ``CIM.decode_device``)
and pastes the crops into the upsampled frames, as the raw codec does. What is herded is what is stored:
:meth:`JpegMemory.compressed`.

**``"jpeg_quality": "auto"``**: MRDC's choice of the JPEG quality without retraining (Wang et al., ICLR 2022).

On the first phase's model, for each quality q of :data:`QUALITY_GRID`, every new class is herded into
its byte share as JPEG exemplars of quality q (real encoded sizes, as the memory will do), and the
log-volume of the L2-normalised features F of the exemplars kept (:func:`log_volume`, log sqrt det F F^T)
is compared with that of the same exemplars uncompressed: compression that changes what the model sees
changes the volume (its artefacts can also spread the features, so the comparison is two-sided). The
chosen quality is the lowest one whose mean log-volume stays within :data:`TOLERANCE` (relative) of the
uncompressed one, else the highest of the grid. The paper gives no tolerance; this one is ours, and
comparing with the same exemplars uncompressed is our reading of "close to the uncompressed one".
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..codec.jpeg import check_quality, decode_streams, encode_streams, join_streams, split_streams, table_header
from ..codec.raw import check_uint8_images, downsample, frame_npixels, lowres_size, paste
from ..herding import herding_order
from ..masks.boxes import box_areas
from ..timing import codec_timed
from .packing import group_by_size, packed_ranges, select_images
from .raw import CompressedMemory
from .registry import Codec, register

__all__ = ["JpegMemory", "QUALITY_GRID", "TOLERANCE", "log_volume", "choose_quality"]

log = logging.getLogger(__name__)


class JpegMemory(CompressedMemory):
    """Byte-budgeted memory of CIM exemplars whose crop and low-res frame are JPEG streams.

    Args:
        budget_bytes, compress_ratio, implicit_boxes: as :class:`CompressedMemory`.
        quality: JPEG quality, int in [1, 100].
        device: where streams are decoded (the GPU when it is a CUDA device); candidates are encoded on the
            CPU on every device (libjpeg: one header for all streams, the same bytes on every device); stored
            bytes stay on the CPU.
    """

    codec = "jpeg"
    _state_versions = (2,)
    _state_extra = {"frame_len": (torch.long, 1), "crop_len": (torch.long, 1)}

    def __init__(self, budget_bytes: int, compress_ratio: float = 4.0, implicit_boxes: bool = False,
                 quality: int = 75, device="cpu"):
        super().__init__(budget_bytes, compress_ratio, implicit_boxes)
        self.quality = check_quality(quality)
        self.device = device
        self._header = table_header(self.quality)
        self._fr_len = torch.zeros(0, dtype=torch.long)
        self._cr_len = torch.zeros(0, dtype=torch.long)

    @property
    def decoder(self) -> str:
        """Which JPEG decoder this memory uses: "nvjpeg (cuda:K)" or "libjpeg (cpu)"."""
        device = torch.device(self.device)
        return f"nvjpeg ({device})" if device.type == "cuda" else "libjpeg (cpu)"

    def decoding_on(self, device) -> "JpegMemory":
        """This memory (its stored bytes shared, not copied) decoding on ``device``."""
        if torch.device(device) == torch.device(self.device):
            return self
        twin = copy.copy(self)
        twin.device = device
        return twin

    def __repr__(self) -> str:
        return "JpegMemory" + super().__repr__()[len("CompressedMemory"):-1] + f", quality={self.quality})"

    # -- sizes -------------------------------------------------------------------------------
    @property
    def shared_nbytes(self) -> int:
        """Bytes of the JPEG header (tables) held once for all exemplars."""
        return int(self._header.numel())

    @property
    def nbytes(self) -> int:
        """Bytes held: scans + boxes (unless implicit) + the shared header once (0 when empty)."""
        return super().nbytes + (self.shared_nbytes if len(self) else 0)

    def _frame_len(self) -> torch.Tensor:
        return self._fr_len.clone()

    def _crop_len(self) -> torch.Tensor:
        return self._cr_len.clone()

    # -- encoding ----------------------------------------------------------------------------
    def _encode_parts(self, images: torch.Tensor, boxes: torch.Tensor
                      ) -> Tuple[List[Optional[torch.Tensor]], List[Optional[torch.Tensor]]]:
        """Full JPEG streams (frame, crop) of uint8 Tensor(B,3,H,W) with boxes (B,4); None: no stream."""
        check_uint8_images(images)
        H, W = images.shape[-2:]
        boxes = boxes.long().cpu()
        images = images.cpu()  # encoded on the CPU on every device (see encode_streams): one copy, not one per crop
        frames: List[Optional[torch.Tensor]] = [None] * len(images)
        crops: List[Optional[torch.Tensor]] = [None] * len(images)
        has_frame = (frame_npixels(boxes, H, W, self.compress_ratio) > 0).nonzero().squeeze(1)
        if has_frame.numel():
            low = downsample(images[has_frame], self.compress_ratio)
            for i, s in zip(has_frame.tolist(), encode_streams(list(low), self.quality)):
                frames[i] = s
        has_crop = (box_areas(boxes) > 0).nonzero().squeeze(1).tolist()
        parts = [images[i, :, boxes[i, 1]:boxes[i, 3], boxes[i, 0]:boxes[i, 2]] for i in has_crop]
        for i, s in zip(has_crop, encode_streams(parts, self.quality)):
            crops[i] = s
        return frames, crops

    def _decode_parts(self, frames, crops, boxes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Images uint8 Tensor(B,3,H,W) on ``device`` from full streams (None: no stream) and boxes (B,4)."""
        H, W = size
        h, w = lowres_size(H, W, self.compress_ratio)
        boxes = boxes.long().cpu()
        low = torch.zeros(len(boxes), 3, h, w, dtype=torch.uint8, device=self.device)
        with_frame = [i for i, s in enumerate(frames) if s is not None]
        with_crop = [i for i, s in enumerate(crops) if s is not None]
        # One decoder call for frames and crops: its outputs stay referenced until they are copied below, so no
        # block freed between two GPU decodes can be reused under the decoder (see decode_streams).
        decoded = decode_streams([frames[i] for i in with_frame] + [crops[i] for i in with_crop], self.device)
        if with_frame:
            low[with_frame] = torch.stack(decoded[: len(with_frame)])
        flat = [c.permute(1, 2, 0).reshape(-1) for c in decoded[len(with_frame):]]
        crop_bytes = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.uint8, device=low.device)
        out = paste(low, crop_bytes, boxes.to(low.device), (H, W))
        del decoded
        return out

    @codec_timed
    def compressed(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """What the memory would replay for uint8 Tensor(B,3,H,W) with boxes (B,4): uint8 Tensor(B,3,H,W), CPU."""
        return self._decode_parts(*self._encode_parts(images, boxes), boxes, tuple(images.shape[-2:])).cpu()

    @codec_timed
    def _candidates(self, images, boxes: torch.Tensor, sizes: torch.Tensor):
        """Encode every candidate (one batch per size): its real cost, and its scans for :meth:`_encode_kept`."""
        super()._candidates(images, boxes, sizes)  # checks implicit boxes
        n = sizes.shape[0]
        fr_scans: List[torch.Tensor] = [torch.zeros(0, dtype=torch.uint8)] * n
        cr_scans = list(fr_scans)
        for _, pos in group_by_size(sizes):
            frames, crops = self._encode_parts(select_images(images, pos), boxes[pos])
            for streams, scans in ((frames, fr_scans), (crops, cr_scans)):
                have = [k for k, s in enumerate(streams) if s is not None]
                for k, scan in zip(have, split_streams([streams[k] for k in have], self._header)):
                    scans[int(pos[k])] = scan
        fr_len = torch.tensor([s.numel() for s in fr_scans], dtype=torch.long)
        cr_len = torch.tensor([s.numel() for s in cr_scans], dtype=torch.long)
        return fr_len + cr_len + self._box_bytes(boxes, sizes), (fr_scans, cr_scans, fr_len, cr_len)

    @codec_timed
    def _encode_kept(self, images, boxes, order, sizes, encoded) -> dict:
        fr_scans, cr_scans, fr_len, cr_len = encoded
        idx = order.tolist()
        chunks = [fr_scans[i] for i in idx] + [cr_scans[i] for i in idx]
        fl, cl = fr_len[order], cr_len[order]
        frame_off = torch.cumsum(fl, 0) - fl
        crop_off = int(fl.sum()) + torch.cumsum(cl, 0) - cl
        return {"chunks": chunks, "frame_off": frame_off, "crop_off": crop_off, "frame_len": fl, "crop_len": cl}

    def _append(self, parts: dict, boxes, label, sizes) -> None:
        super()._append(parts, boxes, label, sizes)
        self._fr_len = torch.cat([self._fr_len, parts["frame_len"]])
        self._cr_len = torch.cat([self._cr_len, parts["crop_len"]])

    def _drop(self, drop: torch.Tensor) -> None:
        fr_len, cr_len = self._fr_len[~drop], self._cr_len[~drop]
        super()._drop(drop)
        self._fr_len, self._cr_len = fr_len, cr_len

    # -- decoding ----------------------------------------------------------------------------
    def _streams(self, idx: torch.Tensor, off: torch.Tensor, length: torch.Tensor, sizes
                 ) -> List[Optional[torch.Tensor]]:
        """Full streams of exemplars ``idx`` (None where the length is 0)."""
        out: List[Optional[torch.Tensor]] = [None] * idx.numel()
        have = (length[idx] > 0).nonzero().squeeze(1)
        if have.numel():
            sel = idx[have]
            flat = self._payload[packed_ranges(off[sel], length[sel])]
            scans = flat.split(length[sel].tolist())
            for k, s in zip(have.tolist(), join_streams(self._header, scans, [sizes[k] for k in have.tolist()])):
                out[k] = s
        return out

    @codec_timed
    def decode(self, indices) -> torch.Tensor:
        """Decode exemplars of one image size: uint8 Tensor(n, 3, H, W) on the CPU (decoded on ``device``)."""
        idx, (H, W) = self._one_size(indices)
        boxes = self._boxes[idx].long()
        low = [lowres_size(H, W, self.compress_ratio)] * idx.numel()
        box_hw = torch.stack([boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], 1).tolist()
        frames = self._streams(idx, self._frame_off, self._fr_len, low)
        crops = self._streams(idx, self._crop_off, self._cr_len, [tuple(s) for s in box_hw])
        return self._decode_parts(frames, crops, boxes, (H, W)).cpu()

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update({"codec": self.codec, "quality": self.quality, "header": self._header.clone(),
                      "frame_len": self._fr_len.clone(), "crop_len": self._cr_len.clone()})
        return state

    def _empty_from_state(self, state: dict) -> "JpegMemory":
        new = JpegMemory(state["budget_bytes"], state["compress_ratio"], state.get("implicit_boxes", False),
                         quality=state.get("quality", 75), device=getattr(self, "device", "cpu"))
        header = state.get("header")
        if not isinstance(header, torch.Tensor) or header.dtype != torch.uint8 or header.dim() != 1:
            raise ValueError("a jpeg memory state needs 'header', a 1-D uint8 tensor")
        join_streams(header, [], [])  # parses it: ValueError if it is not a JPEG header
        new._header = header.cpu().clone()
        new._fr_len, new._cr_len = state["frame_len"].cpu().clone(), state["crop_len"].cpu().clone()
        if len(new._fr_len) and int(torch.minimum(new._fr_len, new._cr_len).min()) < 0:
            raise ValueError("state stream lengths must be >= 0")
        return new


QUALITY_GRID = (10, 20, 30, 40, 50, 60, 70, 80, 90)
TOLERANCE = 0.05  # relative change of log-volume allowed against the uncompressed exemplars
RIDGE = 1e-4  # added to the Gram matrix's diagonal: more exemplars than feature dimensions stay finite


def log_volume(features: torch.Tensor) -> float:
    """log sqrt det(F F^T + RIDGE I) of the L2-normalised rows of float Tensor(k, D) (<= 0 for unit rows)."""
    f = F.normalize(features.detach().double(), dim=1)
    gram = f @ f.T + RIDGE * torch.eye(f.shape[0], dtype=f.dtype, device=f.device)
    return 0.5 * float(torch.linalg.slogdet(gram)[1])


def choose_quality(classes: Sequence[Tuple[int, torch.Tensor, torch.Tensor]], class_bytes: int, total_classes: int,
                   config: Mapping[str, Any], features_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   grid: Sequence[int] = QUALITY_GRID, tolerance: float = TOLERANCE) -> Dict:
    """The quality MRDC's criterion picks, and the scores behind it (also logged).

    Args:
        classes: per new class (label, uint8 images Tensor(N, 3, H, W), boxes Tensor(N, 4)).
        class_bytes: bytes one class may hold; its part of the shared JPEG header (one of
            ``total_classes`` parts) is taken off, as the memory's class shares are.
        config: CIM keys (compress_ratio, cim_mask) of the memory to be made.
        features_of: (uint8 images, labels) -> float features (N, D) of the phase's model.
    Returns:
        {"quality": chosen int, "scores": {q: mean log-volume of the JPEG exemplars}, "reference": {q:
        mean log-volume of the same exemplars uncompressed}, "exemplars": {q: exemplars kept, all classes}}.
    """
    implicit = config.get("cim_mask") == "full"
    share = class_bytes - -(-JpegMemory(0).shared_nbytes // total_classes)
    scores: Dict[int, float] = {}
    reference: Dict[int, float] = {}
    kept: Dict[int, int] = {}
    for q in sorted(grid):
        memory = JpegMemory(1 << 62, config.get("compress_ratio", 4.0), implicit_boxes=implicit, quality=q)
        vols: List[float] = []
        refs: List[float] = []
        kept[q] = 0
        for label, images, boxes in classes:
            labels = torch.full((len(images),), label, dtype=torch.long)
            features = features_of(memory.compressed(images, boxes), labels)
            k = memory.select_class(images, features, boxes, label, share, replace=True)
            pick = herding_order(features, k)
            vols.append(log_volume(features[pick]))
            refs.append(log_volume(features_of(images[pick.to(images.device)], labels[:k])))
            kept[q] += k
        scores[q], reference[q] = sum(vols) / len(vols), sum(refs) / len(refs)
    ok = [q for q in sorted(grid) if abs(scores[q] - reference[q]) <= tolerance * abs(reference[q])]
    chosen = ok[0] if ok else max(grid)
    log.info("jpeg_quality auto: log-volume per quality (JPEG / uncompressed, exemplars) %s -> quality %d",
             {q: (round(scores[q], 2), round(reference[q], 2), kept[q]) for q in sorted(grid)}, chosen)
    return {"quality": chosen, "scores": scores, "reference": reference, "exemplars": kept}


register(Codec("jpeg", "JPEG streams of the box crop and the low-resolution frame",
               make=lambda budget_bytes, ratio, implicit, config, device: JpegMemory(
                   budget_bytes, ratio, implicit_boxes=implicit, quality=config.get("jpeg_quality", 75), device=device),
               empty=lambda device: JpegMemory(0, device=device),
               quality_key="jpeg_quality", quality_default=75, quality_grid=QUALITY_GRID, choose_quality=choose_quality,
               augments=True, variant_suffix="-jpeg",
               budget_note=" as JPEG at quality {quality} (the first training image; {shared} bytes of tables are held "
                           "once for the memory)"))
