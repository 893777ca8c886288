"""The learner registry: one :class:`LearnerSpec` per PyCIL learner the plug-in knows, declared in that
learner's own file of this package (``icarl.py``, ``der_p/``, ``refused.py``, ...).

A learner is supported when its memory flows only through the hooks the mixin replaces: the memory is
built by ``build_rehearsal_memory``, handed to training by ``_get_memory()`` → ``get_dataset(...,
appendent=...)``, and its network gives the mixin a last feature map per backbone. A refused learner's
spec names what in its own flow steps outside those hooks (checked against the pinned PyCIL).

Nothing here imports PyCIL: a spec names the plug-in's own learner classes as "module:Class" strings,
imported by :func:`~cim_plugin.pycil.host.learner_class` when a run asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ...config import ConfigError
from .losses import InnerLoss, ce_loss

__all__ = ["LearnerSpec", "DEFAULT_EPOCH_KEYS", "register", "learner_spec", "registered", "refusal",
           "check_cim_support", "inner_loss_for"]

# The keys naming a phase's training epochs (first phase, later phases), read from the config (args) or the
# learner module's constants: PyCIL's usual pair (a learner with its own pair declares it, see FOSTER, BiC).
DEFAULT_EPOCH_KEYS = ("init_epoch", "epochs")


@dataclass(frozen=True)
class LearnerSpec:
    """Everything the plug-in knows about one learner (``name``: PyCIL's "model_name", lower case).

    - ``refused``: why ``"cim": true`` cannot run on it; None for a supported learner.
    - ``inner_loss``: the learner's own training loss, ``loss(learner, out, y, x) -> scalar``, which CIM's
      bilevel step differentiates (SPEC step 7); required when supported.
    - ``train_loops``: its epoch loops that receive the phase's CIL optimiser as an argument (the mixin reads
      the learning rate and weight decay from it); each must be a method of the learner's class.
    - ``extra_hooks``: classes placed before ``CIMMixin`` in the class CIM builds (BiC's two-stage loop).
    - ``epoch_keys``: the config keys / module constants naming the first and later phases' epochs.
    - ``ddp``: runs under torchrun (PyCIL's DataParallel hook wraps all its training).
    - ``plugin_class``: "module:Class" when the plug-in provides the learner class (der_p, lucir); None for
      PyCIL's own (``host.LEARNERS``).
    """

    name: str
    refused: Optional[str] = None
    inner_loss: Optional[InnerLoss] = None
    train_loops: Tuple[str, ...] = ()
    extra_hooks: Tuple[type, ...] = ()
    epoch_keys: Tuple[str, str] = DEFAULT_EPOCH_KEYS
    ddp: bool = False
    plugin_class: Optional[str] = None

    def __post_init__(self):
        if self.name != self.name.lower():
            raise ValueError(f"learner name {self.name!r} must be lower case (PyCIL's model_name)")
        if self.supported and self.inner_loss is None:
            raise ValueError(f"supported learner {self.name!r} declares no inner_loss")
        if not self.supported and (self.inner_loss or self.train_loops or self.extra_hooks or self.ddp):
            raise ValueError(f"refused learner {self.name!r} declares what only a supported learner has")
        if self.plugin_class is not None and self.plugin_class.count(":") != 1:
            raise ValueError(f"plugin_class of {self.name!r} must read 'module:Class', got {self.plugin_class!r}")

    @property
    def supported(self) -> bool:
        return self.refused is None


_SPECS: Dict[str, LearnerSpec] = {}  # name -> spec, in registration order (the order messages list them in)


def register(spec: LearnerSpec) -> LearnerSpec:
    """Add ``spec`` to the registry (ValueError if its name is taken); returns it."""
    if spec.name in _SPECS:
        raise ValueError(f"learner {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    return spec


def learner_spec(name: str) -> Optional[LearnerSpec]:
    """The spec of learner ``name`` (any case), or None for a learner the plug-in does not know."""
    return _SPECS.get(str(name).lower())


def registered() -> Tuple[LearnerSpec, ...]:
    """Every registered spec, in registration order."""
    return tuple(_SPECS.values())


def _supported_names() -> Tuple[str, ...]:
    return tuple(s.name for s in _SPECS.values() if s.supported)


def refusal(name: str) -> str:
    """Why ``"cim": true`` cannot run on learner ``name`` (a generic line for learners not examined)."""
    spec = learner_spec(name)
    if spec is None or spec.supported:
        return f'"cim": true has not been tried with learner "{name}" (its memory flow is untested with the plug-in)'
    return f'"cim": true cannot run on learner "{name}": {spec.refused}'


def check_cim_support(config) -> None:
    """ConfigError, before any learner is imported or trained, when ``"cim": true`` names a refused learner."""
    name = str(config.get("model_name", "")).lower()
    spec = learner_spec(name)
    if config.get("cim") and spec is not None and not spec.supported:
        raise ConfigError(f"{refusal(name)}; supported: {', '.join(_supported_names())}")


def inner_loss_for(model_name: str) -> InnerLoss:
    """The inner loss of learner ``model_name`` (plain CE for a learner without one of its own)."""
    spec = learner_spec(model_name)
    return spec.inner_loss if spec is not None and spec.supported else ce_loss
