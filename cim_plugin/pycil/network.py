"""PyCIL's networks as CIM sees them: single-backbone nets (IncrementalNet, CosineIncrementalNet) and
multi-backbone nets (DERNet, FOSTERNet), through one view ``x -> {"logits", "fmaps", "features", "weight"}``."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..method.masks import count_relu_sites


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside PyCIL's nn.DataParallel or the torchrun DistributedDataParallel wrapper."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return network.module if isinstance(network, wrappers) else network


def classifier_weight(fc: nn.Module) -> torch.Tensor:
    """Classifier rows (K, D) of PyCIL's linear heads (SimpleLinear, CosineLinear, SplitCosineLinear)."""
    if hasattr(fc, "fc1") and hasattr(fc, "fc2"):  # SplitCosineLinear
        return F.normalize(torch.cat([fc.fc1.weight, fc.fc2.weight], 0), dim=1)
    weight = fc.weight
    if type(fc).__name__.startswith("Cosine"):
        weight = F.normalize(weight, dim=1)
    return weight


def fmaps_and_features(network: nn.Module, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One pass of a PyCIL network: ([last feature map per backbone], features (B, D), fc weight (K, D)).

    Single-backbone nets (IncrementalNet, CosineIncrementalNet) and multi-backbone nets (DERNet,
    FOSTERNet: features are the concatenation over `convnets`) are both handled.
    """
    net = unwrap(network)
    if hasattr(net, "AdaptiveExtractors"):
        return _memo_fmaps_and_features(net, x)
    convnets = list(net.convnets) if hasattr(net, "convnets") else [net.convnet]
    outs = [convnet(x) for convnet in convnets]
    fmaps = [o["fmaps"][-1] for o in outs]
    features = torch.cat([o["features"] for o in outs], 1)
    return fmaps, features, classifier_weight(net.fc)


def _memo_fmaps_and_features(net: nn.Module, x: torch.Tensor):
    """MEMO's AdaptiveNet: the shared generalized blocks once, then each adaptive extractor, whose last feature
    map is the input of its own ``avgpool`` (read by a forward pre-hook, so the extractor runs as it is)."""
    base = net.TaskAgnosticExtractor(x)
    fmaps: List[torch.Tensor] = []
    features = []
    for extractor in net.AdaptiveExtractors:
        handle = extractor.avgpool.register_forward_pre_hook(lambda module, args: fmaps.append(args[0]))
        try:
            features.append(extractor(base))
        finally:
            handle.remove()
    return fmaps, torch.cat(features, 1), classifier_weight(net.fc)


def shared_relu_sites(network: nn.Module, x: torch.Tensor) -> int:
    """ReLU sites run once for all backbones before them (MEMO's generalized blocks); 0 for other nets."""
    net = unwrap(network)
    return count_relu_sites(net.TaskAgnosticExtractor, x) if hasattr(net, "TaskAgnosticExtractor") else 0


class FmapView(nn.Module):
    """A PyCIL network seen as `x -> {"logits", "fmaps", "features", "weight"}` for CAMs.

    Runs every backbone once (the same activation calls, in the same order, as the network's own
    forward), so the CIM branch's PAU sites are the network's ReLU sites.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.net = unwrap(network)

    @property
    def num_backbones(self) -> int:
        """Backbones of the network (DERNet, FOSTERNet: one per phase so far; MEMO: adaptive extractors)."""
        if hasattr(self.net, "AdaptiveExtractors"):
            return len(self.net.AdaptiveExtractors)
        return len(self.net.convnets) if hasattr(self.net, "convnets") else 1

    def shared_sites(self, x: torch.Tensor) -> int:
        """ReLU sites before the backbones, shared by all of them (see :func:`shared_relu_sites`)."""
        return shared_relu_sites(self.net, x)

    def forward(self, x: torch.Tensor) -> Dict[str, Any]:
        fmaps, features, weight = fmaps_and_features(self.net, x)
        logits = self.net.fc(features)
        logits = logits["logits"] if isinstance(logits, dict) else logits
        return {"logits": logits, "fmaps": fmaps, "features": features, "weight": weight}
