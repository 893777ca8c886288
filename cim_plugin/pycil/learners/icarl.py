"""iCaRL (Rebuffi et al., CVPR 2017), PyCIL's ``models.icarl``: supported, also under torchrun.

Inner loss: CE in phase 0; CE + KD(logits[:, :old], old_net(x), T) in later phases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import ce_loss, first_phase, kd_loss, logits_of, old_logits, temperature
from .registry import LearnerSpec, register

__all__ = ["icarl_loss", "SPEC"]


def icarl_loss(learner, out, y, x) -> torch.Tensor:
    if first_phase(learner):
        return ce_loss(learner, out, y, x)
    logits = logits_of(out)
    known = learner._known_classes
    return F.cross_entropy(logits, y) + kd_loss(logits[:, :known], old_logits(learner, x), temperature(learner))


SPEC = register(LearnerSpec("icarl", inner_loss=icarl_loss, train_loops=("_init_train", "_update_representation"),
                            ddp=True))
