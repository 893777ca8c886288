"""LUCIR's loss terms (Hou et al., CVPR 2019), as plain functions of tensors.

Total loss of a phase t > 0 (phase 0 is the first term alone):

    L = CE(σ · cos(W, f(x)), y) + λ · L_less-forget + w_mr · L_margin-ranking

- less-forget: mean over the batch of 1 − cos(f_new(x), f_old(x)) on the penultimate features, the
  old network frozen; λ = λ_base · √(old classes / new classes of the phase) (the official code's
  ratio; the paper prints it inverted);
- margin ranking, on the samples of old classes only: the anchor is the unscaled cosine score of the
  true class, the negatives the K highest unscaled scores among the new classes, and the hinge
  max(0, m − s_true + s_neg) is averaged over (old samples × K).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["cosine_scores", "less_forget_loss", "less_forget_lambda", "margin_ranking_loss", "lucir_loss"]


def cosine_scores(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Unscaled cosine scores (B, K) between features (B, D) and class weights (K, D)."""
    return F.normalize(features, dim=1) @ F.normalize(weight, dim=1).t()


def less_forget_loss(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 − cos(features, old_features); both (B, D), the old ones detached."""
    return (1.0 - F.cosine_similarity(features, old_features.detach(), dim=1)).mean()


def less_forget_lambda(lambda_base: float, old_classes: int, new_classes: int, adapt: bool = True) -> float:
    """λ = λ_base · √(old / new classes) when ``adapt``, else λ_base."""
    if not adapt:
        return float(lambda_base)
    return float(lambda_base) * math.sqrt(old_classes / max(1, new_classes))


def margin_ranking_loss(scores: torch.Tensor, y: torch.Tensor, old_classes: int, margin: float = 0.5,
                        k: int = 2) -> torch.Tensor:
    """LUCIR's inter-class separation on old-class samples.

    scores: unscaled cosine scores (B, C), the first ``old_classes`` columns the old classes; y: (B,)
    labels. Returns the mean of max(0, margin − s_true + s_neg) over (old samples × K negatives), where the
    negatives are each sample's K highest new-class scores; 0 (with a graph) when the batch holds no old
    sample or the phase no new class.
    """
    new = scores.shape[1] - old_classes
    old_rows = y < old_classes
    if new <= 0 or not bool(old_rows.any()):
        return scores.sum() * 0.0
    k = min(int(k), new)
    s = scores[old_rows]
    true = s.gather(1, y[old_rows].unsqueeze(1))  # (n, 1)
    hard = s[:, old_classes:].topk(k, dim=1).values  # (n, K)
    return F.relu(margin - true + hard).mean()


def lucir_loss(logits: torch.Tensor, scores: torch.Tensor, features: torch.Tensor, y: torch.Tensor, *,
               old_features: torch.Tensor | None, old_classes: int, lam: float, margin: float, k: int,
               mr_weight: float, less_forget: bool = True) -> torch.Tensor:
    """The phase's whole LUCIR loss: CE on σ-scaled logits (B, C), plus, when ``old_features`` is given
    (phases > 0), λ · less-forget (if ``less_forget``) and ``mr_weight`` · margin ranking on ``scores``."""
    loss = F.cross_entropy(logits, y)
    if old_features is None or old_classes == 0:
        return loss
    if less_forget:
        loss = loss + lam * less_forget_loss(features, old_features)
    if mr_weight:
        loss = loss + mr_weight * margin_ranking_loss(scores, y, old_classes, margin, k)
    return loss
