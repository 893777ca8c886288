"""Padé activation units (PAU), the learnable activations of CIM's adaptive mask model (CIM step 6).

A PAU is the rational function ``y = P(x) / Q(x)`` with

* numerator ``P(x) = a_0 + a_1 x + ... + a_5 x^5`` (6 coefficients), and
* the *safe* denominator ``Q(x) = 1 + sum_{k=1..4} |b_k| |x|^k`` (4 coefficients), which is ``>= 1``
  everywhere, so a PAU has no poles whatever its coefficients are.

One PAU holds a single coefficient set shared by all channels and positions of its input. It is
initialised to approximate ReLU: a least-squares fit on a grid of ``[-3, 3]`` (linearised, then
refined by L-BFGS in float64), done once per process on the CPU and cached; it is deterministic.
At init ``max |PAU(x) - relu(x)| <= 0.031`` on ``[-3, 3]`` (worst near the kink at 0). Outside
that range the fit degrades (both tails grow like ``(a_5/|b_4|) x``; e.g. ``PAU(-6) ~ -0.70``,
``PAU(6) ~ 5.75``), which is inherent to the degree-(5, 4) safe form.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["PAU", "relu_fit_coefficients", "pade", "NUM_DEGREE", "DEN_DEGREE", "FIT_RANGE"]

NUM_DEGREE = 5
DEN_DEGREE = 4
FIT_RANGE = 3.0
TAIL_START = 8.0  # |x| beyond which a PAU continues linearly (see PAU.forward)
TAIL_STEP = 0.01
CPU_BLOCK = 1 << 18  # elements per block of the graph-free CPU forward (1 MiB of float32)
# ... on a GPU (and any other device): 64 MiB of float32, so a 256 x 64 x 112 x 112 activation's ~20 elementwise
# passes make temporaries of one block (not hundreds of MB each) in a few hundred kernel launches
GPU_BLOCK = 1 << 24


def _block(device: torch.device) -> int:
    """Elements per block of the graph-free forward on ``device``."""
    return CPU_BLOCK if device.type == "cpu" else GPU_BLOCK


def pade(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Evaluate the safe Padé function elementwise.

    Args:
        x: float Tensor of any shape.
        numerator: float Tensor(6,), ``a_0..a_5`` (ascending powers).
        denominator: float Tensor(4,), ``b_1..b_4`` (ascending powers; only ``|b_k|`` is used).
    Returns:
        Tensor shaped like ``x``, dtype ``promote(x, coefficients)``: ``P(x) / (1 + sum |b_k| |x|^k)``.
        Differentiable to any order in ``x`` and the coefficients (Horner scheme, no custom autograd).
    """
    a = numerator
    b = denominator.abs()
    ax = x.abs()
    if torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or b.requires_grad):
        # Horner with fused multiply-adds: 9 passes over x instead of 18, every one differentiable.
        p = torch.addcmul(a[NUM_DEGREE - 1], a[NUM_DEGREE], x)
        for k in range(NUM_DEGREE - 2, -1, -1):
            p = torch.addcmul(a[k], p, x)
        q = torch.addcmul(b[DEN_DEGREE - 2], b[DEN_DEGREE - 1], ax)
        for k in range(DEN_DEGREE - 3, -1, -1):
            q = torch.addcmul(b[k], q, ax)
        q = torch.addcmul(torch.ones((), dtype=q.dtype, device=q.device), q, ax)
        return p / q
    # No graph to keep: the same Horner scheme in place, two buffers (box refreshes, CAMs for the memory).
    p = x * a[NUM_DEGREE]
    p.add_(a[NUM_DEGREE - 1])
    for k in range(NUM_DEGREE - 2, -1, -1):
        p.mul_(x).add_(a[k])
    q = ax * b[DEN_DEGREE - 1]
    q.add_(b[DEN_DEGREE - 2])
    for k in range(DEN_DEGREE - 3, -1, -1):
        q.mul_(ax).add_(b[k])
    q.mul_(ax).add_(1.0)
    return p.div_(q)


