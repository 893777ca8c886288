"""CIM's bilevel meta step: learn the PAU parameters φ of the CIM branch (CIM step 7).

One call of :func:`meta_step`:

1. ``c, branch_logits = mask_fn(network, branch, x_inner, y_inner)``: soft masks (B, H, W) in [0, 1],
   differentiable in φ;
2. hybrid input ``h = c * x_inner + (1 - c) * x_inner_degraded`` (``c`` broadcast over channels);
3. inner: ``loss_in = inner_loss_fn(network(h), y_inner, h)`` (default: CE on ``logits_fn(out)``),
   ``g = d loss_in / d θ`` with ``create_graph=True`` and ``θ⁺ = θ - lr * lr_ratio * g`` for the
   parameters with ``requires_grad`` that ``fast_weight_filter`` keeps (the others, e.g. the classifier
   heads in the official code, are used as they are). By default the mask is an *input* of the inner
   problem, as in the paper's equation (θ⁺ = θ − β∇θ L(D̃(φ); θ), the compressed data D̃(φ) given):
   ``g`` is taken through the network's forward on ``h`` only, not through the branch's own use of θ
   inside ``mask_fn``. With ``grad_through_mask=True`` it is the total derivative, also through the
   branch's use of θ in the mask (the official code: its branch is the network's own forward with
   rational activations, so ``autograd.grad(inner_loss, θ)`` reaches θ through the CAM too);
4. outer: ``CE(logits_fn(network(x_outer; θ⁺)), y_outer) + div_coef * CE(branch_logits, y_inner)
   + reg_coef * mean(c²)``, differentiated w.r.t. φ only; the φ gradient norm is clipped to
   ``max_phi_grad_norm`` and ``phi_optimizer.step()`` is taken.

Fast weights go through :func:`torch.func.functional_call` (no rewritten modules). On return, θ's values
and ``.grad`` fields, every buffer (BN running statistics, ``num_batches_tracked``) and every module's
training flag are exactly as before, also when an exception is raised.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cam import cam_from_feature_maps
from .cim_branch import DATA_PARALLEL, CIMBranch

__all__ = ["meta_step", "cam_mask_fn", "hybrid_input"]


def hybrid_input(mask: torch.Tensor, x: torch.Tensor, x_degraded: torch.Tensor) -> torch.Tensor:
    """``mask * x + (1 - mask) * x_degraded`` with mask float (B, H, W) broadcast over the C channels of
    x / x_degraded (B, C, H, W); returns (B, C, H, W) in x's dtype, differentiable in all three."""
    if x.dim() != 4 or x_degraded.shape != x.shape:
        raise ValueError(f"x and x_degraded must both be (B,C,H,W) of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(x_degraded.shape)}")
    expected = (x.shape[0], x.shape[2], x.shape[3])
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != expected:
        raise ValueError(f"mask must be a float Tensor(B,H,W) = {expected} matching x (B,C,H,W) = "
                         f"{tuple(x.shape)}, got {tuple(getattr(mask, 'shape', ()))}; upsample the CAM to the "
                         "image size first")
    m = mask.unsqueeze(1).to(x.dtype)
    return m * x + (1.0 - m) * x_degraded


