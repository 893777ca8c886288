import pytest
import torch
import torch.nn.functional as F

from cim_plugin.method.masks.cam import cam_from_feature_maps, raw_cam


def _minmax(a):
    mn = a.flatten(1).min(1).values.view(-1, 1, 1)
    mx = a.flatten(1).max(1).values.view(-1, 1, 1)
    return (a - mn) / (mx - mn)


def test_single_backbone_matches_loop_definition():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 5, 4, 4, generator=g)
    w = torch.randn(7, 5, generator=g)
    y = torch.tensor([0, 6, 3])
    cam = cam_from_feature_maps([f], w, y)
    ref = torch.stack([(w[y[i]].view(5, 1, 1) * f[i]).sum(0) for i in range(3)])
    torch.testing.assert_close(cam, _minmax(ref))
    assert cam.shape == (3, 4, 4)
    assert float(cam.min()) == 0.0 and float(cam.max()) == 1.0


def test_two_backbones_equal_normalised_sum_of_raw_cams():
    g = torch.Generator().manual_seed(1)
    f1 = torch.randn(4, 6, 8, 8, generator=g)
    f2 = torch.randn(4, 3, 4, 4, generator=g)  # smaller map: upsampled to 8x8 first
    w = torch.randn(5, 9, generator=g)
    y = torch.tensor([1, 2, 3, 4])
    a1 = raw_cam([f1], w[:, :6], y)
    a2 = F.interpolate(raw_cam([f2], w[:, 6:], y).unsqueeze(1), size=(8, 8), mode="bilinear",
                       align_corners=False).squeeze(1)
    # at feature-map size: the normalised sum of the per-backbone raw CAMs
    torch.testing.assert_close(cam_from_feature_maps([f1, f2], w, y), _minmax(a1 + a2))
    # at image size: the sum is upsampled first, then normalised
    got = cam_from_feature_maps([f1, f2], w, y, out_size=(32, 32))
    up = F.interpolate((a1 + a2).unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False).squeeze(1)
    torch.testing.assert_close(got, _minmax(up))
    assert got.shape == (4, 32, 32)
    assert float(got.amin()) == 0.0 and torch.allclose(got.flatten(1).amax(1), torch.ones(4))


def test_constant_map_gives_zeros_not_nan_and_grad_finite():
    f = torch.ones(2, 3, 4, 4, requires_grad=True)
    w = torch.randn(2, 3, requires_grad=True)
    cam = cam_from_feature_maps([f], w, torch.tensor([0, 1]), out_size=(16, 16))
    assert torch.equal(cam, torch.zeros(2, 16, 16))
    cam.sum().backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(w.grad).all()


def test_differentiable_wrt_features_and_weight():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([2, 0])
    c = torch.rand(2, 6, 6, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f, w: (cam_from_feature_maps([f], w, y, (6, 6)) * c).sum(), (f, w))


def test_bad_inputs():
    f = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="input features"):
        cam_from_feature_maps([f], torch.randn(3, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must lie"):
        cam_from_feature_maps([f], torch.randn(3, 4), torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="list"):
        cam_from_feature_maps(f, torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="out_size"):
        cam_from_feature_maps([f], torch.randn(3, 4), torch.tensor([0, 1]), out_size=(0, 4))
