"""Padé activation units: ReLU fit, determinism, higher-order gradients, autocast, devices."""

import pytest
import torch

from cim_plugin.method.masks.pau import PAU, _relu_fit, pade, relu_fit_coefficients

FIT_BOUND = 0.031  # max |PAU(x) - relu(x)| on [-3, 3] at init (measured 0.0300)


def test_relu_fit_bound_on_fit_range():
    x = torch.linspace(-3, 3, 60001)
    err = (PAU()(x) - torch.relu(x)).abs().max().item()
    assert err < FIT_BOUND
    # it is an actual fit, not a loose one: error well below the trivial identity/zero approximations
    assert (PAU()(x) - torch.relu(x)).abs().mean().item() < 0.01


def test_denominator_is_safe_and_pau_starts_from_the_fit():
    num, den = relu_fit_coefficients()
    assert len(num) == 6 and len(den) == 4 and all(d >= 0 for d in den)
    pau = PAU()
    assert pau.numerator.dtype == torch.float32 and pau.numerator.shape == (6,)
    assert torch.equal(pau.numerator, torch.tensor(num, dtype=torch.float32))
    # arbitrary (even negative) denominator coefficients never give a pole: Q >= 1
    x = torch.linspace(-50, 50, 10001, dtype=torch.float64)
    y = pade(x, torch.ones(6, dtype=torch.float64), -torch.rand(4, dtype=torch.float64))
    assert torch.isfinite(y).all()


def test_fit_is_deterministic_whatever_the_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        again = _relu_fit.__wrapped__(3.0)
        torch.set_num_threads(1)
        once_more = _relu_fit.__wrapped__(3.0)
    finally:
        torch.set_num_threads(before)
    assert again == once_more == relu_fit_coefficients()
    assert torch.get_num_threads() == before


def test_identity_coefficients_give_identity():
    pau = PAU(numerator=[0, 1, 0, 0, 0, 0], denominator=[0, 0, 0, 0])
    x = torch.randn(5, 7)
    assert torch.equal(pau(x), x)


