"""CIM branch: ReLU interception (functional and nn.ReLU), one PAU per site, growth, params, errors."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cim_plugin.method.masks.cim_branch import CIMBranch, count_relu_sites
from cim_plugin.method.masks.pau import PAU

PYCIL = Path(__file__).resolve().parent.parent / "third_party" / "PyCIL"
PYCIL_REASON = ("PyCIL SUBMODULE MISSING: third_party/PyCIL/convs is absent, so the resnet32/resnet18 branch "
                "tests are SKIPPED. Fix: git submodule update --init third_party/PyCIL")
requires_pycil = pytest.mark.skipif(not (PYCIL / "convs" / "cifar_resnet.py").exists(), reason=PYCIL_REASON)


def _pycil_convs():
    if str(PYCIL) not in sys.path:
        sys.path.insert(0, str(PYCIL))
    from convs import cifar_resnet, resnet  # noqa: WPS433
    return cifar_resnet, resnet


class FunctionalNet(nn.Module):
    """Three ReLU sites, each written in a different functional style."""

    def __init__(self, width=4, classes=3):
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3, padding=1)
        self.b1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, classes)

    def body(self, x, acts):
        x = acts[0](self.b1(self.c1(x)))
        x = acts[1](self.c2(x))
        f = acts[2](x - 0.1)
        return {"fmaps": [f], "logits": self.fc(f.mean((2, 3)))}

    def forward(self, x):
        return self.body(x, [lambda t: F.relu(t, inplace=True), torch.relu_, lambda t: t.relu()])


class ModuleNet(nn.Module):
    """nn.ReLU modules; one module is called twice (two sites)."""

    def __init__(self, width=4, classes=3):
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(width, classes)

    def body(self, x, acts):
        x = acts[0](self.c1(x))
        x = acts[1](self.c2(x))
        f = acts[2](x + 0.05)
        return {"fmaps": [f], "logits": self.fc(f.mean((2, 3)))}

    def forward(self, x):
        return self.body(x, [self.act, self.act, self.act2])


def _scaled_branch(n):
    """PAU k computes (k + 2) * x exactly."""
    branch = CIMBranch(n)
    with torch.no_grad():
        for k, pau in enumerate(branch.paus):
            pau.numerator.copy_(torch.tensor([0.0, k + 2.0, 0, 0, 0, 0]))
            pau.denominator.zero_()
    return branch


@pytest.mark.parametrize("net_cls", [FunctionalNet, ModuleNet])
def test_each_site_is_replaced_in_call_order(net_cls):
    torch.manual_seed(0)
    net = net_cls().eval()
    x = torch.randn(2, 3, 6, 6)
    assert count_relu_sites(net, x) == 3
    branch = _scaled_branch(3)
    out = branch(net, x)
    ref = net.body(x, [lambda t, k=k: (k + 2.0) * t for k in range(3)])
    assert torch.equal(out["logits"], ref["logits"])
    assert torch.equal(out["fmaps"][0], ref["fmaps"][0])
    assert branch.num_sites == 3 and branch.last_num_calls == 3
    # the plain network is unaffected once the branch has run
    assert torch.equal(net(x)["logits"], net.body(x, [torch.relu] * 3)["logits"])


@pytest.mark.parametrize("net_cls", [FunctionalNet, ModuleNet])
def test_grows_one_pau_per_site_initialised_to_relu_fit(net_cls):
    torch.manual_seed(0)
    net = net_cls().eval()
    x = torch.randn(2, 3, 6, 6)
    branch = CIMBranch()
    assert branch.num_sites == 0
    out = branch(net, x)
    assert branch.num_sites == 3
    assert len(list(branch.parameters())) == 6  # numerator + denominator per site, nothing else
    fit = PAU(zero_at_zero=True)  # the default: P(0) = 0 (cim_branch.ZERO_AT_ZERO)
    for pau in branch.paus:
        assert torch.equal(pau.numerator, fit.numerator) and torch.equal(pau.denominator, fit.denominator)
    ref = net(x)["logits"]
    assert torch.allclose(out["logits"], ref, atol=0.1)  # ReLU fit error ~0.03 per site


def test_existing_paus_keep_values_when_network_grows():
    torch.manual_seed(0)
    small, x = FunctionalNet().eval(), torch.randn(2, 3, 6, 6)
    branch = CIMBranch()
    branch(small, x)
    with torch.no_grad():
        branch.paus[1].numerator.add_(0.5)
    kept = [p.detach().clone() for p in branch.parameters()]

    class Grown(nn.Module):  # e.g. DER: the old backbone plus a new one
        def __init__(self):
            super().__init__()
            self.a, self.b = FunctionalNet(), ModuleNet()

        def forward(self, x):
            return torch.cat([self.a(x)["logits"], self.b(x)["logits"]], 1)

    grown = Grown().eval()
    assert branch.relu_sites(grown, x) == 6
    branch(grown, x)
    assert branch.num_sites == 6
    for old, new in zip(kept, list(branch.parameters())[:6]):
        assert torch.equal(old, new)
    assert torch.equal(branch.paus[5].numerator, PAU(zero_at_zero=True).numerator)
    # a smaller network afterwards uses the first sites only
    branch(small, x)
    assert branch.num_sites == 6 and branch.last_num_calls == 3


def test_params_run_the_network_with_those_weights():
    torch.manual_seed(0)
    net, x = ModuleNet().eval(), torch.randn(2, 3, 6, 6)
    branch = CIMBranch(3)
    params = {n: p * 0.5 for n, p in net.named_parameters()}
    other = copy.deepcopy(net)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    assert torch.equal(branch(net, x, params=params)["logits"], branch(other, x)["logits"])
    assert not torch.equal(branch(net, x)["logits"], branch(other, x)["logits"])


def test_gradients_reach_every_pau():
    torch.manual_seed(0)
    net, x = FunctionalNet().train(), torch.randn(2, 3, 6, 6)
    branch = CIMBranch()
    branch(net, x)["logits"].pow(2).sum().backward()
    for pau in branch.paus:
        assert pau.numerator.grad is not None and pau.numerator.grad.abs().sum() > 0
    assert not any(id(p) in {id(q) for q in net.parameters()} for p in branch.parameters())


def test_relu_sites_leaves_buffers_and_mode_untouched():
    torch.manual_seed(0)
    net, x = FunctionalNet().train(), torch.randn(2, 3, 6, 6)
    before = {n: b.clone() for n, b in net.named_buffers()}
    branch = CIMBranch()
    assert branch.ensure_sites(net, x) == 3 and branch.num_sites == 3
    assert net.training
    for n, b in net.named_buffers():
        assert torch.equal(b, before[n])


def test_load_state_dict_grows():
    net, x = FunctionalNet().eval(), torch.randn(1, 3, 6, 6)
    src = CIMBranch()
    src(net, x)
    with torch.no_grad():
        src.paus[2].denominator.fill_(0.25)
    dst = CIMBranch()
    dst.load_state_dict(src.state_dict())
    assert dst.num_sites == 3 and torch.equal(dst.paus[2].denominator, src.paus[2].denominator)


def test_rejects_dataparallel_and_non_modules():
    branch = CIMBranch(1)
    with pytest.raises(TypeError, match="DataParallel"):
        branch(nn.DataParallel(FunctionalNet()), torch.randn(1, 3, 4, 4))
    with pytest.raises(TypeError, match="nn.Module"):
        branch(lambda t: t, torch.randn(1, 3, 4, 4))
    with pytest.raises(TypeError, match="dict"):
        branch(FunctionalNet(), torch.randn(1, 3, 4, 4), params=[1, 2])


@requires_pycil
def test_pycil_resnet32_sites_and_replacement():
    cifar_resnet, _ = _pycil_convs()
    torch.manual_seed(0)
    net = cifar_resnet.resnet32().train()  # batch statistics: activations in a trained net's range
    x = torch.randn(4, 3, 32, 32)
    assert count_relu_sites(net, x) == 31  # stem + 2 per basic block x 15
    with torch.no_grad():
        ref = net(x)
        rel = {}
        for fit_range in (3.0, 5.0):
            for zero in (True, False):
                out = CIMBranch(fit_range=fit_range, zero_at_zero=zero)(net, x)
                rel[fit_range, zero] = float((out["features"] - ref["features"]).norm() / ref["features"].norm())
    # the branch tracks the net within ~5 % (P(0) = 0, the default); the plain fit's P(0) = 0.03, added at
    # each of the 31 sites, doubles that (10 %) at the default fit range
    assert rel[3.0, True] < 0.06 and rel[5.0, True] < 0.09, rel
    assert rel[3.0, False] > 1.5 * rel[3.0, True], rel
    net.eval()
    branch = CIMBranch()
    branch(net, x)
    assert branch.num_sites == 31
    with torch.no_grad():  # the last site produces the last feature map: zero it through its PAU
        branch.paus[30].numerator.zero_()
    assert torch.equal(branch(net, x)["fmaps"][-1], torch.zeros_like(ref["fmaps"][-1]))


@requires_pycil
def test_pycil_resnet18_module_relus():
    _, resnet = _pycil_convs()
    torch.manual_seed(0)
    net = resnet.resnet18(args={"dataset": "cifar100", "model_name": "icarl"}).eval()
    x = torch.randn(1, 3, 32, 32)
    branch = CIMBranch()
    branch(net, x)
    assert branch.num_sites == count_relu_sites(net, x) == 17  # stem + 2 per block x 8


def test_zero_at_zero_branch_keeps_a_zero_image_zero():
    """With P(0) = 0 a bias-free conv net maps a zero image to zero feature maps through the branch, as
    with ReLU; the plain ReLU fit (P(0) = 0.03) makes every site emit 0.03 and the maps nonzero."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU())
    x = torch.zeros(1, 3, 8, 8)
    assert torch.equal(CIMBranch(zero_at_zero=True)(net, x), torch.zeros(1, 4, 8, 8))
    assert CIMBranch(zero_at_zero=False)(net, x).abs().amax() > 1e-3
    branch = CIMBranch(3, zero_at_zero=True)
    assert all(p.zero_at_zero for p in branch.paus)
