"""The CIM mixin over PyCIL's learners: it routes PyCIL's calls into a framework-free
:class:`~cim_plugin.method.cim.CIM` object, which owns the compressed memory, the mask branch, φ's
optimiser and the schedules.

Nothing of PyCIL is edited. The mixin:
- at the start of a phase (``incremental_train``) tells CIM the phase's classes and budget, and hands
  PyCIL a data-manager proxy, so ``get_dataset(..., appendent=self._get_memory())`` yields new-class
  images (with compression augmentation) plus decoded exemplars through PyCIL's own transforms;
- wraps the train loader given to ``_train`` so that every epoch start calls ``CIM.before_epoch`` with the
  CIL optimiser's learning rate (FOSTER's compression epochs excepted);
- replaces ``build_rehearsal_memory`` by ``CIM.build_memory`` (byte-budgeted herding over compressed
  exemplars) and takes its class means for NME.
"""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..config import ConfigError
from ..method.cim import CIM, CIM_KEYS, PHI_WEIGHT_DECAY, BudgetTooSmall
from ..method.memory.legacy import adopt_legacy_state
from .checkpoint import save
from .constants import learner_modules
from .data import DataManagerProxy, EpochHookLoader, ImagePipeline, MemoryAppendent
from .learners import DEFAULT_EPOCH_KEYS, EPOCH_KEYS, EXTRA_HOOKS, SUPPORTED, inner_loss_for, learner_spec, refusal
from .network import FmapView, unwrap

__all__ = ["CIMMixin", "cim_learner_class", "keeps_memory"]

log = logging.getLogger("cim_plugin")


def keeps_memory(cls) -> bool:
    """Does a PyCIL learner build a rehearsal memory (calls build_rehearsal_memory)?"""
    for klass in cls.__mro__:
        if klass.__name__ in ("BaseLearner", "object"):
            continue
        try:
            if "build_rehearsal_memory" in inspect.getsource(klass):
                return True
        except (OSError, TypeError):
            continue
    return False