def test_second_order_gradients_exact():
    torch.manual_seed(0)
    x = (torch.rand(9, dtype=torch.float64) * 2 + 0.1) * torch.tensor([1.0, -1.0] * 4 + [1.0], dtype=torch.float64)
    a = torch.tensor(relu_fit_coefficients()[0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(relu_fit_coefficients()[1], dtype=torch.float64, requires_grad=True)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(pade, (x, a, b))
    assert torch.autograd.gradgradcheck(pade, (x, a, b))


def test_double_backward_through_module_reaches_coefficients():
    pau = PAU()
    x = torch.randn(4, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(pau(x).pow(2).sum(), x, create_graph=True)
    gn, gd = torch.autograd.grad(gx.pow(2).sum(), [pau.numerator, pau.denominator])
    assert gn.abs().sum() > 0 and gd.abs().sum() > 0


def test_autocast_cpu_bfloat16():
    pau = PAU()
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)
        assert h.dtype == torch.bfloat16
        y = pau(h)
    assert y.dtype == torch.bfloat16
    ref = pau(h.float())
    assert torch.allclose(y.float(), ref, atol=2e-2, rtol=1e-2)
    y.float().sum().backward()
    assert pau.numerator.grad is not None and pau.numerator.grad.dtype == torch.float32
    assert torch.isfinite(pau.numerator.grad).all()


def test_float64_input_stays_float64():
    x = torch.randn(6, dtype=torch.float64)
    assert PAU()(x).dtype == torch.float64


def test_bad_inputs():
    with pytest.raises(TypeError, match="floating-point"):
        PAU()(torch.arange(4))
    with pytest.raises(ValueError, match="6 coefficients"):
        PAU(numerator=[0, 1, 0])
    with pytest.raises(ValueError, match="4 coefficients"):
        PAU(denominator=[0, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    pau = PAU()
    x = torch.linspace(-3, 3, 101)
    y = pau.cuda()(x.cuda())
    assert y.device.type == "cuda"
    assert torch.allclose(y.cpu(), PAU()(x), atol=1e-6)
    with torch.autocast("cuda", dtype=torch.float16):
        assert pau(x.cuda().half()).dtype == torch.float16


def test_huge_inputs_stay_finite_with_finite_gradients():
    from cim_plugin.method.masks.pau import PAU

    pau = PAU()
    x = torch.tensor([-1e30, -1e6, -50.0, 0.5, 50.0, 1e6, 1e30], requires_grad=True)
    y = pau(x)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in pau.parameters())
    inside = torch.linspace(-7.9, 7.9, 101)
    from cim_plugin.method.masks.pau import pade

    assert torch.equal(pau(inside), pade(inside, pau.numerator, pau.denominator))  # unchanged inside


def test_inference_path_equals_the_differentiable_path():
    """Under no_grad the PAU runs in place; values must match the graph-building path (tails included)."""
    torch.manual_seed(0)
    pau = PAU()
    with torch.no_grad():
        pau.numerator.add_(0.05 * torch.randn(6))
        pau.denominator.add_(0.05 * torch.randn(4))
    x = torch.cat([torch.linspace(-20, 20, 4001), 3 * torch.randn(9999)]).view(2, -1)
    with torch.no_grad():
        fast = pau(x)
    slow = pau(x.clone().requires_grad_(True)).detach()
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5)
    assert not torch.equal(fast, torch.relu(x))  # the test would pass vacuously if the PAU were skipped


@pytest.mark.parametrize("shape", [(3, 262_145), (8, 16, 64, 64), (1_000_003,)])
def test_blocked_cpu_inference_is_bitwise_the_whole_tensor_pass(shape, monkeypatch):
    """Large graph-free CPU activations run in cache-sized blocks: the same values bit for bit as one pass
    over the whole tensor (block edges, a last partial block, both tails), and the blocked path is taken."""
    import cim_plugin.method.masks.pau as pau_module

    torch.manual_seed(1)
    pau = PAU(zero_at_zero=True)
    with torch.no_grad():
        pau.numerator.add_(0.05 * torch.randn(6))
        pau.denominator.add_(0.05 * torch.randn(4))
    x = 4 * torch.randn(*shape)
    x.view(-1)[::97] = 20.0
    x.view(-1)[::89] = -30.0
    assert x.numel() > pau_module.CPU_BLOCK
    calls = []
    blocked = pau_module._activate_blocked
    monkeypatch.setattr(pau_module, "_activate_blocked", lambda *a: calls.append(1) or blocked(*a))
    with torch.no_grad():
        fast = pau(x)
        assert calls, "a large graph-free CPU input must take the blocked path"
        monkeypatch.setattr(pau_module, "CPU_BLOCK", 1 << 62)  # one pass over the whole tensor
        whole = pau(x)
    assert len(calls) == 1
    assert torch.equal(fast, whole)
    assert fast.shape == x.shape and fast.is_contiguous()
    assert not torch.equal(fast, torch.relu(x))


def test_blocked_path_only_without_a_graph(monkeypatch):
    """With a graph to build (x or φ requiring grad) the whole-tensor autograd path runs, and φ gets grads."""
    import cim_plugin.method.masks.pau as pau_module

    monkeypatch.setattr(pau_module, "_activate_blocked", lambda *a: pytest.fail("blocked path with a graph"))
    pau = PAU()
    x = torch.randn(2, pau_module.CPU_BLOCK)
    pau(x).sum().backward()
    assert pau.numerator.grad is not None and torch.isfinite(pau.numerator.grad).all()


def test_zero_at_zero_holds_p0_at_zero_while_phi_learns():
    pau = PAU(zero_at_zero=True)
    zero = torch.zeros(3)
    assert torch.equal(pau(zero), zero)  # exactly, not approximately
    x = torch.linspace(-3, 3, 601)
    assert (pau(x) - x.clamp_min(0)).abs().max() <= FIT_BOUND  # still a ReLU fit
    assert abs(float(PAU()(zero)[0].detach()) - 0.02997) < 1e-4  # the plain fit (and the official init) has P(0) = 0.030
    with torch.no_grad():
        pau.numerator[0] = 5.0  # whatever the stored a_0 becomes, it has no effect
    assert torch.equal(pau(zero), zero)
    pau(torch.randn(100)).pow(2).sum().backward()
    assert pau.numerator.grad[0] == 0 and pau.numerator.grad[1:].abs().sum() > 0


def test_pau_pickled_before_zero_at_zero_reads_as_plain():
    import pickle

    pau = PAU()
    del pau.__dict__["zero_at_zero"]  # as a PAU pickled by an older version
    again = pickle.loads(pickle.dumps(pau))
    assert again.zero_at_zero is False
    assert torch.equal(again(torch.zeros(1)), PAU()(torch.zeros(1)))