def cam_mask_fn(network: nn.Module, branch: CIMBranch, x: torch.Tensor, y: torch.Tensor, *,
                weight, params: Optional[Dict[str, torch.Tensor]] = None):
    """Default ``mask_fn`` for a single-backbone network whose forward returns ``{"logits", "fmaps"}``.

    Use it as ``functools.partial(cam_mask_fn, weight=net.fc.weight)``.

    Args:
        network, branch: the CIL network and its CIM branch.
        x: float Tensor(B, C, H, W) images; y: int Tensor(B,) labels.
        weight: classifier weight Tensor(K, C_f) (detached here: φ is learnt through the feature maps
            only), or a callable ``weight(network) -> Tensor`` for classifiers that are replaced over time.
        params: optional dict for ``torch.func.functional_call`` (see :class:`CIMBranch`).
    Returns:
        ``(mask, logits)``: mask float Tensor(B, H, W) in [0, 1], the branch's CAM of class y taken on the
        last entry of ``out["fmaps"]``, bilinearly upsampled to (H, W) and min-max normalised per image,
        differentiable in φ; logits float Tensor(B, K), the branch's logits.
    """
    out = branch(network, x, params=params)
    if not isinstance(out, dict) or "fmaps" not in out or "logits" not in out:
        raise TypeError("cam_mask_fn needs a network whose forward returns a dict with 'fmaps' and 'logits'; "
                        "write a mask_fn for other networks")
    fmaps = out["fmaps"]
    last = fmaps[-1] if isinstance(fmaps, (list, tuple)) else fmaps
    w = weight(network) if callable(weight) else weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"weight must be a Tensor(K, C) or a callable returning one, got {type(w).__name__}")
    mask = cam_from_feature_maps([last], w.detach(), y, out_size=tuple(x.shape[-2:]))
    return mask, out["logits"]


