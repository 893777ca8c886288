import pytest
import torch

from cim_plugin.method.masks.boxes import (
    box_area_fraction,
    box_iou,
    boxes_to_masks,
    cam_to_boxes,
    center_boxes,
    masks_to_boxes,
    random_boxes,
)


def test_masks_to_boxes_tightest_and_roundtrip():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(50, 13, 17, 0.3, generator=g)
    masks = boxes_to_masks(boxes, 13, 17)
    assert torch.equal(masks_to_boxes(masks), boxes)
    assert torch.equal(masks.sum((1, 2)), (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def test_masks_to_boxes_scattered_pixels_and_empty():
    m = torch.zeros(3, 6, 8, dtype=torch.bool)
    m[0, 1, 2] = m[0, 4, 6] = True       # two points -> box (2,1)-(7,5)
    m[1, 5, 7] = True                     # bottom-right pixel
    # m[2] empty -> full image
    assert masks_to_boxes(m).tolist() == [[2, 1, 7, 5], [7, 5, 8, 6], [0, 0, 8, 6]]


def test_cam_to_boxes_threshold_strict():
    cam = torch.zeros(1, 4, 4)
    cam[0, 1, 2] = 0.6
    cam[0, 2, 1] = 0.61
    assert cam_to_boxes(cam, 0.6).tolist() == [[1, 2, 2, 3]]
    assert cam_to_boxes(torch.zeros(1, 4, 5), 0.6).tolist() == [[0, 0, 5, 4]]


def test_area_fraction_and_iou():
    b = torch.tensor([[0, 0, 4, 2], [1, 1, 3, 3]])
    torch.testing.assert_close(box_area_fraction(b, 4, 4), torch.tensor([0.5, 0.25]))
    a = torch.tensor([[0, 0, 4, 4], [0, 0, 2, 2], [0, 0, 1, 1], [2, 2, 2, 2]])
    c = torch.tensor([[0, 0, 4, 4], [1, 1, 3, 3], [1, 1, 2, 2], [2, 2, 2, 2]])
    torch.testing.assert_close(box_iou(a, c), torch.tensor([1.0, 1 / 7, 0.0, 0.0]))


def test_random_and_center_boxes_area():
    g = torch.Generator().manual_seed(3)
    for frac in (0.1, 0.5, 1.0):
        b = random_boxes(400, 64, 48, frac, generator=g)
        boxes_to_masks(b, 64, 48)  # valid
        assert abs(float(box_area_fraction(b, 64, 48).mean()) - frac) < 0.02
        c = center_boxes(2, 64, 48, frac)
        assert abs(float(box_area_fraction(c, 64, 48)[0]) - frac) < 0.03
    assert torch.equal(random_boxes(5, 8, 8, 0.3, torch.Generator().manual_seed(1)),
                       random_boxes(5, 8, 8, 0.3, torch.Generator().manual_seed(1)))
    assert center_boxes(1, 10, 10, 0.25).tolist() == [[2, 2, 7, 7]]


def test_bad_boxes():
    with pytest.raises(ValueError, match="not a valid"):
        boxes_to_masks(torch.tensor([[0, 0, 9, 4]]), 8, 8)
    with pytest.raises(ValueError, match="not a valid"):
        boxes_to_masks(torch.tensor([[3, 0, 2, 4]]), 8, 8)
    with pytest.raises(TypeError, match="integer"):
        boxes_to_masks(torch.tensor([[0.0, 0, 2, 4]]), 8, 8)
    with pytest.raises(TypeError, match="bool"):
        masks_to_boxes(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="area_fraction"):
        random_boxes(3, 8, 8, 0.0)


def test_same_size_random_boxes_keep_size_stay_inside_and_cover_every_place():
    from cim_plugin.method.masks.boxes import same_size_random_boxes

    boxes = torch.tensor([[1, 2, 4, 7], [0, 0, 10, 8], [5, 5, 5, 5]])  # 3x5, whole image, empty
    gen = torch.Generator().manual_seed(0)
    moved = same_size_random_boxes(boxes, 8, 10, draws=500, generator=gen)
    assert moved.shape == (500, 3, 4) and moved.dtype == torch.int64
    wh = torch.stack([moved[..., 2] - moved[..., 0], moved[..., 3] - moved[..., 1]], -1)
    assert (wh == torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], -1)).all()
    assert (moved[..., :2] >= 0).all() and (moved[..., 2] <= 10).all() and (moved[..., 3] <= 8).all()
    assert (moved[:, 1] == boxes[1]).all()  # a whole-image box has one place
    # every valid x0 of the 3-wide box (0..7) and y0 of the 5-high box (0..3) is drawn
    assert set(moved[:, 0, 0].tolist()) == set(range(8)) and set(moved[:, 0, 1].tolist()) == set(range(4))
    again = same_size_random_boxes(boxes, 8, 10, draws=500, generator=torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)


def test_same_size_center_boxes():
    from cim_plugin.method.masks.boxes import same_size_center_boxes

    boxes = torch.tensor([[0, 0, 4, 2], [3, 1, 10, 8], [7, 0, 8, 1]])
    out = same_size_center_boxes(boxes, 8, 10)
    assert out.tolist() == [[3, 3, 7, 5], [1, 0, 8, 7], [4, 3, 5, 4]]