def relu_fit_coefficients(fit_range: float = FIT_RANGE, zero_at_zero: bool = False
                          ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The ReLU fit on ``[-fit_range, fit_range]``, computed once per range and process (deterministic).

    Args:
        fit_range: half-width of the fitted interval (activation units), > 0. The default 3 gives
            max error 0.030 on [-3, 3]; a wider range trades accuracy near 0 for the tails
            (4: 0.040, 5: 0.050, 6: 0.060 on [-3, 3]).
        zero_at_zero: fit with ``a_0 = 0`` (so ``P(0) = 0``: the unit maps 0 to 0 exactly, as ReLU);
            max error 0.0305 on [-3, 3]. Without it ``a_0 = 0.030`` (the same value as the official
            code's ``Rational(approx_func='relu')`` init), so ``PAU(0) = 0.030``.
    Returns:
        ``(numerator, denominator)`` as tuples of Python floats, lengths 6 and 4, for :func:`pade`.
    """
    if isinstance(fit_range, bool) or not isinstance(fit_range, (int, float)) or not math.isfinite(fit_range) \
            or fit_range <= 0:
        raise ValueError(f"fit_range must be a finite number > 0, got {fit_range!r}")
    return _relu_fit(float(fit_range), bool(zero_at_zero))


@functools.lru_cache(maxsize=8)
def _relu_fit(fit_range: float, zero_at_zero: bool = False) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise identical result whatever the caller's thread count (tiny problem)
    try:
        return _relu_fit_single_thread(fit_range, zero_at_zero)
    finally:
        torch.set_num_threads(threads)


def _relu_fit_single_thread(fit_range: float, zero_at_zero: bool = False) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        x = torch.linspace(-fit_range, fit_range, 601, dtype=torch.float64)
        r = x.clamp_min(0.0)
        ax = x.abs()
        # Linearised problem P(x) - relu(x) * (Q(x) - 1) = relu(x), solved in closed form.
        powers = torch.stack([x ** k for k in range(NUM_DEGREE + 1)], dim=1)
        abs_powers = torch.stack([ax ** k for k in range(1, DEN_DEGREE + 1)], dim=1)
        design = torch.cat([powers, -r[:, None] * abs_powers], dim=1)
        keep = torch.ones(NUM_DEGREE + 1, dtype=torch.float64)
        if zero_at_zero:
            keep[0] = 0.0
            design[:, 0] = 0.0  # a_0 has no column: lstsq (minimum norm) gives it 0
        sol = torch.linalg.lstsq(design, r[:, None], driver="gelsd").solution.squeeze(1)
        a = (sol[:NUM_DEGREE + 1] * keep).clone().requires_grad_(True)
        b = sol[NUM_DEGREE + 1:].abs().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([a, b], lr=1.0, max_iter=300, tolerance_grad=1e-14, tolerance_change=1e-16,
                                history_size=50, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (pade(x, a * keep, b) - r).pow(2).mean()
            loss.backward()
            return loss

        opt.step(closure)
    return tuple(float(v) for v in (a * keep).detach()), tuple(float(v) for v in b.detach().abs())


@functools.lru_cache(maxsize=16)
def _tail_points(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The 4 points (2 per tail) of the tail secants, made once per device (no host copy per forward)."""
    with torch.inference_mode(False):
        return torch.tensor([-TAIL_START, -TAIL_START + TAIL_STEP, TAIL_START - TAIL_STEP, TAIL_START],
                            dtype=dtype, device=device)


def _activate(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The PAU on ``x`` (any shape): :func:`pade` inside ``[-TAIL_START, TAIL_START]``, the secant slopes
    ``low`` / ``high`` (0-d tensors) beyond it. Written into ``out`` when given (no graph then)."""
    inner = x.clamp(-TAIL_START, TAIL_START)
    y = pade(inner, a, b)
    over = x - inner
    slope = torch.where(over > 0, high, low)
    return torch.addcmul(y, slope, over, out=out)


def _activate_blocked(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, low: torch.Tensor,
                      high: torch.Tensor) -> torch.Tensor:
    """:func:`_activate` without a graph on a contiguous tensor, in blocks of ``CPU_BLOCK`` elements on the CPU,
    ``GPU_BLOCK`` elsewhere (on a GPU the point is memory: each elementwise pass would otherwise allocate a
    temporary of the activation's whole size).

    The same operations on the same values, so bitwise the same result; but the ~20 elementwise passes
    of a block run while it sits in the CPU cache, instead of streaming the whole activation through
    memory ~20 times (and allocating as many temporaries of its size): 2.1× faster on a 256×16×32×32
    activation, 3.5× on 64×64×56×56 (``benchmarks/bench_pau.py``). Not a per-image loop: blocks cut across
    images.
    """
    flat = x.view(-1)
    out = torch.empty_like(flat)
    block = _block(x.device)
    for start in range(0, flat.numel(), block):
        _activate(flat[start : start + block], a, b, low, high, out=out[start : start + block])
    return out.view_as(x)


def _takes_blocks(x: torch.Tensor, graph: bool) -> bool:
    """Does the forward run :func:`_activate_blocked` on ``x`` (no graph to build, contiguous, over a block)?"""
    return not graph and x.is_contiguous() and x.numel() > _block(x.device)


class PAU(nn.Module):
    """Safe Padé activation unit ``y = P(x) / (1 + sum_k |b_k| |x|^k)``, degrees (5, 4).

    Parameters: ``numerator`` float32 Tensor(6,) and ``denominator`` float32 Tensor(4,). By default both
    come from the cached ReLU fit on ``[-fit_range, fit_range]`` (:func:`relu_fit_coefficients`); pass
    sequences to start elsewhere,
    e.g. ``PAU(numerator=[0, 1, 0, 0, 0, 0], denominator=[0, 0, 0, 0])`` is the identity.

    ``zero_at_zero=True``: the constant ``a_0`` is held at 0 (fit and forward), so ``PAU(0) = 0`` exactly and
    stays so while φ is learned, as for ReLU (a zero-padded border or a silent channel stays zero).

    Forward: any float Tensor (any shape, CPU or CUDA, float16/bfloat16/float32/float64) -> Tensor of the
    same shape and dtype. Computation runs in ``promote(x.dtype, float32)`` with autocast disabled, then is
    cast back, so it is safe under ``torch.autocast``. Supports higher-order gradients.
    """

    zero_at_zero: bool = False  # class default: objects pickled before the option existed read as False

    def __init__(self, numerator: Optional[Sequence[float]] = None,
                 denominator: Optional[Sequence[float]] = None,
                 device: Optional[torch.device] = None, fit_range: float = FIT_RANGE,
                 zero_at_zero: bool = False) -> None:
        super().__init__()
        self.zero_at_zero = bool(zero_at_zero)
        if numerator is None or denominator is None:
            fit_num, fit_den = relu_fit_coefficients(fit_range, zero_at_zero=self.zero_at_zero)
            numerator = fit_num if numerator is None else numerator
            denominator = fit_den if denominator is None else denominator
        num = torch.as_tensor(numerator, dtype=torch.float32).detach().clone()
        den = torch.as_tensor(denominator, dtype=torch.float32).detach().clone()
        if num.shape != (NUM_DEGREE + 1,):
            raise ValueError(f"numerator must hold {NUM_DEGREE + 1} coefficients a_0..a_{NUM_DEGREE}, "
                             f"got shape {tuple(num.shape)}")
        if den.shape != (DEN_DEGREE,):
            raise ValueError(f"denominator must hold {DEN_DEGREE} coefficients b_1..b_{DEN_DEGREE}, "
                             f"got shape {tuple(den.shape)}")
        if self.zero_at_zero:
            num[0] = 0.0
        self.numerator = nn.Parameter(num.to(device))
        self.denominator = nn.Parameter(den.to(device))

    def coefficients(self, device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)`` as used by the forward, on ``device`` in ``dtype``; with ``zero_at_zero`` the constant
        ``a_0`` is held at 0 (no effect, zero gradient), so ``P(0) = 0`` whatever φ learns."""
        a = self.numerator.to(device=device, dtype=dtype)
        if self.zero_at_zero:
            a = torch.cat([a[:1] * 0.0, a[1:]])
        return a, self.denominator.to(device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"PAU expects a floating-point Tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}; cast it with .float() first")
        compute = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xc = x.to(compute)
            a, b = self.coefficients(x.device, compute)
            # Beyond +-TAIL_START the unit continues linearly with its own slope there (a secant over
            # TAIL_STEP): the rational part never sees huge inputs, so x^5 cannot overflow and one
            # bad batch cannot turn phi into NaN. Inside the interval nothing changes.
            # (in float64 where the device has it: a float32 secant over 0.01 amplifies rounding 100x)
            wide = torch.float32 if x.device.type == "mps" else torch.float64
            v = pade(_tail_points(x.device, wide), a.to(wide), b.to(wide))
            low, high = ((v[1] - v[0]) / TAIL_STEP).to(compute), ((v[3] - v[2]) / TAIL_STEP).to(compute)
            graph = torch.is_grad_enabled() and (xc.requires_grad or a.requires_grad or b.requires_grad)
            if _takes_blocks(xc, graph):
                y = _activate_blocked(xc, a, b, low, high)
            else:
                y = _activate(xc, a, b, low, high)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"degrees=({NUM_DEGREE}, {DEN_DEGREE}), safe denominator 1 + sum |b_k||x|^k"
                + (", P(0) = 0" if self.zero_at_zero else ""))
