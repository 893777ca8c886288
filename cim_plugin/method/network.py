"""How CIM sees a network: the view protocol's plain-CNN implementation, CAMs of a view's output, which
parameters the inner step updates, copying PAUs between backbones, and eval mode for a block."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict

import torch
from torch import nn

from .masks import CIMBranch, cam_from_feature_maps

__all__ = ["GapClassifierView", "is_fast_weight", "default_logits", "default_to_input", "cam_of_output", "copy_block",
           "evaluating"]


def is_fast_weight(name: str) -> bool:
    """Parameters the inner step updates: every trainable one but the classifier heads (fc, aux_fc,
    fe_fc, oldfc), as the official code (`'fc' not in name`), so the outer loss improves through the masks."""
    return "fc" not in name


def default_logits(out) -> torch.Tensor:
    """Logits (B, K) of a network output: the tensor itself or its ``"logits"`` entry."""
    return out["logits"] if isinstance(out, dict) else out


def default_to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, H, W) in [0, 1]."""
    return images.float().div(255)


def cam_of_output(out: Dict[str, Any], labels: torch.Tensor, size) -> torch.Tensor:
    """CAM (B, H, W) in [0, 1] of class `labels` from a view's output (weight detached)."""
    return cam_from_feature_maps(out["fmaps"], out["weight"].detach(), labels, out_size=tuple(size))


def copy_block(branch: CIMBranch, size: int, src: int, dst: int, offset: int = 0) -> None:
    """Copy the PAUs of backbone `src` onto those of backbone `dst` (blocks of `size` sites, call order,
    after `offset` shared sites)."""
    with torch.no_grad():
        for k in range(size):
            branch.paus[offset + dst * size + k].load_state_dict(branch.paus[offset + src * size + k].state_dict())


class GapClassifierView(nn.Module):
    """The view of a plain CNN ``fc(mean_hw(body(x)))``: CIM's ``view`` for networks with ``body`` and ``fc``."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.net = network

    def forward(self, x: torch.Tensor) -> Dict[str, Any]:
        fmap = self.net.body(x)
        features = fmap.mean((2, 3))
        return {"logits": self.net.fc(features), "fmaps": [fmap], "features": features, "weight": self.net.fc.weight}


@contextmanager
def evaluating(network: nn.Module):
    """Every module of `network` in eval mode inside the block, each back in its own mode after."""
    was_training = {m: m.training for m in network.modules()}
    network.eval()
    try:
        yield
    finally:
        for module, flag in was_training.items():
            module.train(flag)
