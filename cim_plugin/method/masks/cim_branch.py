"""The CIM branch: the CIL network itself, run with its ReLUs replaced by PAUs (CIM step 6).

The branch owns only the PAU parameters φ (one :class:`~cim_plugin.method.masks.pau.PAU` per ReLU *call site* of a
forward pass, in call order). The network (θ) is never a submodule: it is passed at call time, so φ and
θ can never end up in the same optimiser or ``state_dict``.

Interception uses a :class:`torch.overrides.TorchFunctionMode`, so the network is not edited or copied:
every ``torch.nn.functional.relu`` (hence every ``nn.ReLU`` module), ``F.relu_``, ``torch.relu``,
``torch.relu_``, ``Tensor.relu`` and ``Tensor.relu_`` call made during the forward is answered by the
next PAU. In-place variants return a *new* tensor (the input is left as is), so a network that relies
on the side effect of an in-place ReLU while discarding its return value is not supported (PyCIL's
nets always use the return value). Torch-function modes are thread-local: pass the unwrapped module,
never an ``nn.DataParallel`` (its replicas run in other threads and would bypass the PAUs).
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.overrides import TorchFunctionMode

from .pau import FIT_RANGE, PAU, relu_fit_coefficients

__all__ = ["CIMBranch", "DATA_PARALLEL", "RELU_FUNCTIONS", "ZERO_AT_ZERO", "count_relu_sites"]

#: Wrappers CIM refuses: DataParallel's replicas run in threads without the ReLU interception; a forward through
#: DDP with autograd arms its gradient all-reduce for a backward the branch and the inner step never make.
DATA_PARALLEL = (nn.DataParallel, DistributedDataParallel)

#: New PAUs hold P(0) = 0 (see :class:`~cim_plugin.method.masks.pau.PAU`). A ReLU maps the convs' zero padding and silent
#: channels to 0; a PAU whose constant a_0 is learned (the official init starts it at 0.030) lets the meta
#: steps turn the padding into a signal: on the synthetic benchmark the learned units drifted to |x|-like
#: shapes, the CAMs lit up along the borders and the stored boxes overlapped the objects worse than boxes
#: at random places (IoU 0.03 vs 0.08); with P(0) = 0 held, 0.37 vs 0.10 (docs/masks.md).
ZERO_AT_ZERO = True

#: Every callable through which PyCIL's convnets (and nn.ReLU) apply a ReLU.
RELU_FUNCTIONS = frozenset({
    F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_,
})


def _check_network(network) -> None:
    if isinstance(network, DATA_PARALLEL):
        raise TypeError(f"CIMBranch cannot run through {type(network).__name__}: DataParallel's replicas run "
                        "in worker threads where the ReLU interception (a thread-local TorchFunctionMode) is not "
                        "active, and DistributedDataParallel would arm a gradient all-reduce for each forward. "
                        "Pass the wrapped module instead, e.g. branch(net.module, x)")
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be an nn.Module, got {type(network).__name__}")


class _ReluMode(TorchFunctionMode):
    """Counts ReLU calls; replaces the k-th by ``activation(k, x)`` when one is given."""

    def __init__(self, activation=None) -> None:
        super().__init__()
        self.activation = activation
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RELU_FUNCTIONS:
            k = self.count
            self.count += 1
            if self.activation is not None:
                x = args[0] if args else kwargs["input"]
                return self.activation(k, x)
        return func(*args, **kwargs)


def _run(network: nn.Module, x, params: Optional[Mapping[str, torch.Tensor]]):
    if params is None:
        return network(x)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict name -> Tensor for torch.func.functional_call, got "
                        f"{type(params).__name__}")
    return torch.func.functional_call(network, dict(params), (x,))


def count_relu_sites(network: nn.Module, x: torch.Tensor) -> int:
    """Number of ReLU calls in one forward of ``network`` on ``x`` (int).

    Runs under ``torch.no_grad`` with real ReLUs and *cloned* buffers, so BN running statistics and
    ``num_batches_tracked`` are left exactly as they were; the training mode is not changed.
    """
    _check_network(network)
    buffers = {n: b.clone() for n, b in network.named_buffers()}
    mode = _ReluMode(None)
    with torch.no_grad(), mode:
        torch.func.functional_call(network, buffers, (x,))
    return mode.count


class CIMBranch(nn.Module):
    """φ: one PAU per ReLU call site of the wrapped network, grown on demand.

    ``branch(network, x, params=None)`` returns whatever ``network(x)`` returns, computed with the k-th
    ReLU call replaced by ``branch.paus[k]``. With ``params`` (dict name -> Tensor) the network runs via
    ``torch.func.functional_call(network, params, (x,))`` (missing names fall back to the module's own).
    When a forward makes more ReLU calls than there are PAUs (PyCIL adds a backbone each phase), new PAUs,
    initialised to the ReLU fit, are appended on the device of the activation; existing ones keep their
    values. Parameters created that way are not in an optimiser built earlier: call
    :meth:`ensure_sites` before building the φ optimiser of a phase.

    Args:
        num_sites: number of PAUs to create up front (0 = grow on the first forward).
        fit_range: new PAUs start from the ReLU fit on ``[-fit_range, fit_range]`` (see
            :func:`~cim_plugin.method.masks.pau.relu_fit_coefficients`); widen it for nets whose pre-activations
            (e.g. un-normalised residual sums) often leave [-3, 3].
        zero_at_zero: new PAUs hold ``P(0) = 0`` (default :data:`ZERO_AT_ZERO`).
    """

    zero_at_zero: bool = False  # class default: objects pickled before the option existed read as False

    def __init__(self, num_sites: int = 0, fit_range: float = FIT_RANGE, zero_at_zero: bool = ZERO_AT_ZERO) -> None:
        super().__init__()
        self.zero_at_zero = bool(zero_at_zero)
        if isinstance(num_sites, bool) or not isinstance(num_sites, int) or num_sites < 0:
            raise ValueError(f"num_sites must be a non-negative int, got {num_sites!r}")
        relu_fit_coefficients(fit_range)  # validates fit_range now rather than at the first growth
        self.fit_range = float(fit_range)
        self.paus = nn.ModuleList()
        self.last_num_calls = 0
        self.grow_to(num_sites)

    @property
    def num_sites(self) -> int:
        """Number of PAUs (activation sites) the branch holds."""
        return len(self.paus)

    def grow_to(self, num_sites: int, device: Optional[torch.device] = None) -> int:
        """Append ReLU-initialised PAUs until there are ``num_sites``; never removes any. Returns num_sites.

        New PAUs take the dtype of the existing ones (float32 for the first) and ``device`` (default: that
        of the existing ones, else the CPU).
        """
        dtype = self.paus[-1].numerator.dtype if len(self.paus) else torch.float32
        if device is None and len(self.paus):
            device = self.paus[-1].numerator.device
        with torch.inference_mode(False):  # parameters must be normal tensors even if called in inference
            while len(self.paus) < num_sites:
                self.paus.append(PAU(device=device, fit_range=self.fit_range, zero_at_zero=self.zero_at_zero).to(dtype))
        return self.num_sites

    def relu_sites(self, network: nn.Module, x: torch.Tensor) -> int:
        """Number of ReLU call sites of ``network`` for input ``x`` (see :func:`count_relu_sites`)."""
        return count_relu_sites(network, x)

    def ensure_sites(self, network: nn.Module, x: torch.Tensor) -> int:
        """Grow to one PAU per ReLU site of ``network`` (on ``x``'s device); returns ``num_sites``."""
        return self.grow_to(count_relu_sites(network, x), device=x.device)

    def _activation(self, k: int, x: torch.Tensor) -> torch.Tensor:
        if k >= len(self.paus):
            self.grow_to(k + 1, device=x.device)
        return self.paus[k](x)

    def forward(self, network: nn.Module, x: torch.Tensor,
                params: Optional[Mapping[str, torch.Tensor]] = None):
        _check_network(network)
        mode = _ReluMode(self._activation)
        with mode:
            out = _run(network, x, params)
        self.last_num_calls = mode.count
        return out

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """As :meth:`nn.Module.load_state_dict`, first growing to the number of PAUs in ``state_dict``."""
        indices = [int(k.split(".")[1]) for k in state_dict if k.startswith("paus.")]
        if indices:
            self.grow_to(max(indices) + 1)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return f"num_sites={self.num_sites}, fit_range={self.fit_range}, zero_at_zero={self.zero_at_zero}"

