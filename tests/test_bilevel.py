"""CIM bilevel meta step: φ-only updates, θ/buffers/modes untouched, exact φ gradient, learning signal."""

import functools
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cim_plugin.method.masks.bilevel import cam_mask_fn, hybrid_input, meta_step
from cim_plugin.method.masks.cim_branch import CIMBranch

K = 3  # classes


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny second-order problems: one thread is much faster than contending for shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Net(nn.Module):
    """conv-BN-ReLU x2 (functional and module ReLUs), returns {"fmaps", "logits"}."""

    def __init__(self, width=6):
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3, padding=1)
        self.b1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.b2 = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(width, K)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)), inplace=True)
        f = self.act(self.b2(self.c2(x)))
        return {"fmaps": [f], "logits": self.fc(f.mean((2, 3)))}


def _degrade(x):
    return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")


def _data(n, seed):
    """Class k = a bright 3x3 patch in one of K fixed places, plus noise (8x8 images)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = 0.3 * torch.randn(n, 3, 8, 8, generator=g)
    for k, (r, c) in enumerate([(0, 0), (0, 5), (5, 2)]):
        x[y == k, :, r:r + 3, c:c + 3] += 2.0
    return x, y


def _setup(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    net = Net().to(dtype)
    with torch.no_grad():  # non-trivial BN statistics
        for b in (net.b1, net.b2):
            b.running_mean.uniform_(-0.2, 0.2)
            b.running_var.uniform_(0.5, 1.5)
            b.num_batches_tracked.fill_(7)
    xi, yi = _data(6, seed + 1)
    xo, yo = _data(6, seed + 2)
    xi, xo = xi.to(dtype), xo.to(dtype)
    branch = CIMBranch()
    branch.ensure_sites(net, xi)
    branch.to(dtype)
    return net, branch, (xi, yi, _degrade(xi), xo, yo)


def _step(net, branch, opt, batch, **over):
    xi, yi, xd, xo, yo = batch
    kw = dict(lr=0.5, lr_ratio=1.0, div_coef=0.2, reg_coef=0.1, max_phi_grad_norm=1.0)
    kw.update(over)
    return meta_step(network=net, branch=branch, phi_optimizer=opt, x_inner=xi, y_inner=yi,
                     x_inner_degraded=xd, x_outer=xo, y_outer=yo,
                     mask_fn=functools.partial(cam_mask_fn, weight=net.fc.weight),
                     logits_fn=lambda out: out["logits"], **kw)


@pytest.mark.parametrize("train_mode", [False, True])
def test_theta_grads_buffers_and_modes_untouched_phi_updated(train_mode):
    net, branch, batch = _setup()
    net.train()
    net.b2.eval()  # mixed modes must come back exactly
    net.c2.bias.requires_grad_(False)  # a frozen parameter
    with torch.no_grad():
        net.c1.weight.grad = torch.randn_like(net.c1.weight)  # pre-existing θ grads stay as they are
    theta = {n: p.detach().clone() for n, p in net.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    phi = [p.detach().clone() for p in branch.parameters()]
    opt = torch.optim.Adam(branch.parameters(), lr=0.01)

    stats = _step(net, branch, opt, batch, train_mode=train_mode)

    assert set(stats) >= {"outer", "inner", "reg", "div", "mask_mean"}
    assert all(isinstance(v, float) for v in stats.values())
    for n, p in net.named_parameters():
        assert torch.equal(p, theta[n]), n
        assert (p.grad is None and grads[n] is None) or torch.equal(p.grad, grads[n]), n
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert net.training and net.c1.training and not net.b2.training
    moved = [not torch.equal(a, b) for a, b in zip(phi, branch.parameters())]
    assert all(moved), "every PAU (both sites) must receive an update"
    assert 0.0 < stats["mask_mean"] < 1.0 and stats["reg"] <= stats["mask_mean"]


def test_cil_optimiser_state_and_next_step_unchanged():
    """A meta step between two CIL steps changes nothing of the CIL optimiser (momentum buffers, step
    counts, lr) and so nothing of the next CIL update: θ after [step, meta, step] == θ after [step, step]."""
    def cil_steps(with_meta):
        net, branch, (xi, yi, xd, xo, yo) = _setup()
        cil = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        for step in range(2):
            cil.zero_grad()
            F.cross_entropy(net(xo)["logits"], yo).backward()
            cil.step()
            if step == 0 and with_meta:
                before = {k: {n: v.clone() if torch.is_tensor(v) else v for n, v in st.items()}
                          for k, st in cil.state.items()}
                _step(net, branch, torch.optim.Adam(branch.parameters(), lr=0.01), (xi, yi, xd, xo, yo))
                assert cil.state.keys() == before.keys()
                for k, st in cil.state.items():
                    assert all(torch.equal(v, before[k][n]) if torch.is_tensor(v) else v == before[k][n]
                               for n, v in st.items())
        return [p.detach().clone() for p in net.parameters()]

    for a, b in zip(cil_steps(True), cil_steps(False)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("through_mask", [False, True])
def test_phi_gradient_matches_finite_differences_through_the_inner_step(through_mask):
    """div_coef = reg_coef = 0: φ reaches the objective only through h -> θ⁺ (second order); with
    grad_through_mask also through the branch's use of θ inside the inner gradient."""
    net, branch, batch = _setup(seed=3, dtype=torch.float64)
    net.eval()
    opt = torch.optim.SGD(branch.parameters(), lr=0.0)  # lr 0: φ stays, its .grad is left to read
    kw = dict(div_coef=0.0, reg_coef=0.0, max_phi_grad_norm=None, lr=2.0, grad_through_mask=through_mask)
    base = _step(net, branch, opt, batch, **kw)
    assert base["phi_grad_norm"] > 0
    for pau, name in [(branch.paus[0], "numerator"), (branch.paus[1], "denominator")]:
        p = getattr(pau, name)
        analytic = p.grad[1].item()
        eps = 1e-5
        with torch.no_grad():
            p[1] += eps
        plus = _step(net, branch, opt, batch, **kw)["outer"]
        with torch.no_grad():
            p[1] -= 2 * eps
        minus = _step(net, branch, opt, batch, **kw)["outer"]
        with torch.no_grad():
            p[1] += eps
        numeric = (plus - minus) / (2 * eps)
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-12), name