def _number(name: str, value, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or v < 0 or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Losses in float32 (or float64 when the inputs are): half-precision logits are upcast."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_batch(name_x: str, x, name_y: str, y) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise TypeError(f"{name_x} must be a float Tensor(B,C,H,W), got "
                        f"{getattr(x, 'shape', type(x).__name__)} {getattr(x, 'dtype', '')}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() or y.shape[0] != x.shape[0]:
        raise TypeError(f"{name_y} must be an integer Tensor(B,) with B = {x.shape[0]} (the batch of {name_x}), "
                        f"got {getattr(y, 'shape', type(y).__name__)} {getattr(y, 'dtype', '')}")


def meta_step(*, network: nn.Module, branch: CIMBranch, phi_optimizer: torch.optim.Optimizer,
              x_inner: torch.Tensor, y_inner: torch.Tensor, x_inner_degraded: torch.Tensor,
              x_outer: torch.Tensor, y_outer: torch.Tensor,
              mask_fn: Callable, logits_fn: Callable, inner_loss_fn: Optional[Callable] = None,
              fast_weight_filter: Optional[Callable[[str], bool]] = None,
              lr: float, lr_ratio: float, div_coef: float, reg_coef: float,
              max_phi_grad_norm: Optional[float], train_mode: bool = False,
              grad_through_mask: bool = False,
              grad_reduce: Optional[Callable[[List[torch.Tensor]], None]] = None) -> Dict[str, float]:
    """One CIM meta iteration; updates φ (the branch's PAUs) only.

    Args:
        network: the CIL network (θ), unwrapped (not nn.DataParallel).
        branch: its :class:`CIMBranch`; must already hold one PAU per ReLU site (``branch.ensure_sites``)
            and all its parameters must be in ``phi_optimizer``, which must hold no θ.
        x_inner, x_inner_degraded: float Tensor(B, C, H, W), images and their degraded (down/up-sampled)
            versions; y_inner: int Tensor(B,).
        x_outer: float Tensor(B', C, H, W), another batch; y_outer: int Tensor(B',).
        mask_fn: ``mask_fn(network, branch, x, y) -> (mask (B,H,W) in [0,1], branch_logits (B,K))``.
        logits_fn: ``logits_fn(out) -> Tensor(B, K)`` from the network's forward output.
        inner_loss_fn: ``inner_loss_fn(out, y, h) -> scalar`` on the network output ``out`` for the hybrid
            input ``h`` (B, C, H, W) (a distillation term may run a frozen teacher on ``h``); default
            ``CE(logits_fn(out), y)``.
        fast_weight_filter: ``fast_weight_filter(name) -> bool`` for each trainable parameter name of the
            network: True = updated by the inner step (a fast weight), False = used as it is. Default: all.
        lr: current θ learning rate; the inner step size is ``lr * lr_ratio``.
        div_coef, reg_coef: weights of the branch CE and of ``mean(c²)``.
        max_phi_grad_norm: clip norm for φ's gradient (None or inf: no clipping).
        train_mode: mode of the network (and branch) during the step. False (default, as the official code)
            uses BN running statistics; True uses batch statistics (buffers are still left untouched).
        grad_through_mask: False (default, the paper's equation): the inner gradient ``g`` treats the hybrid
            input as data; True (the official code): ``g`` is the total derivative of the inner loss in θ,
            also through the branch's use of θ in ``mask_fn`` (more second-order terms; slower).
        grad_reduce: data parallelism (``Replicas.average``): replaces φ's gradients (list of tensors, in
            place) by their mean over the replicas, before the clip and the step. A replica whose objective is
            not finite sends NaN gradients, so every replica skips that step together.
    Returns:
        dict of floats: ``outer`` (full outer objective), ``outer_ce``, ``inner``, ``inner_lr`` (the inner step
            size ``lr * lr_ratio``), ``fast_weights`` (number of parameter tensors updated), ``div``, ``reg``
        (``mean(c²)``), ``mask_mean`` (``mean(c)``, the kept fraction) and ``phi_grad_norm`` (before
        clipping).
    """
    if isinstance(network, DATA_PARALLEL):
        raise TypeError(f"meta_step needs the unwrapped network (net.module), not {type(network).__name__}: the "
                        "CIM branch's ReLU interception is thread-local, and a DDP forward arms a gradient all-reduce")
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be an nn.Module, got {type(network).__name__}")
    if not isinstance(branch, CIMBranch):
        raise TypeError(f"branch must be a CIMBranch, got {type(branch).__name__}")
    if not isinstance(phi_optimizer, torch.optim.Optimizer):
        raise TypeError(f"phi_optimizer must be a torch.optim.Optimizer over branch.parameters(), got "
                        f"{type(phi_optimizer).__name__}")
    _check_batch("x_inner", x_inner, "y_inner", y_inner)
    _check_batch("x_outer", x_outer, "y_outer", y_outer)
    if not isinstance(x_inner_degraded, torch.Tensor) or x_inner_degraded.shape != x_inner.shape:
        raise ValueError(f"x_inner_degraded must have the shape of x_inner {tuple(x_inner.shape)}, got "
                         f"{tuple(getattr(x_inner_degraded, 'shape', ()))}")
    step_size = _number("lr", lr) * _number("lr_ratio", lr_ratio)
    div_coef = _number("div_coef", div_coef)
    reg_coef = _number("reg_coef", reg_coef)
    max_norm = math.inf if max_phi_grad_norm is None else _number("max_phi_grad_norm", max_phi_grad_norm,
                                                                 allow_inf=True)
    if max_norm == 0:
        raise ValueError("max_phi_grad_norm must be > 0 (or None for no clipping)")

    theta = {n: p for n, p in network.named_parameters()
             if p.requires_grad and (fast_weight_filter is None or fast_weight_filter(n))}
    network_param_ids = {id(p) for p in network.parameters()}
    if any(id(p) in network_param_ids for p in branch.parameters()):
        raise ValueError("the CIM branch's PAUs are registered inside the network; keep φ out of θ "
                         "(the branch must not be a submodule of the network)")
    opt_ids = {id(p) for g in phi_optimizer.param_groups for p in g["params"]}
    if opt_ids & network_param_ids:
        raise ValueError("phi_optimizer holds parameters of the network (θ); build it over "
                         "branch.parameters() only")

    modes = [(m, m.training) for m in network.modules()] + [(m, m.training) for m in branch.modules()]
    saved_buffers = {n: b.detach().clone() for n, b in network.named_buffers()}

    def buffers():  # fresh copies per forward, so even train-mode BN updates never reach the network
        return {n: b.clone() for n, b in saved_buffers.items()}

    try:
        network.train(train_mode)
        branch.train(train_mode)
        mask, branch_logits = mask_fn(network, branch, x_inner, y_inner)
        phi = list(branch.parameters())
        if not phi:
            raise ValueError("the CIM branch has no PAUs after mask_fn: the network made no ReLU call, or mask_fn "
                             "did not run the branch (it must call branch(network, x))")
        missing = [i for i, p in enumerate(phi) if id(p) not in opt_ids]
        if missing:
            raise ValueError(f"phi_optimizer is missing {len(missing)} of the branch's {len(phi)} parameters "
                             f"(the branch has {branch.num_sites} PAUs, possibly grown during this step because "
                             "the network gained ReLU sites); call branch.ensure_sites(network, x) and rebuild "
                             "phi_optimizer over branch.parameters() at the start of each phase")
        if not isinstance(branch_logits, torch.Tensor) or branch_logits.dim() != 2:
            raise TypeError("mask_fn must return (mask Tensor(B,H,W), branch_logits Tensor(B,K)), got logits "
                            f"of shape {tuple(getattr(branch_logits, 'shape', ()))}")
        h = hybrid_input(mask, x_inner, x_inner_degraded)

        # Inner step. Aliases of θ make the gradient flow through this forward only (not through mask_fn);
        # θ itself (grad_through_mask) also reaches the branch's use of θ in the mask.
        alias = dict(theta) if grad_through_mask else {n: p.view_as(p) for n, p in theta.items()}
        out_in = torch.func.functional_call(network, {**alias, **buffers()}, (h,))
        if inner_loss_fn is None:
            loss_in = F.cross_entropy(_at_least_float32(logits_fn(out_in)), y_inner)
        else:
            loss_in = inner_loss_fn(out_in, y_inner, h)
        names = list(alias)
        grads = torch.autograd.grad(loss_in, [alias[n] for n in names], create_graph=True, allow_unused=True)
        fast = {n: theta[n] if g is None else theta[n] - step_size * g for n, g in zip(names, grads)}

        # Outer objective, differentiated w.r.t. φ only (θ's .grad fields are never written).
        out_out = torch.func.functional_call(network, {**fast, **buffers()}, (x_outer,))
        outer_ce = F.cross_entropy(_at_least_float32(logits_fn(out_out)), y_outer)
        div = F.cross_entropy(_at_least_float32(branch_logits), y_inner)
        reg = _at_least_float32(mask).pow(2).mean()
        outer = outer_ce + div_coef * div + reg_coef * reg
        phi_grads = torch.autograd.grad(outer, phi, allow_unused=True)
        phi_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(phi, phi_grads):
            p.grad = torch.zeros_like(p) if g is None else g.detach()
        if grad_reduce is not None:
            if not bool(torch.isfinite(outer.detach())):
                for p in phi:
                    p.grad.fill_(float("nan"))
            grad_reduce([p.grad for p in phi])
        grad_norm = torch.nn.utils.clip_grad_norm_(phi, max_norm)
        skipped = not (bool(torch.isfinite(outer.detach())) and bool(torch.isfinite(grad_norm)))
        if skipped:  # a non-finite objective or gradient never reaches φ (one NaN would poison every PAU)
            phi_optimizer.zero_grad(set_to_none=True)
        else:
            phi_optimizer.step()
        return {
            "skipped": float(skipped),
            "outer": float(outer.detach()), "outer_ce": float(outer_ce.detach()), "inner": float(loss_in.detach()),
            "inner_lr": step_size, "fast_weights": float(len(theta)),
            "div": float(div.detach()), "reg": float(reg.detach()), "mask_mean": float(mask.detach().float().mean()),
            "phi_grad_norm": float(grad_norm),
        }
    finally:
        for m, flag in modes:
            m.training = flag
        with torch.no_grad():
            for n, b in network.named_buffers():
                if n in saved_buffers:
                    b.copy_(saved_buffers[n])
