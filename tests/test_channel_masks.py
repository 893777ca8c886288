"""DER's channel masks: pairing, hooks, annealing, binarisation under training, sparsity loss."""

import copy

import pytest
import torch
from conftest import requires_pycil
from torch import nn
from torch.nn import functional as F

from cim_plugin.config import ConfigError
from cim_plugin.pycil.learners.der_p.channel_masks import (
    ChannelMasks,
    anneal_scale,
    attach_channel_masks,
    check_s_max,
    find_conv_bn_pairs,
    remove_channel_masks,
    sparsity_loss,
)


class Chain(nn.Module):
    """conv(3->8) -> BN -> relu (functional) -> conv(8->6, 1x1) -> BN -> relu -> pool -> linear."""

    def __init__(self, classes=3):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)), inplace=True)
        x = F.relu(self.b2(self.c2(x)), inplace=True)
        return self.fc(x.mean((2, 3)))


def test_pairs_channels_kernels_and_inputs():
    pairs = find_conv_bn_pairs(Chain(), (2, 3, 8, 8))
    assert [(p.conv, p.bn, p.in_channels, p.out_channels, p.kernel_area, p.input_from) for p in pairs] == [
        ("c1", "b1", 3, 8, 9, None), ("c2", "b2", 8, 6, 1, 0)]


def test_unmaskable_nets_raise_config_error():
    class NoBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x)

    class Twice(Chain):
        def forward(self, x):
            return self.b1(self.c1(x)) + self.b1(self.c1(x))

    with pytest.raises(ConfigError, match="not followed by its own BatchNorm2d"):
        find_conv_bn_pairs(NoBN(), (1, 3, 8, 8))
    with pytest.raises(ConfigError, match="runs 2 times"):
        find_conv_bn_pairs(Twice(), (1, 3, 8, 8))
    with pytest.raises(ConfigError, match="no Conv2d"):
        find_conv_bn_pairs(nn.Linear(2, 2), (1, 3, 8, 8))


@pytest.mark.parametrize("bad", [1, 1.0, 0.5, -3, float("inf"), float("nan"), "400", True, None])
def test_s_max_out_of_range(bad):
    with pytest.raises(ConfigError, match='"s_max" must be a finite number > 1'):
        check_s_max(bad)


def test_anneal_schedule_spans_1_over_smax_to_smax():
    s = [anneal_scale(b, 5, 400.0) for b in range(5)]
    assert s[0] == pytest.approx(1 / 400) and s[-1] == pytest.approx(400.0)
    assert all(a < b for a, b in zip(s, s[1:]))
    assert anneal_scale(0, 1, 400.0) == 400.0
    with pytest.raises(ValueError):
        anneal_scale(5, 5, 400.0)


def test_mask_is_exact_zero_before_functional_relu_and_soft_at_low_s():
    torch.manual_seed(0)
    net = Chain()
    masks = attach_channel_masks(net, (2, 3, 8, 8), s_max=400.0, init=6.0)
    seen = {}
    net.c2.register_forward_pre_hook(lambda m, inp: seen.__setitem__("x", inp[0].clone()))
    with torch.no_grad():
        masks.logits[0][[1, 5]] = -6.0 / 400
    masks.binary = True
    net(torch.randn(4, 3, 8, 8))
    assert torch.equal(seen["x"][:, [1, 5]], torch.zeros_like(seen["x"][:, [1, 5]]))
    assert (seen["x"][:, [0, 2, 3, 4, 6, 7]].abs().sum((0, 2, 3)) > 0).all()
    masks.binary = False
    masks.s = 1 / 400.0
    assert torch.allclose(masks.mask(0), torch.full((8,), 0.5), atol=1e-4)
    masks.s = 400.0
    assert masks.mask(0)[1] < 0.003 and masks.mask(0)[0] > 0.997
    assert torch.allclose(masks.logits[0][0], torch.tensor(6.0 / 400))  # e = init / s_max