def test_inner_gradient_through_the_mask_is_the_total_derivative():
    """Default: θ⁺ = θ − s ∇θ L(h) with the hybrid image h taken as data (the paper's equation); with
    grad_through_mask=True, ∇θ is the total derivative, also through the branch's CAM (the official code,
    whose branch is the network's own forward). The outer CE on θ⁺ tells the two apart."""
    net, branch, batch = _setup(seed=4, dtype=torch.float64)
    xi, yi, xd, xo, yo = batch
    net.eval()
    keep = lambda n: "fc" not in n  # noqa: E731  (the official fast weights)
    step = 3.0
    theta = {n: p for n, p in net.named_parameters() if keep(n)}

    def reference(total: bool) -> float:
        mask, _ = cam_mask_fn(net, branch, xi, yi, weight=net.fc.weight)
        h = hybrid_input(mask if total else mask.detach(), xi, xd)
        loss_in = F.cross_entropy(net(h)["logits"], yi)
        grads = torch.autograd.grad(loss_in, list(theta.values()))
        fast = {n: p - step * g for (n, p), g in zip(theta.items(), grads)}
        out = torch.func.functional_call(net, fast, (xo,))
        return F.cross_entropy(out["logits"], yo).item()

    paper, official = reference(False), reference(True)
    assert abs(paper - official) > 1e-6, (paper, official)  # the mask path changes θ⁺ measurably
    opt = torch.optim.SGD(branch.parameters(), lr=0.0)
    kw = dict(div_coef=0.0, reg_coef=0.0, max_phi_grad_norm=None, lr=step, lr_ratio=1.0, fast_weight_filter=keep)
    assert _step(net, branch, opt, batch, **kw)["outer_ce"] == pytest.approx(paper, rel=1e-10)
    assert _step(net, branch, opt, batch, grad_through_mask=True, **kw)["outer_ce"] == pytest.approx(official, rel=1e-10)


def test_outer_objective_falls_over_30_meta_steps():
    net, branch, batch = _setup(seed=1)
    opt = torch.optim.Adam(branch.parameters(), lr=0.01)
    outer = [_step(net, branch, opt, batch)["outer"] for _ in range(30)]
    assert sum(outer[-3:]) / 3 < sum(outer[:3]) / 3 - 1e-3, outer


def test_larger_reg_coef_gives_smaller_masks():
    coverage = {}
    for reg in (0.0, 2.0):
        net, branch, batch = _setup(seed=2)
        opt = torch.optim.Adam(branch.parameters(), lr=0.01)
        for _ in range(30):
            _step(net, branch, opt, batch, reg_coef=reg)
        with torch.no_grad():
            mask, _ = cam_mask_fn(net.eval(), branch, batch[0], batch[1], weight=net.fc.weight)
        coverage[reg] = mask.mean().item()
    assert coverage[2.0] < coverage[0.0] - 0.01, coverage


def test_cam_mask_fn_shapes_range_and_phi_gradient():
    net, branch, (xi, yi, *_rest) = _setup()
    net.eval()
    mask, logits = cam_mask_fn(net, branch, xi, yi, weight=lambda n: n.fc.weight)
    assert mask.shape == (6, 8, 8) and logits.shape == (6, K)
    assert mask.min() >= 0 and mask.max() <= 1 and mask.amax((1, 2)).eq(1).all()
    (g,) = torch.autograd.grad(mask.pow(2).mean(), [branch.paus[1].numerator])
    assert g.abs().sum() > 0
    assert mask.grad_fn is not None and not torch.autograd.grad(
        mask.sum(), [net.fc.weight], allow_unused=True)[0] is not None  # classifier weight detached


