"""CIM on PyCIL's BiC (Wu et al., CVPR 2019): where BiC's flow differs from the learners the mixin covers.

- BiC trains in two stages per phase through one loop, ``_run(train_loader, test_loader, optimizer,
  scheduler, stage)``. CIM works in stage 1 ("training", the CIL network) only: its optimiser is the one
  CIM reads the learning rate and weight decay from, and its train loader calls CIM's per-epoch hook. The
  bias-correction stage fits two scalars per phase on a held-out set; it gets no meta steps.
- BiC measures training accuracy by iterating its train loader again after each epoch, with the network in
  eval mode: the hook fires only before passes made in train mode, so once per epoch.
- The memory's split into a training part and the bias-correction set is the data-manager proxy's
  ``get_dataset_with_split`` (``data.py``).
- The inner step leaves the bias layers as they are, as it leaves the classifier heads (in stage 1 BiC
  trains them at lr 0).
"""

from __future__ import annotations

from .data import _EpochHookLoader
from .network import unwrap

__all__ = ["BiCHooks", "bic_fast_weight"]


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
            train_loader = _EpochHookLoader(train_loader, self._cim_on_epoch,
                                            when=lambda: unwrap(self._network).training)
        return super()._run(train_loader, test_loader, optimizer, scheduler, stage)
