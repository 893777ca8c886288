"""DER (Yan et al., CVPR 2021), PyCIL's ``models.der``: supported, also under torchrun.

Inner loss: CE in phase 0; CE + CE(aux_logits, aux targets) in later phases (also der_p's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import ce_loss, der_aux_targets
from .registry import LearnerSpec, register

__all__ = ["der_loss", "SPEC"]


def der_loss(learner, out, y, x) -> torch.Tensor:
    if learner._cur_task == 0 or out.get("aux_logits") is None:
        return ce_loss(learner, out, y, x)
    aux = F.cross_entropy(out["aux_logits"], der_aux_targets(y, learner._known_classes))
    return F.cross_entropy(out["logits"], y) + aux


SPEC = register(LearnerSpec("der", inner_loss=der_loss, train_loops=("_init_train", "_update_representation"),
                            ddp=True))
