"""WA (Zhao et al., CVPR 2020), PyCIL's ``models.wa``: supported, also under torchrun.

Inner loss: CE in phase 0; (1 - λ) CE + λ KD in later phases, λ = old / total classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import ce_loss, first_phase, kd_loss, logits_of, old_logits, temperature
from .registry import LearnerSpec, register

__all__ = ["wa_loss", "SPEC"]


def wa_loss(learner, out, y, x) -> torch.Tensor:
    if first_phase(learner):
        return ce_loss(learner, out, y, x)
    logits = logits_of(out)
    known = learner._known_classes
    lam = known / learner._total_classes
    kd = kd_loss(logits[:, :known], old_logits(learner, x), temperature(learner))
    return (1 - lam) * F.cross_entropy(logits, y) + lam * kd


SPEC = register(LearnerSpec("wa", inner_loss=wa_loss, train_loops=("_init_train", "_update_representation"),
                            ddp=True))
