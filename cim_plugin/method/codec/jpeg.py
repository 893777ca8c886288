"""JPEG streams of exemplar parts, with the tables held once (the "jpeg" exemplar codec).

A baseline JPEG stream (torchvision's ``encode_jpeg``, libjpeg's standard Huffman tables) is
``SOI, APP0, DQT..., SOF0, DHT..., SOS header, entropy-coded scan, EOI``. Everything before the scan
is the same for every RGB image of one quality except the image's height and width inside SOF0. So a
stream is split (:func:`split_streams`) into

  * the **header**: the bytes from SOI to the end of the SOS header, with SOF0's height and width set
    to 0 -- identical for all images of a quality (checked), held once per memory;
  * the **scan**: the entropy-coded bytes between the SOS header and EOI, held per exemplar;

and :func:`join_streams` rebuilds the exact stream from the header, the scan and the image size
(which the memory knows from the box and the image size). Streams are uint8 1-D tensors on the CPU;
images are uint8 Tensor(3, h, w).
"""

from __future__ import annotations

import operator
from typing import List, Sequence, Tuple

import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

__all__ = ["check_quality", "encode_streams", "decode_streams", "split_streams", "join_streams",
           "header_of", "table_header"]

EOI = torch.tensor([0xFF, 0xD9], dtype=torch.uint8)
_SOF_MARKERS = {0xC0, 0xC1, 0xC2}


def check_quality(quality) -> int:
    """``quality`` as an int in [1, 100] (ValueError otherwise)."""
    try:
        q = operator.index(quality)
    except TypeError:
        q = None
    if q is None or isinstance(quality, bool) or not 1 <= q <= 100:
        raise ValueError(f"JPEG quality must be an integer in [1, 100], got {quality!r}")
    return q


def encode_streams(images: Sequence[torch.Tensor], quality: int) -> List[torch.Tensor]:
    """JPEG-encode uint8 images (3, h_i, w_i) (any device, any sizes >= 1): list of uint8 1-D CPU streams.

    Always encoded on the CPU (libjpeg, 4:2:0 chroma), whatever the images' device: torchvision's GPU
    encoder (nvJPEG) writes 4:4:4 streams with other tables, so GPU-encoded streams would not share the
    memory's header (:func:`table_header`), and the stored bytes, hence the exemplars that fit a budget,
    would depend on the device. Decoding may run on the GPU (:func:`decode_streams`)."""
    if len(images) == 0:
        return []
    streams = encode_jpeg([im.detach().cpu().contiguous() for im in images], quality=check_quality(quality))
    return [s.cpu() for s in streams]


def decode_streams(streams: Sequence[torch.Tensor], device="cpu") -> List[torch.Tensor]:
    """Decode JPEG streams (uint8 1-D, CPU) on ``device`` (a CUDA device decodes on the GPU with nvJPEG, batched;
    any other device decodes with libjpeg on the CPU and moves the images there): list of uint8 Tensor(3, h_i,
    w_i) on that device.

    On CUDA the device is synchronised before the images are handed back: torchvision's GPU decoder works on
    streams of its own, and the caching allocator may give blocks freed by the caller's stream to the decoder's
    outputs (or reuse the outputs' blocks) while work queued on another stream still reads them, which shows up
    as corrupted images in a later decode (torchvision's known stream-ordering hazard of batched GPU decoding).
    CIM's runs decode on the CPU (:attr:`cim_plugin.method.cim.CIM.decode_device`); this path is for callers
    that ask for the GPU."""
    if len(streams) == 0:
        return []
    device = torch.device(device)
    if device.type == "cuda":
        out = decode_jpeg(list(streams), mode=ImageReadMode.RGB, device=device)
        torch.cuda.synchronize(device)
        return list(out)
    out = decode_jpeg(list(streams), mode=ImageReadMode.RGB)
    return [im.to(device) for im in out]


def _layout(stream: torch.Tensor) -> Tuple[int, int]:
    """(offset of SOF's height field, length of the header up to the end of the SOS header)."""
    b = bytes(stream[:4096].tolist()) if stream.numel() > 4096 else bytes(stream.tolist())
    if b[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no SOI marker)")
    pos, sof = 2, -1
    while pos + 4 <= len(b):
        if b[pos] != 0xFF:
            raise ValueError(f"malformed JPEG header at byte {pos}")
        marker, length = b[pos + 1], int.from_bytes(b[pos + 2:pos + 4], "big")
        if marker in _SOF_MARKERS:
            sof = pos + 5  # marker (2), length (2), precision (1), then height (2), width (2)
        if marker == 0xDA:
            if sof < 0:
                raise ValueError("JPEG stream without a SOF0..SOF2 segment")
            return sof, pos + 2 + length
        pos += 2 + length
    raise ValueError("JPEG header without a SOS segment (or longer than 4 kB)")


def header_of(stream: torch.Tensor) -> torch.Tensor:
    """The shared header of one stream: uint8 1-D, SOI .. end of SOS header, SOF's height and width zeroed."""
    sof, end = _layout(stream)
    header = stream[:end].clone()
    header[sof:sof + 4] = 0
    return header


def split_streams(streams: Sequence[torch.Tensor], header: torch.Tensor) -> List[torch.Tensor]:
    """The scans of ``streams``: list of uint8 1-D tensors (the bytes between the header and EOI).

    Raises ValueError if a stream's header (height and width aside) differs from ``header``, e.g.
    streams of another quality or of another encoder."""
    scans = []
    for i, s in enumerate(streams):
        h = header_of(s)
        if not torch.equal(h, header):
            raise ValueError(f"JPEG stream {i} has other tables than the memory's shared header (another quality "
                             "or encoder?)")
        if s.numel() < h.numel() + 2 or not torch.equal(s[-2:], EOI):
            raise ValueError(f"JPEG stream {i} does not end with EOI")
        scans.append(s[h.numel():-2].clone())
    return scans


def join_streams(header: torch.Tensor, scans: Sequence[torch.Tensor], sizes: Sequence[Tuple[int, int]]
                 ) -> List[torch.Tensor]:
    """Inverse of :func:`split_streams`: the full streams of ``scans`` for images of ``sizes`` (h, w)."""
    if len(scans) != len(sizes):
        raise ValueError(f"got {len(scans)} scans but {len(sizes)} sizes")
    sof, _ = _layout(header)
    out = []
    for scan, (h, w) in zip(scans, sizes):
        head = header.clone()
        head[sof:sof + 4] = torch.tensor([h >> 8, h & 255, w >> 8, w & 255], dtype=torch.uint8)
        out.append(torch.cat([head, scan, EOI]))
    return out


def table_header(quality: int) -> torch.Tensor:
    """The shared header (:func:`header_of`) of every RGB stream of ``quality``, from an 8x8 image."""
    return header_of(encode_streams([torch.zeros(3, 8, 8, dtype=torch.uint8)], quality)[0])
