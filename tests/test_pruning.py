"""Physical pruning of masked channels: exact outputs, real parameter and FLOP savings."""

import pytest
import torch
from conftest import requires_pycil
from test_channel_masks import Chain
from torch import nn

from cim_plugin.pycil.learners.der_p.channel_masks import attach_channel_masks
from cim_plugin.pycil.learners.der_p.pruning import (
    PrunedConvBN,
    count_flops,
    count_parameters,
    max_output_difference,
    prune_conv_bn,
    prune_masked,
)


def _randomise(net, seed=0, keep_fraction=0.5):
    """Random BN statistics/affine and random binary masks (about keep_fraction kept)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.normal_(generator=gen)
                m.bias.normal_(generator=gen)
        masks = net.channel_masks
        for e in masks.logits:
            on = torch.rand(e.shape, generator=gen) < keep_fraction
            e.copy_(torch.where(on, 0.02, -0.02))
    masks.binary = True
    return masks


def test_chain_exact_params_and_flops():
    torch.manual_seed(0)
    net = Chain()
    masks = attach_channel_masks(net, (2, 3, 8, 8))
    with torch.no_grad():
        masks.logits[0].copy_(torch.tensor([1, -1, 1, -1, 1, 1, -1, -1.0]) * 0.02)  # 4 of 8 kept
        masks.logits[1].copy_(torch.tensor([1, -1, -1, 1, -1, -1.0]) * 0.02)  # 2 of 6 kept
    masks.binary = True
    pruned = prune_masked(net, (1, 3, 8, 8))
    assert max_output_difference(net, pruned, (4, 3, 8, 8)) < 1e-6
    assert isinstance(pruned.c1, PrunedConvBN) and isinstance(pruned.b1, nn.Identity)
    # conv1 4x3x3x3 + bn 2*4, conv2 2x4x1x1 + bn 2*2, fc 6*3+3 (unchanged)
    assert count_parameters(pruned) == 4 * 27 + 8 + 2 * 4 + 4 + 21
    assert count_flops(pruned, (1, 3, 8, 8)) == 64 * (4 * 27 + 2 * 4) + 18
    assert count_flops(net, (1, 3, 8, 8)) == 64 * (8 * 27 + 6 * 8) + 18
    assert hasattr(net, "channel_masks") and not hasattr(pruned, "channel_masks")  # input untouched


def test_whole_layer_off_and_train_mode_batch_stats():
    torch.manual_seed(1)
    net = Chain()
    masks = attach_channel_masks(net, (2, 3, 8, 8))
    with torch.no_grad():
        masks.logits[0].fill_(-0.02)  # layer 1 entirely off: layer 2 sees only zeros
    masks.binary = True
    pruned = prune_masked(net, (1, 3, 8, 8))
    assert pruned.c1.conv is None
    assert max_output_difference(net, pruned, (3, 3, 8, 8)) < 1e-6
    # train mode: BN batch statistics over the kept channels equal the masked net's
    with torch.no_grad():
        masks.logits[0].copy_(torch.tensor([1, -1, 1, 1, -1, 1, 1, -1.0]) * 0.02)
    pruned = prune_masked(net, (1, 3, 8, 8))
    net.train(), pruned.train()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x), pruned(x), atol=1e-5)


def test_bad_keep_vectors():
    net = Chain()
    masks = attach_channel_masks(net, (2, 3, 8, 8))
    with pytest.raises(ValueError, match="bool"):
        prune_conv_bn(net, masks.pairs, [torch.ones(8), torch.ones(6)], (1, 3, 8, 8))
    with pytest.raises(ValueError, match="one keep-vector per pair"):
        prune_conv_bn(net, masks.pairs, [torch.ones(8, dtype=torch.bool)], (1, 3, 8, 8))
    with pytest.raises(ValueError, match="no channel masks"):
        prune_masked(Chain(), (1, 3, 8, 8))


def _pycil_convnets():
    from cim_plugin.pycil import import_pycil

    import_pycil()
    from convs.cifar_resnet import resnet32
    from convs.resnet import resnet18

    return {
        "resnet32": lambda: resnet32(),
        "resnet18": lambda: resnet18(args={"dataset": "cifar100", "model_name": "der"}),
    }


@requires_pycil
@pytest.mark.parametrize("name", ["resnet32", "resnet18"])
def test_pycil_resnets_pruned_equal_masked(name):
    torch.manual_seed(0)
    net = _pycil_convnets()[name]()
    attach_channel_masks(net, (2, 3, 32, 32))
    _randomise(net, seed=3, keep_fraction=0.5)
    pruned = prune_masked(net, (1, 3, 32, 32))
    net.eval(), pruned.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = net(x), pruned(x)
    scale = float(a["features"].abs().max())
    assert scale > 0
    for fa, fb in zip(a["fmaps"], b["fmaps"]):  # every stage, not only the pooled features
        assert torch.allclose(fa, fb, atol=1e-5 * (1 + scale), rtol=1e-5)
    assert torch.allclose(a["features"], b["features"], atol=1e-5 * (1 + scale), rtol=1e-5)
    full = count_parameters(net) - count_parameters(net.channel_masks)
    assert count_parameters(pruned) < 0.5 * full  # about half the channels: well under half the weights
    assert count_flops(pruned, (1, 3, 32, 32)) < 0.5 * count_flops(net, (1, 3, 32, 32))


@requires_pycil
def test_resnet32_all_kept_is_identity_function():
    torch.manual_seed(0)
    net = _pycil_convnets()["resnet32"]()
    attach_channel_masks(net, (2, 3, 32, 32))
    _randomise(net, seed=4, keep_fraction=1.1)
    pruned = prune_masked(net, (1, 3, 32, 32))
    assert max_output_difference(net, pruned, (2, 3, 32, 32)) < 1e-5
    assert count_parameters(pruned) == count_parameters(net) - count_parameters(net.channel_masks)
