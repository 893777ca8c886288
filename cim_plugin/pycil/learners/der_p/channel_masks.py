"""DER's channel-level masks (Yan et al., CVPR 2021): m_l = sigmoid(s * e_l) per output channel.

Every Conv2d of a feature extractor whose output goes straight into a BatchNorm2d gets a mask on
its output channels, applied by a forward hook on that BatchNorm (so a masked channel is exactly
0 before the following ReLU, also in nets that call ``F.relu`` functionally). The network's code
is not edited; the mask parameters live in a :class:`ChannelMasks` submodule registered on the
extractor, so an optimiser over ``extractor.parameters()`` trains them.

The parameters e_l are trained with the network's own optimiser (SGD), as in DER and HAT: the
gradient s * sigmoid'(s e) is large while a mask is undecided (|s e| small) and vanishes once it
saturates, so masks flip quickly and then stay put. Initialise e = init / s_max (init = 6 gives
m = 0.9975 at s = s_max: every channel on) and keep them out of weight decay.

s is annealed within each epoch from 1/s_max to s_max over its batches (:func:`anneal_scale`),
so masks are nearly binary by the epoch's end. :func:`sparsity_loss` is the fraction of the
extractor's conv parameters in use, differentiable in the masks.

Independent of PyCIL: works on any nn.Module built of Conv2d -> BatchNorm2d pairs.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch
from torch import nn

from ....config import ConfigError

__all__ = ["ConvBN", "find_conv_bn_pairs", "ChannelMasks", "attach_channel_masks", "remove_channel_masks",
           "anneal_scale", "sparsity_loss", "check_s_max", "MASKS_ATTR"]

MASKS_ATTR = "channel_masks"  # name of the ChannelMasks submodule on the extractor


class ConvBN(NamedTuple):
    """One maskable layer: a Conv2d and the BatchNorm2d its output goes into.

    conv, bn: qualified module names in the extractor. in_channels, out_channels: of the conv.
    kernel_area: kH * kW. input_from: index (in the pair list) of the masked layer whose output
    is this conv's input (through in-place ReLUs), or None (the image, a residual sum, ...).
    """

    conv: str
    bn: str
    in_channels: int
    out_channels: int
    kernel_area: int
    input_from: Optional[int]


def _example_input(net: nn.Module, example_shape: Sequence[int]) -> torch.Tensor:
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    if len(example_shape) != 4:
        raise ValueError(f"example_shape must be (N, C, H, W), got {tuple(example_shape)}")
    return torch.randn(*example_shape, device=device, dtype=dtype)


def find_conv_bn_pairs(net: nn.Module, example_shape: Sequence[int] = (2, 3, 32, 32)) -> List[ConvBN]:
    """Every Conv2d of `net` with the BatchNorm2d that its output feeds, found by one traced forward.

    A forward of a random input of `example_shape` (N, C, H, W) records, with hooks, which tensor
    each module produced and consumed: a pair is a BatchNorm2d whose input IS the conv's output
    tensor. Raises ConfigError (a ValueError) if a conv is not followed by its own BatchNorm2d,
    is grouped or dilated into a form we cannot prune, or runs more than once per forward:
    such a network cannot be masked channel-wise.
    """
    convs = {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    bns = {name: m for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    if not convs:
        raise ConfigError(f"{type(net).__name__} has no Conv2d layer: there are no channels to mask")
    conv_out, conv_in, bn_in, calls = {}, {}, {}, {}
    handles = []

    def conv_hook(name):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            conv_in[name] = inputs[0]
            conv_in_version[name] = inputs[0]._version
            conv_out[name] = output
        return hook

    def bn_hook(name):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            bn_in[name] = inputs[0]
            bn_out[name] = output
            bn_version[name] = output._version
        return hook

    bn_out, bn_version, conv_in_version = {}, {}, {}
    for name, module in convs.items():
        handles.append(module.register_forward_hook(conv_hook(name)))
    for name, module in bns.items():
        handles.append(module.register_forward_hook(bn_hook(name)))
    was_training = {m: m.training for m in net.modules()}
    try:
        net.eval()
        with torch.no_grad():
            net(_example_input(net, example_shape))
    finally:
        for h in handles:
            h.remove()
        for m, flag in was_training.items():
            m.train(flag)

    pairs: List[ConvBN] = []
    bn_index = {}
    for cname, conv in convs.items():  # registration order = forward order in torchvision-style nets
        if calls.get(cname, 0) != 1:
            raise ConfigError(
                f"conv layer {cname!r} of {type(net).__name__} runs {calls.get(cname, 0)} times per forward; "
                f"only convs that run exactly once can be masked (use a ResNet such as resnet32 or resnet18)"
            )
        match = [b for b in bns if b in bn_in and bn_in[b] is conv_out[cname]]
        if len(match) != 1:
            raise ConfigError(
                f"conv layer {cname!r} of {type(net).__name__} is not followed by its own BatchNorm2d, so its "
                f"channels cannot be masked and pruned (DER's masks need Conv2d -> BatchNorm2d pairs; use a "
                f"ResNet such as resnet32 or resnet18)"
            )
        if conv.groups != 1:
            raise ConfigError(f"conv layer {cname!r} is grouped (groups={conv.groups}); grouped convs cannot be pruned")
        bname = match[0]
        if bns[bname].num_features != conv.out_channels or calls.get(bname, 0) != 1:
            raise ConfigError(f"BatchNorm2d {bname!r} after conv {cname!r} does not match its channels")
        bn_index[bname] = len(pairs)
        pairs.append(ConvBN(cname, bname, conv.in_channels, conv.out_channels,
                            int(conv.kernel_size[0] * conv.kernel_size[1]), None))
    # Which masked layer feeds each conv: the conv's input is that BN's output, changed in place at
    # most once (an in-place ReLU). Two in-place changes (e.g. `out += identity; relu_(out)`) mean a
    # residual sum, whose channels are not gated by that one mask: input_from stays None.
    out = []
    for pair in pairs:
        source = next((bn_index[b] for b in bn_index if bn_out[b] is conv_in[pair.conv]
                       and conv_in_version[pair.conv] - bn_version[b] <= 1), None)
        out.append(pair._replace(input_from=source))
    return out


def check_s_max(s_max: float, key: str = "s_max") -> float:
    """s_max as a float; ConfigError naming `key` unless it is a finite number > 1."""
    if isinstance(s_max, bool) or not isinstance(s_max, (int, float)) or not (1.0 < float(s_max) < float("inf")):
        raise ConfigError(f'"{key}" must be a finite number > 1 (DER uses 400), got {s_max!r}')
    return float(s_max)


def anneal_scale(batch: int, num_batches: int, s_max: float) -> float:
    """DER's in-epoch schedule: s = 1/s_max + (s_max - 1/s_max) * batch / (num_batches - 1).

    batch: 0-based index in the epoch; num_batches: batches per epoch (>= 1; with one batch, s = s_max).
    """
    s_max = check_s_max(s_max)
    if num_batches < 1 or not 0 <= batch < num_batches:
        raise ValueError(f"need 0 <= batch < num_batches, got batch={batch}, num_batches={num_batches}")
    if num_batches == 1:
        return s_max
    return 1.0 / s_max + (s_max - 1.0 / s_max) * batch / (num_batches - 1)


class _MaskHook:
    """Forward hook on a BatchNorm2d: output * mask (1, C, 1, 1). A class (not a closure) so that
    deep copies of the extractor point at the copied ChannelMasks."""

    def __init__(self, masks: "ChannelMasks", index: int):
        self.masks = masks
        self.index = index

    def __call__(self, module, inputs, output):
        return output * self.masks.mask(self.index).to(output.dtype).view(1, -1, 1, 1)


class ChannelMasks(nn.Module):
    """Mask parameters of one extractor: e_l (float32, (c_l,)) per maskable layer, in `logits`.

    Attributes: pairs (List[ConvBN]); s (float, current scale); s_max (float); binary (bool: if
    True, masks are the hard 0/1 values 1[m > 0.5] at s_max, used for pruning and its check).
    """

    def __init__(self, pairs: Sequence[ConvBN], s_max: float = 400.0, init: float = 6.0):
        super().__init__()
        self.pairs = list(pairs)
        self.s_max = check_s_max(s_max)
        self.s = self.s_max
        self.binary = False
        self.logits = nn.ParameterList([nn.Parameter(torch.full((p.out_channels,), float(init) / self.s_max))
                                        for p in self.pairs])
        self._handles: List = []

    def mask(self, index: int) -> torch.Tensor:
        """Mask of layer `index`: float (c_l,) in (0, 1), or 0/1 when `binary`."""
        e = self.logits[index]
        if self.binary:
            return (e > 0).to(e.dtype)  # sigmoid(s_max * e) > 0.5  <=>  e > 0
        return torch.sigmoid(self.s * e)

    def masks(self) -> List[torch.Tensor]:
        return [self.mask(i) for i in range(len(self.pairs))]

    def keep(self) -> List[torch.Tensor]:
        """Binarised masks m > 0.5 at s_max: bool (c_l,) per layer."""
        return [(e.detach() > 0) for e in self.logits]

    def clamp_(self, bound: float) -> None:
        """Clamp s_max * e to [-bound, bound] (in place), so no channel saturates beyond recovery."""
        with torch.no_grad():
            for e in self.logits:
                e.clamp_(-bound / self.s_max, bound / self.s_max)

    def sparsity(self) -> torch.Tensor:
        """:func:`sparsity_loss` of the current masks (0-dim tensor)."""
        return sparsity_loss(self.masks(), self.pairs)


def attach_channel_masks(net: nn.Module, example_shape: Sequence[int] = (2, 3, 32, 32), s_max: float = 400.0,
                         init: float = 6.0) -> ChannelMasks:
    """Find the conv/BN pairs of `net`, register a ChannelMasks as `net.channel_masks` and hook each BN.

    init: starting s_max * e (so m = sigmoid(init) at s = s_max; 6 -> 0.9975: all channels on).
    Returns the ChannelMasks (its parameters are on `net`'s device). Raises ConfigError for a net
    whose layers cannot be masked, or one that already has masks.
    """
    if hasattr(net, MASKS_ATTR):
        raise ValueError(f"{type(net).__name__} already has channel masks; call remove_channel_masks first")
    pairs = find_conv_bn_pairs(net, example_shape)
    masks = ChannelMasks(pairs, s_max=s_max, init=init)
    param = next(net.parameters(), None)
    if param is not None:
        masks.to(param.device)
    net.add_module(MASKS_ATTR, masks)
    modules = dict(net.named_modules())
    masks._handles = [modules[p.bn].register_forward_hook(_MaskHook(masks, i)) for i, p in enumerate(pairs)]
    return masks


def remove_channel_masks(net: nn.Module) -> ChannelMasks:
    """Remove the hooks and the ChannelMasks submodule from `net`; return the ChannelMasks."""
    masks = getattr(net, MASKS_ATTR, None)
    if not isinstance(masks, ChannelMasks):
        raise ValueError(f"{type(net).__name__} has no channel masks to remove")
    # Remove by looking at the hooks themselves (handles do not survive deep copies).
    for module in net.modules():
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, _MaskHook) and hook.masks is masks:
                del module._forward_hooks[key]
    masks._handles = []
    delattr(net, MASKS_ATTR)
    return masks


def sparsity_loss(masks: Sequence[torch.Tensor], pairs: Sequence[ConvBN]) -> torch.Tensor:
    """Fraction of conv parameters in use: sum_l k_l |m_in(l)|_1 |m_l|_1 / sum_l k_l c_in(l) c_l.

    masks: float (c_l,) per layer, in [0, 1]. pairs: the layers (kernel area k_l, channel counts,
    and `input_from`: whose mask gates layer l's input; None -> all ones, |m_in|_1 = c_in).
    Returns a 0-dim tensor in [0, 1] (1 when all masks are 1), differentiable in the masks.
    """
    if len(masks) != len(pairs) or not pairs:
        raise ValueError(f"need one mask per layer and at least one layer, got {len(masks)} masks, {len(pairs)} layers")
    num = masks[0].new_zeros(())
    den = 0.0
    for mask, pair in zip(masks, pairs):
        if mask.shape != (pair.out_channels,):
            raise ValueError(f"mask of {pair.conv!r} has shape {tuple(mask.shape)}, expected ({pair.out_channels},)")
        used_in = masks[pair.input_from].sum() if pair.input_from is not None else float(pair.in_channels)
        num = num + pair.kernel_area * used_in * mask.sum()
        den += pair.kernel_area * pair.in_channels * pair.out_channels
    return num / den
