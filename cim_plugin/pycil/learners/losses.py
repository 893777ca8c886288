"""The pieces the learners' inner losses share (each learner's own loss is in its file).

The inner loss of CIM's bilevel step is each host learner's own training loss (SPEC step 7): the
official CIM code differentiates, in the inner step, exactly the loss the learner trains θ with in that
phase. Phase 0 of every learner is plain cross-entropy (:func:`ce_loss`); later phases add the learner's
own terms (knowledge distillation :func:`kd_loss`, DER's auxiliary labels :func:`der_aux_targets`, ...).

Every inner loss has the signature ``loss(learner, out, y, x) -> scalar Tensor`` (:data:`InnerLoss`):
``out`` is the host network's forward output (a dict) for the hybrid input ``x`` (float Tensor(B, C, H, W))
and ``y`` are the labels (int Tensor(B,)). The learner is read only for the attributes its own loss reads
(known and total classes, the old network, FOSTER's per-class weights and λ_okd, the temperature T).
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F

from ..constants import learner_modules

__all__ = ["InnerLoss", "kd_loss", "der_aux_targets", "logits_of", "temperature", "old_logits", "ce_loss",
           "first_phase"]

InnerLoss = Callable[[object, Dict[str, torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def kd_loss(pred: torch.Tensor, soft: torch.Tensor, T: float) -> torch.Tensor:
    """Knowledge distillation as PyCIL writes it: -sum(softmax(soft/T) * log_softmax(pred/T)) / B.

    pred, soft: float Tensor(B, K) logits (``soft`` is the frozen teacher's). Returns a scalar.
    """
    log_p = torch.log_softmax(pred / T, dim=1)
    q = torch.softmax(soft / T, dim=1)
    return -(q * log_p).sum() / pred.shape[0]


def der_aux_targets(y: torch.Tensor, known: int) -> torch.Tensor:
    """DER's auxiliary labels (B,): 0 for every old class, 1 + (y - known) for new classes."""
    return torch.where(y >= known, y - known + 1, torch.zeros_like(y))


def logits_of(out) -> torch.Tensor:
    """The logits of a network's output: ``out["logits"]`` for PyCIL's dict outputs, else ``out`` itself."""
    return out["logits"] if isinstance(out, dict) else out


def temperature(learner, default: float = 2.0) -> float:
    """The learner's distillation temperature: args["T"], else its module constant T."""
    args = getattr(learner, "args", {}) or {}
    if "T" in args:
        return float(args["T"])
    for module in learner_modules(type(learner)):
        value = getattr(module, "T", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return default


def old_logits(learner, x: torch.Tensor) -> torch.Tensor:
    """The frozen previous network's logits for ``x`` (no gradient)."""
    with torch.no_grad():
        return logits_of(learner._old_network(x)).detach()


def first_phase(learner) -> bool:
    """Phase 0, or no previous network yet: the phase whose loss is plain CE for the distilling learners."""
    return learner._cur_task == 0 or getattr(learner, "_old_network", None) is None


def ce_loss(learner, out, y, x) -> torch.Tensor:
    """Plain cross-entropy on the logits: every learner's phase-0 loss, and Replay's in every phase."""
    return F.cross_entropy(logits_of(out), y)
