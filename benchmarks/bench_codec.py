"""Throughput of the CIM codec on the CPU: CAM + box + encode, and decode (images/s); storage cost.

Feature maps are random tensors (the network forward is excluded): 64 channels 8x8 for 32/64 px
images (resnet32-like), 512 channels 7x7 for 224 px (resnet18-like). Batch 128, one thread unless
``--threads`` says otherwise. The cost table compares the stored bytes of centred boxes
(:func:`cim_plugin.method.codec.raw.exemplar_cost`) with the paper's ``a + (1 - a)/r`` full images.
The codec table puts the "jpeg" exemplar codec beside "raw" on the same images and boxes: storing a
batch into a memory (``select_class``: encoding, for JPEG the split of the tables, and herding of the
batch) and decoding it, with the mean stored bytes per exemplar (JPEG: the shared header's share
included). Its images are smooth noise (8x8 noise upsampled, plus mild pixel noise), closer to photos
than the uniform noise above, which JPEG cannot compress.
Run: ``python benchmarks/bench_codec.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from cim_plugin.method.codec.raw import decode, encode, exemplar_cost, upsample
from cim_plugin.method.masks.boxes import cam_to_boxes, center_boxes
from cim_plugin.method.masks.cam import cam_from_feature_maps
from cim_plugin.method.memory import CompressedMemory
from cim_plugin.method.memory.jpeg import JpegMemory


def _time(fn, repeats):
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def bench(size, channels, fmap, batch=128, ratio=4.0, threshold=0.6, num_classes=100, repeats=10):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    weight = torch.randn(num_classes, channels, generator=g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    # noise plus one Gaussian "object" per image along its class row, so boxes are object-sized
    yy, xx = torch.meshgrid(torch.arange(fmap), torch.arange(fmap), indexing="ij")
    centre = torch.rand(batch, 2, generator=g) * (fmap - 1)
    sigma = fmap / 6
    blob = torch.exp(-((yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2) / (2 * sigma ** 2))
    direction = torch.nn.functional.normalize(weight[labels], dim=1)
    fmaps = [0.3 * torch.randn(batch, channels, fmap, fmap, generator=g)
             + 8 * direction[:, :, None, None] * blob[:, None]]

    def enc():
        with torch.no_grad():
            cam = cam_from_feature_maps(fmaps, weight, labels, out_size=(size, size))
        boxes = cam_to_boxes(cam, threshold)
        return encode(images, boxes, ratio), boxes

    (frame, crops), boxes = enc()
    t_enc = _time(enc, repeats)
    t_dec = _time(lambda: decode(frame, crops, boxes, (size, size), ratio), repeats)
    frac = float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float().mean()) / size ** 2
    print(f"{size:4d}x{size:<4d} fmap {channels}x{fmap}x{fmap}  batch {batch}  mean box area {frac:.2f}:  "
          f"CAM+box+encode {batch / t_enc:9.0f} img/s   decode {batch / t_dec:9.0f} img/s")
    return batch / t_enc, batch / t_dec


def codec_table(sizes=(32, 64, 224), qualities=(50, 75, 90), batch=128, ratio=4.0, area=0.25, repeats=5):
    """Print store and decode throughput (images/s) and bytes per exemplar of raw vs JPEG exemplars."""
    print(f"exemplar codecs, batch {batch}, centred boxes of area {area}, r={ratio:g}: store (select_class) and "
          "decode img/s, stored bytes / exemplar")
    g = torch.Generator().manual_seed(0)
    for size in sizes:
        low = torch.randint(0, 256, (batch, 3, 8, 8), dtype=torch.uint8, generator=g)
        noise = torch.randint(-8, 9, (batch, 3, size, size), generator=g)
        images = (upsample(low, (size, size)).long() + noise).clamp(0, 255).to(torch.uint8)
        boxes = center_boxes(batch, size, size, area)
        feats = torch.randn(batch, 16, generator=g)
        memories = [("raw", lambda: CompressedMemory(1 << 40, ratio))]
        memories += [(f"jpeg q{q}", lambda q=q: JpegMemory(1 << 40, ratio, quality=q)) for q in qualities]
        for name, make in memories:
            mem = make()
            store = _time(lambda: mem.select_class(images, feats, boxes, 0, 1 << 40, replace=True), repeats)
            dec = _time(lambda: mem.decode(range(batch)), repeats)
            print(f"  {size:4d} px  {name:8s}  store {batch / store:8.0f} img/s   decode {batch / dec:8.0f} img/s   "
                  f"{mem.nbytes / batch:8.0f} B/exemplar ({mem.nbytes / batch / (3 * size * size):.3f} full images)")


def cost_table(sizes=(32, 64, 224), fractions=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0), ratio=4.0):
    """Print stored cost (full-image units) of centred boxes vs the paper's a + (1 - a)/r."""
    print(f"exemplar cost at r={ratio:g} (full images): stored / paper a+(1-a)/r, centred boxes")
    for size in sizes:
        cells = []
        for a in fractions:
            boxes = (center_boxes(1, size, size, a) if a > 0
                     else torch.tensor([[size // 2, size // 2, size // 2, size // 2]]))
            af = float((boxes[0, 2] - boxes[0, 0]) * (boxes[0, 3] - boxes[0, 1])) / size ** 2
            cells.append(f"a={af:.2f}: {float(exemplar_cost(boxes, size, size, ratio)[0]):.4f}/"
                         f"{af + (1 - af) / ratio:.4f}")
        print(f"  {size:4d} px  " + "  ".join(cells))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s)")
    bench(32, 64, 8, args.batch)
    enc64, _ = bench(64, 64, 8, args.batch)
    bench(224, 512, 7, args.batch, repeats=3)
    print(f"target CAM+box+encode >= 2000 img/s at 64x64: {'met' if enc64 >= 2000 else 'NOT met'}")
    cost_table()
    codec_table(batch=args.batch)


if __name__ == "__main__":
    main()
