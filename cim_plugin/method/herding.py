"""iCaRL herding selection on L2-normalised features (CIM step 5)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

__all__ = ["herding_order"]


def herding_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy herding order of the first ``k`` exemplars of one class.

    Features are L2-normalised per row; ``mu`` is their mean. Step t (1-based) picks, among the
    samples not chosen yet, the one minimising ``|| mu - (S + f_i) / t ||`` where S is the sum of the
    features chosen so far (ties: lowest index). Each step is one vectorised pass over N samples.
    Computed in float64 (float32 on devices without float64).

    Args:
        features: float Tensor(N, D).
        k: number to select, 0 <= k <= N.
    Returns:
        int64 Tensor(k,) of distinct indices into ``features``, on its device, in selection order.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
        raise TypeError(f"features must be a float Tensor(N,D), got {getattr(features, 'shape', type(features))} "
                        f"{getattr(features, 'dtype', '')}")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an int, got {k!r}") from None
    n = features.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, N={n}], got {k}")
    dtype = torch.float32 if features.device.type == "mps" else torch.float64
    f = F.normalize(features.detach().to(dtype), dim=1)
    mu = f.mean(dim=0)
    sq = (f * f).sum(dim=1)  # 1 except for all-zero rows
    f_mu = f @ mu  # (N,)
    f_s = torch.zeros(n, dtype=dtype, device=f.device)  # f_i . S
    s_sq = torch.zeros((), dtype=dtype, device=f.device)  # S . S
    s_mu = torch.zeros((), dtype=dtype, device=f.device)  # S . mu
    taken = torch.zeros(n, dtype=torch.bool, device=f.device)
    order = torch.empty(k, dtype=torch.long, device=f.device)
    inf = torch.tensor(float("inf"), dtype=dtype, device=f.device)
    for t in range(1, k + 1):
        # || mu - (S + f_i)/t ||^2 up to the constant ||mu||^2, for every i at once
        d = (s_sq + 2 * f_s + sq) / (t * t) - 2 * (s_mu + f_mu) / t
        i = torch.where(taken, inf, d).argmin()
        order[t - 1] = i
        taken[i] = True
        fi = f[i]
        s_sq = s_sq + 2 * f_s[i] + sq[i]
        s_mu = s_mu + f_mu[i]
        f_s = f_s + f @ fi
    return order
