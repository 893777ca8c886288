"""The inner loss of CIM's bilevel step: each host learner's own training loss (SPEC step 7).

The official CIM code differentiates, in the inner step, exactly the loss the learner trains θ with in
that phase. Phase 0 of every learner is plain cross-entropy; later phases add the learner's own terms:

| learner | phase 0 | phases > 0 |
|---|---|---|
| icarl | CE | CE + KD(logits[:, :old], old_net(h), T) |
| wa | CE | (1 - λ) CE + λ KD, λ = old / total classes |
| bic | CE | (1 - λ) CE + λ KD on the bias-corrected logits, λ = BiC's ``lamda`` (old / total classes) |
| der, der_p | CE | CE + CE(aux_logits, aux targets) |
| memo | CE | CE + α_aux CE(aux_logits, aux targets), α_aux = args["alpha_aux"] |
| foster | CE | CE(logits / per-class weights) + CE(fe_logits) + λ_okd KD(logits[:, :old], old_logits, T) |
| replay | CE | CE |
| lucir | CE | CE(σ cos) + λ (1 − cos(f, f_old)) + margin ranking on old-class samples (``lucir_losses``) |

Every function here has the signature ``loss(learner, out, y, x) -> scalar Tensor``: ``out`` is the host
network's forward output (a dict) for the hybrid input ``x`` (float Tensor(B, C, H, W)) and ``y`` are the
labels (int Tensor(B,)). The learner is read only for the attributes its own loss reads (known and total
classes, the old network, FOSTER's per-class weights and λ_okd, the temperature T).
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn.functional as F

from .host import learner_modules

__all__ = ["kd_loss", "der_aux_targets", "inner_loss_for", "INNER_LOSSES"]

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


def _logits(out) -> torch.Tensor:
    return out["logits"] if isinstance(out, dict) else out


def _temperature(learner, default: float = 2.0) -> float:
    """The learner's distillation temperature: args["T"], else its module constant T."""
    args = getattr(learner, "args", {}) or {}
    if "T" in args:
        return float(args["T"])
    for module in learner_modules(type(learner)):
        value = getattr(module, "T", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return default


def _old_logits(learner, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _logits(learner._old_network(x)).detach()


def ce_loss(learner, out, y, x) -> torch.Tensor:
    return F.cross_entropy(_logits(out), y)


def icarl_loss(learner, out, y, x) -> torch.Tensor:
    if learner._cur_task == 0 or getattr(learner, "_old_network", None) is None:
        return ce_loss(learner, out, y, x)
    logits = _logits(out)
    known = learner._known_classes
    return F.cross_entropy(logits, y) + kd_loss(logits[:, :known], _old_logits(learner, x), _temperature(learner))


def wa_loss(learner, out, y, x) -> torch.Tensor:
    if learner._cur_task == 0 or getattr(learner, "_old_network", None) is None:
        return ce_loss(learner, out, y, x)
    logits = _logits(out)
    known = learner._known_classes
    lam = known / learner._total_classes
    kd = kd_loss(logits[:, :known], _old_logits(learner, x), _temperature(learner))
    return (1 - lam) * F.cross_entropy(logits, y) + lam * kd


def bic_loss(learner, out, y, x) -> torch.Tensor:
    """BiC's stage-1 loss: WA's form with BiC's own λ (``learner.lamda``), on its bias-corrected logits."""
    if learner._cur_task == 0 or getattr(learner, "_old_network", None) is None:
        return ce_loss(learner, out, y, x)
    logits = _logits(out)
    known = learner._known_classes
    lam = float(getattr(learner, "lamda", known / learner._total_classes))
    kd = kd_loss(logits[:, :known], _old_logits(learner, x), _temperature(learner))
    return (1 - lam) * F.cross_entropy(logits, y) + lam * kd


def der_loss(learner, out, y, x) -> torch.Tensor:
    if learner._cur_task == 0 or out.get("aux_logits") is None:
        return ce_loss(learner, out, y, x)
    aux = F.cross_entropy(out["aux_logits"], der_aux_targets(y, learner._known_classes))
    return F.cross_entropy(out["logits"], y) + aux


def memo_loss(learner, out, y, x) -> torch.Tensor:
    """MEMO's loss: DER's with the auxiliary term weighted by ``alpha_aux``."""
    if learner._cur_task == 0 or out.get("aux_logits") is None:
        return ce_loss(learner, out, y, x)
    aux = F.cross_entropy(out["aux_logits"], der_aux_targets(y, learner._known_classes))
    return F.cross_entropy(out["logits"], y) + float(learner.args["alpha_aux"]) * aux


def foster_loss(learner, out, y, x) -> torch.Tensor:
    if learner._cur_task == 0 or out.get("fe_logits") is None:
        return ce_loss(learner, out, y, x)
    logits = out["logits"]
    known = learner._known_classes
    clf = F.cross_entropy(logits / learner.per_cls_weights, y)
    fe = F.cross_entropy(out["fe_logits"], y)
    kd = learner.lambda_okd * kd_loss(logits[:, :known], out["old_logits"].detach(), _temperature(learner))
    return clf + fe + kd


def lucir_loss(learner, out, y, x) -> torch.Tensor:
    """LUCIR's own loss (CE + λ less-forget + margin ranking), computed by the learner (``lucir.py``)."""
    return learner.lucir_loss(out, y, x)


#: learner name (PyCIL's model_name) -> its inner loss.
INNER_LOSSES: Dict[str, InnerLoss] = {
    "icarl": icarl_loss, "wa": wa_loss, "der": der_loss, "der_p": der_loss, "foster": foster_loss,
    "replay": ce_loss, "lucir": lucir_loss, "bic": bic_loss,
    "memo": memo_loss,
}


def inner_loss_for(model_name: str) -> InnerLoss:
    """The inner loss of learner ``model_name`` (plain CE for a learner without one of its own)."""
    return INNER_LOSSES.get(model_name.lower(), ce_loss)
