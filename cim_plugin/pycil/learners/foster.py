"""FOSTER (Wang et al., ECCV 2022), PyCIL's ``models.foster``: supported, also under torchrun.

Inner loss: CE in phase 0; CE(logits / per-class weights) + CE(fe_logits) + λ_okd KD(logits[:, :old],
old_logits, T) in later phases. Its epochs are ``init_epochs`` / ``boosting_epochs``; its compression epochs
run without CIM work (``CIMMixin._feature_compression``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import ce_loss, kd_loss, temperature
from .registry import LearnerSpec, register

__all__ = ["foster_loss", "SPEC"]


def foster_loss(learner, out, y, x) -> torch.Tensor:
    if learner._cur_task == 0 or out.get("fe_logits") is None:
        return ce_loss(learner, out, y, x)
    logits = out["logits"]
    known = learner._known_classes
    clf = F.cross_entropy(logits / learner.per_cls_weights, y)
    fe = F.cross_entropy(out["fe_logits"], y)
    kd = learner.lambda_okd * kd_loss(logits[:, :known], out["old_logits"].detach(), temperature(learner))
    return clf + fe + kd


SPEC = register(LearnerSpec("foster", inner_loss=foster_loss, train_loops=("_init_train", "_feature_boosting"),
                            epoch_keys=("init_epochs", "boosting_epochs"), ddp=True))
