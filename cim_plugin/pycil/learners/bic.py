"""CIM on PyCIL's BiC (Wu et al., CVPR 2019): supported (one process), with hooks of its own where BiC's
flow differs from the learners the mixin covers.

- BiC trains in two stages per phase through one loop, ``_run(train_loader, test_loader, optimizer,
  scheduler, stage)``. CIM works in stage 1 ("training", the CIL network) only: its optimiser is the one
  CIM reads the learning rate and weight decay from, and its train loader calls CIM's per-epoch hook. The
  bias-correction stage fits two scalars per phase on a held-out set; it gets no meta steps.
- BiC measures training accuracy by iterating its train loader again after each epoch, with the network in
  eval mode: the hook fires only before passes made in train mode, so once per epoch.
- Its epochs are the single "epochs" key (stage 1's loop, the one that calls CIM's epoch hook).
- The memory's split into a training part and the bias-correction set is the data-manager proxy's
  ``get_dataset_with_split`` (``pycil/data.py``).
- The inner step leaves the bias layers as they are, as it leaves the classifier heads (in stage 1 BiC
  trains them at lr 0).
- Inner loss: CE in phase 0; (1 - λ) CE + λ KD on the bias-corrected logits in later phases, λ = BiC's
  ``lamda`` (old / total classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import EpochHookLoader
from ..network import unwrap
from .losses import ce_loss, first_phase, kd_loss, logits_of, old_logits, temperature
from .registry import LearnerSpec, register

__all__ = ["BiCHooks", "bic_fast_weight", "bic_loss", "SPEC"]


def bic_fast_weight(name: str) -> bool:
    """BiC's fast weights: every trainable parameter but the classifier heads and the bias layers."""
    return "fc" not in name and not name.startswith("bias_layers")


class BiCHooks:
    """Placed before :class:`~cim_plugin.pycil.mixin.CIMMixin` in the class CIM builds for BiC."""

    def __init__(self, args):
        super().__init__(args)
        self._cim.fast_weight_filter = bic_fast_weight

    def _run(self, train_loader, test_loader, optimizer, scheduler, stage):
        if stage == "training":
            self._cim_cil_optimizer = optimizer
            train_loader = EpochHookLoader(train_loader, self._cim_on_epoch,
                                           when=lambda: unwrap(self._network).training)
        return super()._run(train_loader, test_loader, optimizer, scheduler, stage)


def bic_loss(learner, out, y, x) -> torch.Tensor:
    """BiC's stage-1 loss: WA's form with BiC's own λ (``learner.lamda``), on its bias-corrected logits."""
    if first_phase(learner):
        return ce_loss(learner, out, y, x)
    logits = logits_of(out)
    known = learner._known_classes
    lam = float(getattr(learner, "lamda", known / learner._total_classes))
    kd = kd_loss(logits[:, :known], old_logits(learner, x), temperature(learner))
    return (1 - lam) * F.cross_entropy(logits, y) + lam * kd


# No train_loops: BiC's one loop, _run, takes its optimiser in BiCHooks (stage 1 only).
SPEC = register(LearnerSpec("bic", inner_loss=bic_loss, extra_hooks=(BiCHooks,), epoch_keys=("epochs", "epochs")))
