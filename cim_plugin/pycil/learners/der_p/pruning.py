"""Physically prune masked channels of Conv2d -> BatchNorm2d pairs, exactly.

After DER's masks are binarised, each pair (conv, bn) with kept output channels K_out and live
input channels K_in is replaced by a :class:`PrunedConvBN`: it gathers the K_in input channels,
runs a conv of shape (|K_out|, |K_in|, kH, kW) and a BatchNorm of |K_out| channels, and scatters
the result into a zero tensor of the full output width (the BN becomes an Identity). Residual
streams therefore keep their width and the network's code is not edited, while the parameters
and multiply-adds drop to the kept channels.

Which input channels are live is found structurally by a probe forward (:func:`live_input_channels`):
a copy of the net with strictly positive conv weights, BNs in eval mode with positive scale and
bias, the binary masks applied, and a positive input. Every op of a ResNet (ReLU, sums, pooling,
the zero padding of a shortcut) then keeps a value nonzero unless it is structurally zero, so a
channel that is 0 in the probe is 0 for every input of the masked net. :func:`max_output_difference`
checks the result on random inputs.

Independent of PyCIL.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
from torch import nn

from .channel_masks import MASKS_ATTR, ChannelMasks, ConvBN, remove_channel_masks

__all__ = ["PrunedConvBN", "live_input_channels", "prune_conv_bn", "prune_masked",
           "max_output_difference", "output_difference_and_scale", "count_parameters", "count_flops"]


def _conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a conv along one axis (PyTorch's formula, integer padding)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class PrunedConvBN(nn.Module):
    """conv + BN restricted to kept channels; output scattered to full width.

    Input (N, C_in, H, W) -> output (N, C_out, H', W'), same dtype/device; channels not in
    `out_index` are exactly 0. Buffers in_index / out_index: int64 channel indices (sorted).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, in_keep: torch.Tensor, out_keep: torch.Tensor):
        super().__init__()
        if isinstance(conv.padding, str):
            raise ValueError(f"conv with padding={conv.padding!r} is not supported; use integer padding")
        in_index = in_keep.nonzero().flatten().to(torch.long)
        out_index = out_keep.nonzero().flatten().to(torch.long)
        if in_index.numel() == 0:  # input structurally zero: keep one (zero) channel so shapes stay valid
            in_index = torch.zeros(1, dtype=torch.long, device=in_keep.device)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.register_buffer("in_index", in_index)
        self.register_buffer("out_index", out_index)
        # (kernel, stride, padding, dilation) per axis, for the output size when no channel is kept
        self.geometry = tuple(
            (conv.kernel_size[d], conv.stride[d], conv.padding[d], conv.dilation[d]) for d in (0, 1)
        )
        if out_index.numel():
            w = conv.weight.detach().index_select(0, out_index).index_select(1, in_index)
            self.conv = nn.Conv2d(len(in_index), len(out_index), conv.kernel_size, conv.stride, conv.padding,
                                  conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                                  device=w.device, dtype=w.dtype)
            with torch.no_grad():
                self.conv.weight.copy_(w)
                if conv.bias is not None:
                    self.conv.bias.copy_(conv.bias.detach()[out_index])
            self.bn = nn.BatchNorm2d(len(out_index), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                                     track_running_stats=bn.track_running_stats, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                if bn.affine:
                    self.bn.weight.copy_(bn.weight.detach()[out_index])
                    self.bn.bias.copy_(bn.bias.detach()[out_index])
                if bn.track_running_stats:
                    self.bn.running_mean.copy_(bn.running_mean[out_index])
                    self.bn.running_var.copy_(bn.running_var[out_index])
                    self.bn.num_batches_tracked.copy_(bn.num_batches_tracked)
            self.bn.train(bn.training)
        else:
            self.conv = None
            self.bn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ho, wo = _conv_out_size(h, *self.geometry[0]), _conv_out_size(w, *self.geometry[1])
        out = x.new_zeros(n, self.out_channels, ho, wo)
        if self.conv is None:
            return out
        if self.in_index.numel() != x.shape[1]:
            x = x.index_select(1, self.in_index)
        return out.index_copy(1, self.out_index, self.bn(self.conv(x)))


def _set_module(net: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    parent._modules[child] = module


@torch.no_grad()
def live_input_channels(net: nn.Module, pairs: Sequence[ConvBN], out_keep: Sequence[torch.Tensor],
                        example_shape: Sequence[int]) -> List[torch.Tensor]:
    """Input channels of each pair's conv that can be nonzero once masks `out_keep` are applied.

    net: the extractor WITHOUT mask hooks (remove them first). out_keep: bool (c_l,) per pair.
    example_shape: (N, C, H, W) of a valid input. Returns bool (c_in(l),) per pair, on net's device.
    """
    probe = copy.deepcopy(net)
    if hasattr(probe, MASKS_ATTR):
        remove_channel_masks(probe)
    probe.eval()
    generator = torch.Generator().manual_seed(0)
    for module in probe.modules():
        if isinstance(module, nn.Conv2d):
            w = module.weight
            fan_in = w[0].numel()
            rand = torch.rand(w.shape, generator=generator, dtype=torch.float64) + 0.5
            module.weight.data = (rand / fan_in).to(w)
            if module.bias is not None:
                module.bias.data.fill_(1.0)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.track_running_stats and module.running_mean is not None:
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
            if module.affine:
                module.weight.data.fill_(1.0)
                module.bias.data.fill_(1.0)
    modules = dict(probe.named_modules())
    handles, seen = [], {}
    for i, (pair, keep) in enumerate(zip(pairs, out_keep)):
        gate = keep.to(torch.float32).view(1, -1, 1, 1)
        handles.append(modules[pair.bn].register_forward_hook(lambda m, inp, out, g=gate: out * g.to(out)))

        def record(m, inputs, i=i):
            seen[i] = inputs[0].detach().abs().amax(dim=(0, 2, 3)) > 0
        handles.append(modules[pair.conv].register_forward_pre_hook(record))
    param = next(probe.parameters())
    try:
        probe(torch.ones(*example_shape, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
    missing = [p.conv for i, p in enumerate(pairs) if i not in seen]
    if missing:
        raise ValueError(f"convs {missing} did not run in the probe forward; the pairs do not belong to this net")
    return [seen[i] for i in range(len(pairs))]


def prune_conv_bn(net: nn.Module, pairs: Sequence[ConvBN], out_keep: Sequence[torch.Tensor],
                  example_shape: Sequence[int]) -> nn.Module:
    """A pruned deep copy of `net` (without mask hooks): each pair -> PrunedConvBN, its BN -> Identity.

    out_keep: bool (c_l,) per pair (the binarised masks). The copy computes what `net` with those
    binary masks computes. `net` itself is not changed.
    """
    if len(out_keep) != len(pairs):
        raise ValueError(f"need one keep-vector per pair, got {len(out_keep)} for {len(pairs)} pairs")
    for keep, pair in zip(out_keep, pairs):
        if keep.dtype != torch.bool or keep.shape != (pair.out_channels,):
            raise ValueError(f"keep-vector of {pair.conv!r} must be bool ({pair.out_channels},), "
                             f"got {keep.dtype} {tuple(keep.shape)}")
    pruned = copy.deepcopy(net)
    if hasattr(pruned, MASKS_ATTR):
        remove_channel_masks(pruned)
    live_in = live_input_channels(pruned, pairs, out_keep, example_shape)
    modules: Dict[str, nn.Module] = dict(pruned.named_modules())
    for pair, keep, live in zip(pairs, out_keep, live_in):
        conv, bn = modules[pair.conv], modules[pair.bn]
        _set_module(pruned, pair.conv, PrunedConvBN(conv, bn, live.to(keep.device), keep))
        _set_module(pruned, pair.bn, nn.Identity())
    return pruned


def prune_masked(net: nn.Module, example_shape: Sequence[int]) -> nn.Module:
    """Prune an extractor carrying ChannelMasks (see channel_masks) at its binarised masks (m > 0.5).

    Returns a new module without masks; `net` is unchanged.
    """
    masks = getattr(net, MASKS_ATTR, None)
    if not isinstance(masks, ChannelMasks):
        raise ValueError(f"{type(net).__name__} has no channel masks; attach_channel_masks() first")
    return prune_conv_bn(net, masks.pairs, masks.keep(), example_shape)


@torch.no_grad()
def max_output_difference(reference: nn.Module, other: nn.Module, example_shape: Sequence[int],
                          trials: int = 2, key: str = "features") -> float:
    """Largest |reference(x)[key] - other(x)[key]| over `trials` random inputs (both in eval mode).

    Outputs may be tensors or dicts of tensors (PyCIL convnets return {"features": ...}).
    """
    return output_difference_and_scale(reference, other, example_shape, trials, key)[0]


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for CUDA convolutions and matmuls inside the block (restored after). TF32, the default of cuDNN's
    convolutions on Ampere and later GPUs, keeps 10 mantissa bits: two mathematically equal networks then differ
    by ~1e-3 relative, far above float32's round-off that a tolerance like der_p's 1e-4 is set for."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def output_difference_and_scale(reference: nn.Module, other: nn.Module, example_shape: Sequence[int],
                                trials: int = 2, key: str = "features") -> Tuple[float, float]:
    """(largest |reference(x) - other(x)|, largest |reference(x)|) over the same `trials` random inputs
    x ~ N(0, 1) of shape `example_shape` (both modules in eval mode; their modes are restored), computed in
    full float32 (TF32 off, see :func:`full_float32`)."""
    states = {m: m.training for m in list(reference.modules()) + list(other.modules())}
    reference.eval()
    other.eval()
    param = next(reference.parameters())
    worst, scale = 0.0, 0.0
    try:
        with torch.no_grad(), full_float32():
            for t in range(trials):
                gen = torch.Generator().manual_seed(1000 + t)
                x = torch.randn(*example_shape, generator=gen, dtype=param.dtype).to(param.device)
                a, b = reference(x), other(x)
                if isinstance(a, dict):
                    a, b = a[key], b[key]
                worst = max(worst, float((a - b).abs().max()))
                scale = max(scale, float(a.abs().max()))
    finally:
        for m, flag in states.items():
            m.train(flag)
    return worst, scale


def count_parameters(net: nn.Module) -> int:
    """Number of parameter elements of `net` (masks included if still attached)."""
    return int(sum(p.numel() for p in net.parameters()))


@torch.no_grad()
def count_flops(net: nn.Module, example_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward of ONE image: Conv2d and Linear layers, counted with hooks.

    example_shape: (N, C, H, W); the count is divided by N. Returns an int.
    Conv: C_out * H_out * W_out * (C_in / groups) * kH * kW. Linear (nn.Linear, or any module
    whose name ends in "Linear" with a 2-D weight, e.g. PyCIL's SimpleLinear): in * out features.
    """
    total = [0]

    def conv_hook(m, inputs, output):
        total[0] += output.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m, inputs, output):
        x = inputs[0]
        total[0] += (x.numel() // x.shape[-1]) * m.weight.numel()

    handles = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear) or (
            type(m).__name__.endswith("Linear") and getattr(m, "weight", None) is not None and m.weight.dim() == 2
        ):
            handles.append(m.register_forward_hook(linear_hook))
    states = {m: m.training for m in net.modules()}
    net.eval()
    param = next(net.parameters())
    try:
        net(torch.zeros(*example_shape, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
        for m, flag in states.items():
            m.train(flag)
    return int(total[0] // example_shape[0])
