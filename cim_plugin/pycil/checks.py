"""PyCIL's side of the benchmark's input checks: the benchmark (``cim_plugin.bench``) never imports PyCIL,
so the command passes this module as its ``checks`` (``exps/benchmark.py``)."""

from __future__ import annotations

from typing import Any, Dict

from .host import learner_class
from .mixin import cim_learner_class
from .runner import prepare


def check_learner(model_name: str) -> None:
    """ConfigError listing PyCIL's learners when ``model_name`` names none."""
    learner_class(model_name)


def check_run(config: Dict[str, Any]) -> None:
    """Check a run's config as the runner would (keys, devices, CIM support): ConfigError if unusable."""
    args = prepare(config)
    cim_learner_class(learner_class(args["model_name"]), args)
