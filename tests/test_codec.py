import pytest
import torch
import torch.nn.functional as F

from cim_plugin.method.codec.raw import (
    box_nbytes,
    compress,
    decode,
    degrade,
    downsample,
    encode,
    exemplar_cost,
    exemplar_nbytes,
    frame_from_lowres,
    frame_mask,
    frame_npixels,
    lowres_hole,
    lowres_size,
    upsample,
)
from cim_plugin.method.masks.boxes import boxes_to_masks, center_boxes, random_boxes


def _images(b, h, w, seed=0):
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _old_decode(x, boxes, ratio):
    """The previous format (whole low-res image + crop): upsample(downsample(x)) outside the box, x inside."""
    ref = upsample(downsample(x, ratio), (x.shape[2], x.shape[3]))
    m = boxes_to_masks(boxes, x.shape[2], x.shape[3]).unsqueeze(1).expand_as(x)
    ref[m] = x[m]
    return ref


def _boxes_zoo(n, H, W, seed):
    """Random boxes (any corners, so many are thin or empty) plus empty, full, 1-pixel and border boxes."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randint(0, W + 1, (n, 2), generator=g).sort(1).values
    ys = torch.randint(0, H + 1, (n, 2), generator=g).sort(1).values
    rand = torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)
    special = torch.tensor([[0, 0, W, H], [0, 0, 0, 0], [W, H, W, H], [W // 2, H // 2, W // 2, H // 2],
                            [0, 0, 1, 1], [W - 1, H - 1, W, H], [W // 2, H // 3, W // 2 + 1, H // 3 + 1],
                            [0, 0, W, 1], [0, H - 1, W, H], [0, 0, 1, H], [W - 1, 0, W, H],
                            [0, 0, W, H // 2], [W // 3, 0, W, H], [1, 1, W - 1, H - 1], [0, 2, W, H]])
    ok = (special[:, 0] <= special[:, 2]) & (special[:, 1] <= special[:, 3]) & (special.min(1).values >= 0)
    return torch.cat([rand, special[ok]])


def test_lowres_size():
    assert lowres_size(32, 32, 4) == (16, 16)
    assert lowres_size(224, 224, 4.0) == (112, 112)
    assert lowres_size(5, 7, 4) == (3, 4)     # 2.5 -> 3, 3.5 -> 4 (half up)
    assert lowres_size(1, 1, 100) == (1, 1)
    assert lowres_size(64, 64, 1) == (64, 64)
    with pytest.raises(ValueError, match=">= 1"):
        lowres_size(8, 8, 0.5)


@pytest.mark.parametrize("ratio", [2, 4, 9, 16])
@pytest.mark.parametrize("H,W", [(32, 32), (17, 23), (9, 5), (1, 7), (3, 3), (64, 31)])
def test_decode_identical_to_previous_format(H, W, ratio):
    boxes = _boxes_zoo(40, H, W, seed=H * W + ratio)
    x = _images(boxes.shape[0], H, W, seed=ratio)
    frame, crops = encode(x, boxes, ratio)
    assert frame.dtype == torch.uint8 and frame.dim() == 1
    assert frame.numel() == 3 * int(frame_npixels(boxes, H, W, ratio).sum())
    assert crops.numel() == 3 * int(boxes_to_masks(boxes, H, W).sum())
    ref = _old_decode(x, boxes, ratio)
    y = decode(frame, crops, boxes, (H, W), ratio)
    assert torch.equal(y, ref)
    assert torch.equal(compress(x, boxes, ratio), ref)
    # the unstored (hole) low-res pixels really are irrelevant: garbage there changes nothing
    low = downsample(x, ratio)
    hole = ~frame_mask(boxes, H, W, ratio).unsqueeze(1).expand_as(low)
    low[hole] = torch.randint(0, 256, (int(hole.sum()),), dtype=torch.uint8)
    assert torch.equal(decode(low, crops, boxes, (H, W)), ref)
    assert torch.equal(frame_from_lowres(low, boxes, (H, W), ratio), frame)


def _exact_free_interval(N, n):
    """Brute force from torch's own float weights: for every box [a0, a1) of a length-N axis, the
    low-res indices read (weight != 0) by no output index outside the box. bool Tensor(P, n), a0s, a1s."""
    if n == N:
        reads = torch.eye(N, dtype=torch.bool)
    else:
        basis = torch.eye(n, dtype=torch.float64).view(n, 1, n, 1)
        reads = (F.interpolate(basis, size=(N, 1), mode="bilinear", align_corners=False)[:, 0, :, 0] != 0).T
    a0, a1 = torch.triu_indices(N + 1, N + 1)
    idx = torch.arange(N)
    outside = (idx < a0[:, None]) | (idx >= a1[:, None])          # (P, N)
    used = (outside.double() @ reads.double()) > 0                # (P, n)
    return ~used, a0, a1


@pytest.mark.parametrize("N,ratio", [(16, 4), (32, 4), (64, 4), (32, 16), (64, 16), (17, 4), (33, 9), (23, 2),
                                     (20, 1), (20, 1.1)])
def test_hole_is_safe_and_tight(N, ratio):
    free, a0, a1 = _exact_free_interval(N, lowres_size(N, N, ratio)[0])
    boxes = torch.stack([a0, a0, a1, a1], 1)
    hole = lowres_hole(boxes, N, N, ratio)
    n = free.shape[1]
    ours = (torch.arange(n) >= hole[:, 0:1]) & (torch.arange(n) < hole[:, 2:3])
    assert torch.equal(hole[:, 0], hole[:, 1]) and torch.equal(hole[:, 2], hole[:, 3])
    assert bool((hole[:, 2] >= hole[:, 0]).all())
    assert not bool((ours & ~free).any())                 # never drops a pixel that is read
    extra = (free & ~ours).sum(1)
    if N % 4 == 0 and ratio in (4, 16) or ratio == 1:
        assert int(extra.max()) == 0                      # exact where no sample point is near a pixel centre
    else:
        assert int(extra.max()) <= 2 and float(extra.float().mean()) < 0.5   # at most one per side


def test_full_box_costs_one_image_and_is_lossless():
    for H, W, ratio in [(16, 12, 4), (32, 32, 9), (7, 5, 2), (224, 224, 16)]:
        x = _images(3, H, W, seed=2)
        full = torch.tensor([[0, 0, W, H]]).repeat(3, 1)
        frame, crops = encode(x, full, ratio)
        assert frame.numel() == 0 and crops.numel() == 3 * 3 * H * W
        assert torch.equal(decode(frame, crops, full, (H, W), ratio), x)
        assert exemplar_nbytes(full, H, W, ratio).tolist() == [3 * H * W] * 3  # a whole-image box is not stored
    # ratio 1 (no down-sampling): every box costs exactly one image + its box (8 bytes, none if whole)
    boxes = torch.cat([_boxes_zoo(10, 12, 10, seed=3), torch.tensor([[0, 0, 10, 12]])])
    whole = (boxes == torch.tensor([0, 0, 10, 12])).all(dim=1)
    assert whole[-1] and torch.equal(box_nbytes(boxes, 12, 10), torch.where(whole, 0, 8))
    assert torch.equal(exemplar_nbytes(boxes, 12, 10, 1), 3 * 120 + box_nbytes(boxes, 12, 10))


def test_empty_box_stores_the_whole_lowres_image():
    x = _images(3, 16, 12, seed=2)
    for empty in ([5, 5, 5, 5], [0, 0, 0, 16], [0, 7, 12, 7]):
        boxes = torch.tensor([empty]).repeat(3, 1)
        frame, crops = encode(x, boxes, 4)
        assert crops.numel() == 0
        assert torch.equal(frame, downsample(x, 4).permute(0, 2, 3, 1).reshape(-1))   # HWC, row-major
        assert torch.equal(decode(frame, crops, boxes, (16, 12), 4), upsample(downsample(x, 4), (16, 12)))


def test_layout_frame_then_crop_per_image():
    x = _images(2, 20, 24, seed=1)
    boxes = torch.tensor([[4, 6, 18, 14], [0, 0, 24, 5]])
    frame, crops = encode(x, boxes, 4)
    low = downsample(x, 4)
    keep0 = frame_mask(boxes, 20, 24, 4)[0]
    n0 = int(keep0.sum())
    assert torch.equal(frame[:3 * n0], low[0].permute(1, 2, 0)[keep0].reshape(-1))
    x0, y0, x1, y1 = boxes[0].tolist()
    first = x[0, :, y0:y1, x0:x1].permute(1, 2, 0).reshape(-1)
    assert torch.equal(crops[:first.numel()], first)
    assert lowres_hole(boxes, 20, 24, 4).tolist() == [[3, 4, 8, 6], [0, 0, 12, 2]]


def test_nbytes_and_cost():
    boxes = torch.tensor([[0, 0, 32, 32], [0, 0, 0, 0], [4, 4, 20, 12]])
    nb = exemplar_nbytes(boxes, 32, 32, 4)
    assert nb.dtype == torch.int64
    # box [4,20)x[4,12) -> low-res hole columns [3, 9), rows [3, 5): 12 pixels not stored
    assert nb.tolist() == [3 * 1024, 3 * 256 + 8, 3 * 128 + 3 * (256 - 12) + 8]
    torch.testing.assert_close(exemplar_cost(boxes, 32, 32, 4), nb.float() / 3072)


@pytest.mark.parametrize("ratio", [4, 16])
def test_cost_approaches_paper_formula_at_224(ratio):
    fracs = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    boxes = torch.cat([center_boxes(1, 224, 224, a) for a in fracs])
    a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 224 ** 2
    paper = a + (1 - a) / ratio
    cost = exemplar_cost(boxes, 224, 224, ratio).double()
    assert float((cost - paper).abs().max()) < 0.01
    old_cost = a + 1 / ratio                      # crop + whole low-res image (the previous format)
    part = a < 1
    assert bool((cost[part] < old_cost[part] - 0.5 * (a / ratio)[part]).all())  # most of the box's share saved


def test_bad_inputs():
    x = _images(2, 8, 8)
    box = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]])
    with pytest.raises(TypeError, match="uint8"):
        encode(x.float(), torch.zeros(2, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="boxes"):
        encode(x, torch.zeros(3, 4, dtype=torch.long), 4)
    frame, crops = encode(x, box, 4)
    with pytest.raises(ValueError, match="crops has"):
        decode(frame, crops[:-3], box, (8, 8), 4)
    with pytest.raises(ValueError, match="frame has"):
        decode(frame[:-3], crops, box, (8, 8), 4)
    with pytest.raises(ValueError, match="needs the compress ratio"):
        decode(frame, crops, box, (8, 8))
    with pytest.raises(TypeError, match="frame must be"):
        decode(frame.float(), crops, box, (8, 8), 4)
    with pytest.raises(ValueError, match="lowres has size"):
        decode(downsample(x, 4), crops, box, (8, 8), 16)
    with pytest.raises(ValueError, match="size must be"):
        decode(frame, crops, box, (8, 0), 4)


def test_channels_last_input_encodes_identically():
    x = _images(4, 18, 14, seed=5)
    boxes = random_boxes(4, 18, 14, 0.4, generator=torch.Generator().manual_seed(6))
    a = encode(x, boxes, 4)
    b = encode(x.contiguous(memory_format=torch.channels_last), boxes, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert decode(*a, boxes, (18, 14), 4).is_contiguous()


def test_downsample_close_to_float_reference():
    x = _images(2, 32, 32, seed=3)
    d = downsample(x, 4)
    ref = torch.nn.functional.interpolate(x.float(), size=(16, 16), mode="bilinear", antialias=True,
                                          align_corners=False)
    assert (d.float() - ref).abs().max() <= 1.0
    const = torch.full((1, 3, 30, 30), 77, dtype=torch.uint8)
    assert torch.equal(downsample(const, 4), torch.full((1, 3, 15, 15), 77, dtype=torch.uint8))
    assert torch.equal(upsample(downsample(const, 4), (30, 30)), const)
    assert downsample(_images(2, 3, 3), 9).shape == (2, 3, 1, 1)   # 1x1 output (torch asserts on NCHW input)


def test_degrade_matches_uint8_codec_and_is_differentiable():
    x = _images(2, 16, 16, seed=4)
    xf = (x.float() / 255).requires_grad_(True)
    d = degrade(xf, 4)
    assert d.shape == xf.shape
    assert ((d * 255) - upsample(downsample(x, 4), (16, 16)).float()).abs().max() <= 2.0
    d.square().sum().backward()
    assert xf.grad is not None and float(xf.grad.abs().sum()) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("ratio", [2, 4, 9, 16])
def test_cuda_frame_decode_identical_to_cuda_reference(ratio):
    H, W = 37, 64
    boxes = _boxes_zoo(60, H, W, seed=ratio)
    x = _images(boxes.shape[0], H, W, seed=7)
    xc, bc = x.cuda(), boxes.cuda()
    frame, crops = encode(xc, bc, ratio)
    assert frame.device.type == "cuda"
    y = decode(frame, crops, bc, (H, W), ratio)
    assert torch.equal(y, _old_decode(xc, bc, ratio))
    assert torch.equal(compress(xc, bc, ratio), y)
    assert torch.equal(frame.cpu(), frame_from_lowres(downsample(xc, ratio), bc, (H, W), ratio).cpu())
    assert (y.cpu().int() - compress(x, boxes, ratio).int()).abs().max() <= 2