def test_hybrid_input_blends_per_pixel():
    x, xd = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    m = torch.zeros(2, 4, 4)
    m[:, :2] = 1.0
    h = hybrid_input(m, x, xd)
    assert torch.equal(h, m.unsqueeze(1).expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="B,H,W"):
        hybrid_input(torch.zeros(2, 2, 2), x, xd)


def test_errors_are_clear():
    net, branch, batch = _setup()
    opt = torch.optim.Adam(branch.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="missing"):
        _step(net, branch, torch.optim.Adam(list(branch.parameters())[:2], lr=0.01), batch)
    with pytest.raises(ValueError, match="θ"):
        _step(net, branch, torch.optim.Adam([*branch.parameters(), *net.parameters()], lr=0.01), batch)
    with pytest.raises(TypeError, match="DataParallel"):
        meta_step(network=nn.DataParallel(net), branch=branch, phi_optimizer=opt, x_inner=batch[0],
                  y_inner=batch[1], x_inner_degraded=batch[2], x_outer=batch[3], y_outer=batch[4],
                  mask_fn=None, logits_fn=None, lr=0.1, lr_ratio=0.1, div_coef=0.2, reg_coef=0.1,
                  max_phi_grad_norm=1.0)
    with pytest.raises(ValueError, match="lr"):
        _step(net, branch, opt, batch, lr=-1.0)
    with pytest.raises(TypeError, match="y_outer"):
        xi, yi, xd, xo, yo = batch
        _step(net, branch, opt, (xi, yi, xd, xo, yo.float()))
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    with pytest.raises(ValueError, match="B,H,W"):  # mask_fn returning a bad mask; state still restored
        meta_step(network=net, branch=branch, phi_optimizer=opt, x_inner=batch[0], y_inner=batch[1],
                  x_inner_degraded=batch[2], x_outer=batch[3], y_outer=batch[4],
                  mask_fn=lambda n, b, x, y: (torch.zeros(6, 4, 4), b(n, x)["logits"]),
                  logits_fn=lambda o: o["logits"], lr=0.1, lr_ratio=0.1, div_coef=0.2, reg_coef=0.1,
                  max_phi_grad_norm=1.0, train_mode=True)
    assert all(torch.equal(b, buffers[n]) for n, b in net.named_buffers())


PYCIL = Path(__file__).resolve().parent.parent / "third_party" / "PyCIL"


@pytest.mark.skipif(not (PYCIL / "convs" / "cifar_resnet.py").exists(),
                    reason="PyCIL SUBMODULE MISSING: third_party/PyCIL/convs is absent, the resnet32 meta step "
                           "test is SKIPPED. Fix: git submodule update --init third_party/PyCIL")
def test_meta_step_on_pycil_resnet32_leaves_theta_and_buffers():
    if str(PYCIL) not in sys.path:
        sys.path.insert(0, str(PYCIL))
    from convs import cifar_resnet

    class Head(nn.Module):  # PyCIL-style output dict with logits
        def __init__(self):
            super().__init__()
            self.convnet, self.fc = cifar_resnet.resnet32(), nn.Linear(64, 4)

        def forward(self, x):
            out = self.convnet(x)
            return {**out, "logits": self.fc(out["features"])}

    torch.manual_seed(0)
    net = Head().train()
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    branch = CIMBranch(fit_range=5.0)
    assert branch.ensure_sites(net, x) == 31
    opt = torch.optim.Adam(branch.parameters(), lr=0.01)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    phi = [p.detach().clone() for p in branch.parameters()]
    stats = meta_step(network=net, branch=branch, phi_optimizer=opt, x_inner=x, y_inner=y,
                      x_inner_degraded=_degrade(x), x_outer=x.flip(0), y_outer=y.flip(0),
                      mask_fn=functools.partial(cam_mask_fn, weight=net.fc.weight),
                      logits_fn=lambda out: out["logits"], lr=0.1, lr_ratio=0.1, div_coef=0.2,
                      reg_coef=0.1, max_phi_grad_norm=1.0, train_mode=True)
    assert all(map(math.isfinite, stats.values()))
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters()) and net.training
    assert sum(not torch.equal(a, b) for a, b in zip(phi, branch.parameters())) == 62


def test_non_finite_objective_never_reaches_phi():
    from cim_plugin.method.masks.bilevel import meta_step
    from cim_plugin.method.masks.cim_branch import CIMBranch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    branch = CIMBranch()
    branch.ensure_sites(net, x)
    opt = torch.optim.Adam(branch.parameters(), lr=0.1)
    before = [p.detach().clone() for p in branch.parameters()]

    def mask_fn(network, br, xx, yy):
        logits = br(network, xx)
        return torch.full(xx.shape[:1] + xx.shape[2:], 0.5) * logits.sum() * float("nan"), logits

    stats = meta_step(network=net, branch=branch, phi_optimizer=opt, x_inner=x, y_inner=y, x_inner_degraded=x,
                      x_outer=x, y_outer=y, mask_fn=mask_fn, logits_fn=lambda o: o, lr=0.1, lr_ratio=0.1,
                      div_coef=0.2, reg_coef=0.1, max_phi_grad_norm=1.0)
    assert stats["skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, branch.parameters()))