@requires_pycil
def test_resnet32_functional_relu_channel_is_zero():
    from cim_plugin.pycil import import_pycil

    import_pycil()
    from convs.cifar_resnet import resnet32

    net = resnet32().eval()
    masks = attach_channel_masks(net, (2, 3, 32, 32))
    assert len(masks.pairs) == 31  # every conv of resnet32 (DownsampleA has none)
    idx = [p.bn for p in masks.pairs].index("stage_2.1.bn_a")
    with torch.no_grad():
        masks.logits[idx][3] = -0.02
    masks.binary = True
    seen = {}
    net.stage_2[1].conv_b.register_forward_pre_hook(lambda m, inp: seen.__setitem__("x", inp[0].clone()))
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    assert torch.equal(seen["x"][:, 3], torch.zeros_like(seen["x"][:, 3]))
    assert masks.pairs[idx + 1].input_from == idx  # conv_b reads bn_a's (masked) output


def test_masks_become_binary_within_an_annealed_epoch():
    """One epoch of 30 batches, s annealed 1/s_max -> s_max, CE + sparsity: at s_max no mask is left
    undecided, some channels are switched off and some stay on (they all started on)."""
    torch.manual_seed(0)
    net = Chain(classes=3)
    masks = attach_channel_masks(net, (2, 3, 8, 8), s_max=400.0, init=6.0)
    weights = [p for n, p in net.named_parameters() if "channel_masks" not in n]
    opt = torch.optim.SGD([{"params": weights}, {"params": masks.parameters(), "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, weight_decay=5e-4)  # as der_p does
    x = torch.randn(30, 16, 3, 8, 8)
    y = (x[:, :, 0].mean((2, 3)) > 0).long() + (x[:, :, 1].mean((2, 3)) > 0).long()
    for b in range(30):
        masks.s = anneal_scale(b, 30, 400.0)
        loss = F.cross_entropy(net(x[b]), y[b]) + 0.2 * masks.sparsity()
        opt.zero_grad()
        loss.backward()
        opt.step()
        masks.clamp_(8.0)
    masks.s = 400.0
    values = torch.cat([m.detach() for m in masks.masks()])
    assert ((values < 0.01) | (values > 0.99)).all(), values
    assert (values < 0.01).any() and (values > 0.99).any()


def test_sparsity_loss_value_and_gradient():
    pairs = find_conv_bn_pairs(Chain(), (2, 3, 8, 8))
    ones = [torch.ones(8), torch.ones(6)]
    assert float(sparsity_loss(ones, pairs)) == pytest.approx(1.0)
    m1 = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0], requires_grad=True)
    m2 = torch.tensor([1.0, 0.5, 0, 0, 0, 0], requires_grad=True)
    loss = sparsity_loss([m1, m2], pairs)
    expected = (9 * 3 * 4 + 1 * 4 * 1.5) / (9 * 3 * 8 + 1 * 8 * 6)
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    assert torch.allclose(m2.grad, torch.full((6,), 4.0 / (9 * 3 * 8 + 8 * 6)))
    assert torch.allclose(m1.grad, torch.full((8,), (27 + 1.5) / (9 * 3 * 8 + 8 * 6)))
    with pytest.raises(ValueError, match="shape"):
        sparsity_loss([torch.ones(8), torch.ones(5)], pairs)


def test_masks_train_through_network_parameters_and_survive_deepcopy():
    net = Chain()
    attach_channel_masks(net, (2, 3, 8, 8))
    names = [n for n, _ in net.named_parameters()]
    assert "channel_masks.logits.0" in names and "channel_masks.logits.1" in names
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    before = net(x)
    twin = copy.deepcopy(net)
    with torch.no_grad():
        twin.channel_masks.logits[1].fill_(-0.02)
    twin.channel_masks.binary = True
    assert torch.allclose(net(x), before)  # the copy's hooks use the copy's masks
    assert torch.allclose(twin(x), twin.fc.bias.expand(2, -1))  # all of layer 2 off -> only the bias
    removed = remove_channel_masks(twin)
    assert isinstance(removed, ChannelMasks) and not hasattr(twin, "channel_masks")
    assert not any(m._forward_hooks for m in twin.modules())
    with pytest.raises(ValueError, match="already has channel masks"):
        attach_channel_masks(net, (2, 3, 8, 8))
