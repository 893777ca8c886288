"""The learners the plug-in knows, one file each: whether CIM runs on it (or why not), its inner loss, its
training loops and extra hooks, its epoch keys, whether it runs under torchrun, and, for the learners the
plug-in provides (der_p, lucir), where their class is. See docs/adding_a_learner.md.

Each file declares a :class:`LearnerSpec` and registers it (:func:`register`); the tables the rest of the
plug-in reads (``SUPPORTED``, ``REFUSED``, ``INNER_LOSSES``, ...) are derived here from the registry.
Importing this package does not import PyCIL: the plug-in's learner classes (``der_p/learner.py``,
``lucir/learner.py``) are imported by :func:`~cim_plugin.pycil.host.learner_class` when a run needs them.
"""

from __future__ import annotations

from typing import Dict, Tuple

# Each file registers its learner when imported; this order is the order messages list them in.
from . import bic, der, der_p, foster, icarl, lucir, memo, refused, replay, wa  # noqa: F401
from .losses import InnerLoss, ce_loss, der_aux_targets, kd_loss
from .registry import (
                       DEFAULT_EPOCH_KEYS,
                       LearnerSpec,
                       check_cim_support,
                       inner_loss_for,
                       learner_spec,
                       refusal,
                       register,
                       registered,
)

__all__ = ["LearnerSpec", "register", "learner_spec", "registered", "refusal", "check_cim_support",
           "inner_loss_for", "InnerLoss", "ce_loss", "kd_loss", "der_aux_targets",
           "SUPPORTED", "REFUSED", "INNER_LOSSES", "TRAIN_LOOPS", "EXTRA_HOOKS", "EPOCH_KEYS", "DEFAULT_EPOCH_KEYS",
           "DDP_LEARNERS", "PLUGIN_LEARNERS"]

_SPECS = registered()

#: learners run end to end with CIM in the test suite (tests/test_cim_datasets.py, test_lucir.py, ...).
SUPPORTED: Tuple[str, ...] = tuple(s.name for s in _SPECS if s.supported)
#: learner -> why "cim": true cannot run on it.
REFUSED: Dict[str, str] = {s.name: s.refused for s in _SPECS if not s.supported}
#: learner -> its inner loss (every supported learner has one).
INNER_LOSSES: Dict[str, InnerLoss] = {s.name: s.inner_loss for s in _SPECS if s.supported}
#: every learner's epoch loops that receive the phase's CIL optimiser (each learner declares its own).
TRAIN_LOOPS: Tuple[str, ...] = tuple(dict.fromkeys(loop for s in _SPECS for loop in s.train_loops))
#: learners whose flow needs hooks of their own, placed before CIMMixin (BiC's two-stage loop).
EXTRA_HOOKS: Dict[str, Tuple[type, ...]] = {s.name: s.extra_hooks for s in _SPECS if s.extra_hooks}
#: learners whose epoch keys are not DEFAULT_EPOCH_KEYS -> (first phase's key, later phases' key).
EPOCH_KEYS: Dict[str, Tuple[str, str]] = {s.name: s.epoch_keys for s in _SPECS if s.epoch_keys != DEFAULT_EPOCH_KEYS}
#: learners run and tested under torchrun (PyCIL's DataParallel hook wraps all their training).
DDP_LEARNERS: Tuple[str, ...] = tuple(s.name for s in _SPECS if s.ddp)
#: learners the plug-in adds (built on PyCIL's classes) -> "module:Class", as host.LEARNERS.
PLUGIN_LEARNERS: Dict[str, str] = {s.name: s.plugin_class for s in _SPECS if s.plugin_class is not None}
