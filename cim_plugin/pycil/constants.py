"""PyCIL's hyper-parameters kept as module-level constants (``epochs``, ``lrate``, ``milestones``, ...) of
a learner's modules: reading them, checking a config's overrides against their types, and setting them
for the duration of one run (then restoring them).

Nothing here imports PyCIL: the modules are found through ``sys.modules`` from a learner class.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Dict, Iterator, List

from ..config import ConfigError

__all__ = ["module_constants", "learner_modules", "owner", "check_constant_overrides", "overridden"]


def module_constants(module) -> Dict[str, Any]:
    """PyCIL hyper-parameters kept as module-level constants (epochs, lrate, milestones, ...)."""
    out = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key.isupper() or key == "logging":
            continue
        if isinstance(value, (bool, int, float, str)) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value)
        ):
            out[key] = value
    return out


def learner_modules(cls) -> List[Any]:
    """The modules defining `cls` and its learner bases (whose constants a config may override)."""
    out = []
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        name = klass.__module__
        if name == "models.base":  # BaseLearner's batch_size is for exemplar extraction, not a hyper-parameter
            continue
        if module is not None and (name.startswith("models.") or name.startswith("cim_plugin.")) and module not in out:
            out.append(module)
    return out


def _kind(value) -> str:
    """What a module constant's value is, in the words of an error message."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list of numbers"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(default, value) -> bool:
    """Can ``value`` (from JSON) replace the module constant ``default``? (int is fine for float; bool is not a number)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return _is_number(value)
    if isinstance(default, str):
        return isinstance(value, str)
    return isinstance(value, list) and all(_is_number(v) for v in value)


def owner(module) -> str:
    """How an error names a learner module: "PyCIL's models.icarl", or for the plug-in's own
    "the plug-in's cim_plugin.pycil.learners.lucir.learner"."""
    who = "the plug-in's" if module.__name__.startswith("cim_plugin.") else "PyCIL's"
    return f"{who} {module.__name__}"


def check_constant_overrides(config: Dict[str, Any], modules) -> None:
    """ConfigError unless every top-level key overriding a module constant of ``modules`` has its type.

    The type is that of the constant itself (see :func:`module_constants`): bool, int (a float is
    refused), float (an int is fine), str, or a list of numbers. The message names the key, the
    expected type, the constant's own value and the value given.
    """
    for module in modules:
        for key, default in module_constants(module).items():
            if key not in config or _matches(default, config[key]):
                continue
            value, example = config[key], json.dumps(list(default) if isinstance(default, tuple) else default)
            raise ConfigError(
                f'"{key}" overrides the constant {key} of {owner(module)}, which is {_kind(default)}; '
                f"got {value!r} ({type(value).__name__}). Give {_kind(default)}, e.g. \"{key}\": {example} "
                f"(its default)")


@contextlib.contextmanager
def overridden(module, values: Dict[str, Any]) -> Iterator[None]:
    """Set module attributes for the duration of the block, then restore them."""
    saved = {k: getattr(module, k) for k in values}
    try:
        for key, value in values.items():
            setattr(module, key, value)
        yield
    finally:
        for key, value in saved.items():
            setattr(module, key, value)
