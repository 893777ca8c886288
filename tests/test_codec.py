import pytest
import torch

from cim_plugin.boxes import boxes_to_masks, random_boxes
from cim_plugin.codec import (compress, decode, degrade, downsample, encode, exemplar_cost, exemplar_nbytes,
                              lowres_size, upsample)


def _images(b, h, w, seed=0):
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_lowres_size():
    assert lowres_size(32, 32, 4) == (16, 16)
    assert lowres_size(224, 224, 4.0) == (112, 112)
    assert lowres_size(5, 7, 4) == (3, 4)     # 2.5 -> 3, 3.5 -> 4 (half up)
    assert lowres_size(1, 1, 100) == (1, 1)
    assert lowres_size(64, 64, 1) == (64, 64)
    with pytest.raises(ValueError, match=">= 1"):
        lowres_size(8, 8, 0.5)


def test_roundtrip_inside_exact_outside_upsampled():
    x = _images(6, 20, 24)
    boxes = random_boxes(6, 20, 24, 0.3, generator=torch.Generator().manual_seed(1))
    lowres, crops = encode(x, boxes, 4)
    assert lowres.shape == (6, 3, 10, 12) and lowres.dtype == torch.uint8
    assert crops.dtype == torch.uint8 and crops.numel() == 3 * int(boxes_to_masks(boxes, 20, 24).sum())
    y = decode(lowres, crops, boxes, (20, 24))
    m = boxes_to_masks(boxes, 20, 24).unsqueeze(1).expand_as(x)
    assert torch.equal(y[m], x[m])
    ref = upsample(downsample(x, 4), (20, 24))
    assert torch.equal(y[~m], ref[~m])
    assert torch.equal(decode(lowres, crops, boxes, (20, 24)), y)      # deterministic
    assert torch.equal(compress(y, boxes, 4)[m], x[m])
    # crop layout: image 0's crop first, HWC row-major
    x0, y0, x1, y1 = boxes[0].tolist()
    first = x[0, :, y0:y1, x0:x1].permute(1, 2, 0).reshape(-1)
    assert torch.equal(crops[:first.numel()], first)


def test_full_box_lossless_and_empty_box_is_pure_downsampling():
    x = _images(3, 16, 12, seed=2)
    full = torch.tensor([[0, 0, 12, 16]]).repeat(3, 1)
    assert torch.equal(compress(x, full, 4), x)
    empty = torch.tensor([[5, 5, 5, 5]]).repeat(3, 1)
    lowres, crops = encode(x, empty, 4)
    assert crops.numel() == 0
    assert torch.equal(decode(lowres, crops, empty, (16, 12)), upsample(downsample(x, 4), (16, 12)))


def test_downsample_close_to_float_reference():
    x = _images(2, 32, 32, seed=3)
    d = downsample(x, 4)
    ref = torch.nn.functional.interpolate(x.float(), size=(16, 16), mode="bilinear", antialias=True,
                                          align_corners=False)
    assert (d.float() - ref).abs().max() <= 1.0
    const = torch.full((1, 3, 30, 30), 77, dtype=torch.uint8)
    assert torch.equal(downsample(const, 4), torch.full((1, 3, 15, 15), 77, dtype=torch.uint8))
    assert torch.equal(upsample(downsample(const, 4), (30, 30)), const)


def test_degrade_matches_uint8_codec_and_is_differentiable():
    x = _images(2, 16, 16, seed=4)
    xf = (x.float() / 255).requires_grad_(True)
    d = degrade(xf, 4)
    assert d.shape == xf.shape
    assert ((d * 255) - upsample(downsample(x, 4), (16, 16)).float()).abs().max() <= 2.0
    d.square().sum().backward()
    assert xf.grad is not None and float(xf.grad.abs().sum()) > 0


def test_nbytes_and_cost():
    boxes = torch.tensor([[0, 0, 32, 32], [0, 0, 0, 0], [4, 4, 20, 12]])
    nb = exemplar_nbytes(boxes, 32, 32, 4)
    assert nb.dtype == torch.int64
    assert nb.tolist() == [3 * 1024 + 3 * 256 + 8, 3 * 256 + 8, 3 * 128 + 3 * 256 + 8]
    torch.testing.assert_close(exemplar_cost(boxes, 32, 32, 4), nb.float() / 3072)


def test_bad_inputs():
    x = _images(2, 8, 8)
    with pytest.raises(TypeError, match="uint8"):
        encode(x.float(), torch.zeros(2, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="boxes"):
        encode(x, torch.zeros(3, 4, dtype=torch.long), 4)
    lowres, crops = encode(x, torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]]), 4)
    with pytest.raises(ValueError, match="crops has"):
        decode(lowres, crops[:-3], torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]]), (8, 8))


def test_channels_last_input_encodes_identically():
    x = _images(4, 18, 14, seed=5)
    boxes = random_boxes(4, 18, 14, 0.4, generator=torch.Generator().manual_seed(6))
    a = encode(x, boxes, 4)
    b = encode(x.contiguous(memory_format=torch.channels_last), boxes, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].is_contiguous()
    assert decode(*a, boxes, (18, 14)).is_contiguous()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_roundtrip_box_exact_and_close_to_cpu():
    x = _images(4, 32, 32, seed=7)
    boxes = random_boxes(4, 32, 32, 0.3, generator=torch.Generator().manual_seed(8))
    y = compress(x.cuda(), boxes.cuda(), 4)
    m = boxes_to_masks(boxes, 32, 32).unsqueeze(1).expand_as(x)
    assert y.device.type == "cuda" and torch.equal(y.cpu()[m], x[m])
    assert (y.cpu().int() - compress(x, boxes, 4).int()).abs().max() <= 2
