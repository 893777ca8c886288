import numpy as np
import pytest
import torch

from cim_plugin.method.herding import herding_order


def _reference(features, k):
    """Straightforward iCaRL herding (numpy, explicit distances)."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    mu = f.mean(0)
    chosen, s = [], np.zeros_like(mu)
    for t in range(1, k + 1):
        d = np.linalg.norm(mu - (s + f) / t, axis=1)
        d[chosen] = np.inf
        i = int(np.argmin(d))
        chosen.append(i)
        s = s + f[i]
    return chosen


def test_matches_reference_and_is_a_permutation_prefix():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(60, 16, generator=g) * torch.rand(60, 1, generator=g) * 5 + 0.3
    order = herding_order(feats, 60)
    assert sorted(order.tolist()) == list(range(60))
    assert order[:25].tolist() == _reference(feats.double().numpy(), 25)
    assert torch.equal(herding_order(feats, 10), order[:10])  # prefix property


def test_first_pick_is_closest_to_mean_and_scale_invariant():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(30, 8, generator=g)
    f = torch.nn.functional.normalize(feats, dim=1)
    first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    assert int(herding_order(feats, 1)[0]) == first
    scale = torch.rand(30, 1, generator=g) * 10 + 0.1
    assert torch.equal(herding_order(feats * scale, 30), herding_order(feats, 30))


def test_running_mean_error_small():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(200, 32, generator=g)
    f = torch.nn.functional.normalize(feats, dim=1)
    order = herding_order(feats, 20)
    herd_err = (f[order].mean(0) - f.mean(0)).norm()
    rand_err = (f[:20].mean(0) - f.mean(0)).norm()
    assert herd_err < 0.5 * rand_err


def test_edge_cases_and_errors():
    assert herding_order(torch.randn(5, 3), 0).numel() == 0
    with pytest.raises(ValueError, match="k must be in"):
        herding_order(torch.randn(5, 3), 6)
    with pytest.raises(TypeError, match="float Tensor"):
        herding_order(torch.randn(5), 2)
