"""MEMO (Zhou et al., ICLR 2023), PyCIL's ``models.memo``: supported (one process).

Inner loss: CE in phase 0; CE + α_aux CE(aux_logits, aux targets) in later phases, α_aux = args["alpha_aux"].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import ce_loss, der_aux_targets
from .registry import LearnerSpec, register

__all__ = ["memo_loss", "SPEC"]


def memo_loss(learner, out, y, x) -> torch.Tensor:
    """MEMO's loss: DER's with the auxiliary term weighted by ``alpha_aux``."""
    if learner._cur_task == 0 or out.get("aux_logits") is None:
        return ce_loss(learner, out, y, x)
    aux = F.cross_entropy(out["aux_logits"], der_aux_targets(y, learner._known_classes))
    return F.cross_entropy(out["logits"], y) + float(learner.args["alpha_aux"]) * aux


SPEC = register(LearnerSpec("memo", inner_loss=memo_loss, train_loops=("_init_train", "_update_representation")))