class CIMMixin:
    """Mixed in front of a PyCIL learner class (see `cim_learner_class`); ``self._cim`` is the CIM object."""

    def __init__(self, args):
        super().__init__(args)
        self._cim = CIM({k: args[k] for k in CIM_KEYS}, seed=int(args.get("seed", 0)), view=FmapView)
        self._cim_paused = False  # True while a stage without CIM work runs (FOSTER's compression)
        self._cim_pipeline: Optional[ImagePipeline] = None
        self._cim_inner_loss_fn = inner_loss_for(str(args.get("model_name", "")))
        self._cim_cil_optimizer: Optional[torch.optim.Optimizer] = None  # the phase's optimiser of θ

    # -- PyCIL entry points ------------------------------------------------------------------
    def incremental_train(self, data_manager):
        self._cim_adopt_legacy_state()
        if self._cim_pipeline is None:
            self._cim_pipeline = ImagePipeline(data_manager)
        self._cim_cil_optimizer = None
        task = self._cur_task + 1  # PyCIL's incremental_train advances the task and the class counts so
        total = self._known_classes + data_manager.get_task_size(task)
        budget, per_class = ((int(self._memory_per_class) * total, int(self._memory_per_class)) if self._fixed_memory
                             else (int(self._memory_size), None))
        self._cim.start_phase(task, self._known_classes, total, budget, per_class, view=FmapView,
                              device=self._device, to_input=functools.partial(self._cim_pipeline.to_input,
                                                                               device=self._device),
                              inner_loss=functools.partial(self._cim_inner_loss_fn, self),
                              epochs=self._cim_phase_epochs(task))
        return super().incremental_train(DataManagerProxy(data_manager, self))

    def _cim_phase_epochs(self, task: int) -> Optional[int]:
        """The training epochs of phase ``task`` (the learner's epoch keys, see LearnerSpec.epoch_keys), or None
        when the learner names none."""
        first, later = EPOCH_KEYS.get(str(self.args.get("model_name", "")).lower(), DEFAULT_EPOCH_KEYS)
        key = first if task == 0 else later
        if key in self.args:
            value = self.args[key]
        else:
            value = next((getattr(m, key) for m in learner_modules(type(self)) if hasattr(m, key)), None)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    def _cim_adopt_legacy_state(self) -> None:
        """A checkpoint written before CIM became one object: its parts go to the CIM object (see legacy)."""
        adopt_legacy_state(self._cim, vars(self))

    def _train(self, train_loader, *rest, **kwargs):
        return super()._train(EpochHookLoader(train_loader, self._cim_on_epoch), *rest, **kwargs)

    def _cim_on_epoch(self):
        """Before each epoch: CIM's meta steps, box refreshes and augmentation schedule (see CIM.before_epoch)."""
        if self._cim_paused:
            return
        self._cim.before_epoch(unwrap(self._network), lr=self._cim_current_lr(),
                               weight_decay=self._cim_phi_weight_decay())

    def _feature_compression(self, *args, **kwargs):
        """FOSTER's compression stage distils a student from the frozen teacher. As in the official CIM
        code, no meta steps or box refreshes run in its epochs (they follow the boosting epochs only)."""
        self._cim_paused = True
        try:
            return super()._feature_compression(*args, **kwargs)
        finally:
            self._cim_paused = False

    def _get_memory(self):
        memory = self._cim.memory
        return None if memory is None or len(memory) == 0 else MemoryAppendent(memory)

    @property
    def exemplar_size(self) -> int:
        return 0 if self._cim.memory is None else len(self._cim.memory)

    @property
    def samples_old_class(self):
        """FOSTER's per-old-class sample count, from the compressed memory."""
        if self._cim.memory is None or self._known_classes == 0:
            return super().samples_old_class
        return max(1, len(self._cim.memory) // max(1, self._known_classes))

    def build_rehearsal_memory(self, data_manager, per_class):
        """Byte-budgeted herding over compressed exemplars; class means from decoded exemplars."""
        dm = data_manager._dm if isinstance(data_manager, DataManagerProxy) else data_manager
        classes = ((c, self._cim_pipeline.load_many(self._class_items(dm, c)),
                    torch.from_numpy(np.where(dm._train_targets == c)[0]))
                   for c in range(self._known_classes, self._total_classes))
        try:
            self._class_means = self._cim.build_memory(unwrap(self._network), classes, lr=self._cim_current_lr(),
                                                       weight_decay=self._cim_phi_weight_decay())
        except BudgetTooSmall as err:
            raise ConfigError(f"{err}; raise memory_size (or memory_per_class with fixed_memory)") from None
        log.debug("CIM memory: %s exemplars per class", self._cim.memory.counts())

    @staticmethod
    def _class_items(dm, class_idx):
        idx = np.where(dm._train_targets == class_idx)[0]
        data = dm._train_data
        return data[idx] if isinstance(data, np.ndarray) else [data[i] for i in idx]

    # -- the CIL optimiser, as CIM needs it --------------------------------------------------
    def _cim_configured_lr(self) -> float:
        """The phase's initial CIL learning rate as configured (used when no optimiser is visible)."""
        names = ("init_lr",) if self._cur_task == 0 else ("lrate", "lr")
        for name in names:
            if name in self.args:
                return float(self.args[name])
            for module in learner_modules(type(self)):
                if isinstance(getattr(module, name, None), (int, float)):
                    return float(getattr(module, name))
        return 0.1

    def _cim_current_lr(self) -> float:
        """The CIL optimiser's current learning rate (after the scheduler's steps so far)."""
        if self._cim_cil_optimizer is not None:
            return float(self._cim_cil_optimizer.param_groups[0]["lr"])
        return self._cim_configured_lr()

    def _cim_phi_weight_decay(self) -> float:
        if self._cim_cil_optimizer is not None:
            return float(self._cim_cil_optimizer.param_groups[0].get("weight_decay", PHI_WEIGHT_DECAY))
        return PHI_WEIGHT_DECAY

    # -- reporting ---------------------------------------------------------------------------
    def cim_save_artifacts(self, out_dir) -> None:
        """memory.pt (the compressed memory, real bytes) and exemplars.pt (where each came from)."""
        self._cim.memory.save(Path(out_dir) / "memory.pt")
        save(Path(out_dir) / "exemplars.pt", self._cim.exemplar_record())

    def cim_memory_report(self) -> Dict[str, Any]:
        return self._cim.report()


def cim_learner_class(base_cls, args: Dict[str, Any]):
    """`base_cls` with CIMMixin in front; ConfigError for learners that keep no memory."""
    name = args["model_name"].lower()
    if not keeps_memory(base_cls):
        raise ConfigError(
            f'learner "{name}" keeps no exemplar memory, so CIM has nothing to compress; remove "cim": true '
            f"or use a rehearsal learner ({', '.join(SUPPORTED)})"
        )
    if name not in SUPPORTED:
        raise ConfigError(f"{refusal(name)}; supported: {', '.join(SUPPORTED)}")
    cls = type(f"CIM{base_cls.__name__}", (*EXTRA_HOOKS.get(name, ()), CIMMixin, base_cls), {})
    for loop in learner_spec(name).train_loops:  # the learner's loops given the CIL optimiser (its spec)
        setattr(cls, loop, _optimiser_capturing(cls, loop))
    return cls


def _optimiser_capturing(cls, name: str):
    """`cls.name` that records the CIL optimiser it is given (the first torch Optimizer argument), then
    runs the learner's own loop."""

    def loop(self, *args, **kwargs):
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.optim.Optimizer):
                self._cim_cil_optimizer = value
                break
        return getattr(super(cls, self), name)(*args, **kwargs)

    loop.__name__ = name
    return loop
