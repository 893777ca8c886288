"""A run's config checked before anything is built or trained, and its dataset loaded once: the keys, the
learner, the convnet, the dataset's options, the devices (``prepare``), then the data (``load_dataset``)."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any, Dict

import numpy as np

from ..config import (
    CIM_DEFAULTS,
    RUNNER_KEYS,
    ConfigError,
    check_strict,
    did_you_mean,
    ignored_value_warnings,
    unknown_key_warnings,
    validate_cim_keys,
    validate_run_keys,
    with_defaults,
)
from ..datasets import DATASETS, DatasetLayoutError, build_idata, dataset_names
from . import distributed
from .constants import check_constant_overrides, learner_modules, module_constants
from .host import PYCIL_DATASETS, check_convnet_type, import_pycil, learner_class, pycil_arg_keys, resolve_devices
from .learners import check_cim_support

__all__ = ["check_dataset_name", "check_dataset_options", "dataset_hook", "dataset_option_keys", "load_dataset",
           "prepare", "valid_keys"]

log = logging.getLogger("cim_plugin")


def dataset_hook(config: Dict[str, Any]):
    """The function PyCIL's DataManager calls for a dataset name: our datasets, else None."""

    def hook(name: str):
        return build_idata(name, config)

    return hook


def valid_keys(config: Dict[str, Any]) -> set:
    """Keys that something reads: PyCIL's args, the learner module's constants, ours, datasets'."""
    keys = set(pycil_arg_keys()) | set(CIM_DEFAULTS) | RUNNER_KEYS
    for cls in DATASETS.values():
        keys |= set(getattr(cls, "option_keys", ()))
    for module in learner_modules(learner_class(config["model_name"])):
        keys |= set(module_constants(module))
    return keys


def dataset_option_keys() -> Dict[str, tuple]:
    """The plug-in's dataset names -> the config keys each reads."""
    return {name: tuple(getattr(cls, "option_keys", ())) for name, cls in DATASETS.items()}


def check_dataset_name(name: str) -> None:
    """ConfigError listing the datasets (the plug-in's and PyCIL's), with the closest, for a name that is neither."""
    valid = sorted(set(dataset_names()) | set(PYCIL_DATASETS))
    if name.lower() not in valid:
        raise ConfigError(f'unknown "dataset" {name!r}; valid names: {valid}{did_you_mean(name, valid)} '
                          f'(fix: set "dataset" to one of them)')


def prepare(config: Dict[str, Any], strict: bool = False) -> Dict[str, Any]:
    """Validate a raw config and return the args dict for one run.

    Config warnings (unknown keys, ignored values) and the device fallback are printed once each to stderr and
    kept in ``_warnings`` (run_seed writes them to run.log). With ``strict`` (or ``"strict": true``) the config
    warnings are one ConfigError instead, before anything is built; the device fallback stays a warning (it is
    the machine, not the config: PyCIL's configs name GPUs).
    """
    import_pycil()
    given = list(config)
    config = with_defaults(config)
    validate_run_keys(config)
    validate_cim_keys(config)
    strict = bool(strict or config.get("strict", False))
    check_dataset_name(config["dataset"])
    check_cim_support(config)  # a learner CIM cannot run on -> ConfigError with the reason, before importing it
    cls = learner_class(config["model_name"])  # unknown learner -> ConfigError listing valid ones
    check_convnet_type(config["convnet_type"])
    check_dataset_options(config)
    check_constant_overrides(config, learner_modules(cls))
    problems = unknown_key_warnings(config, valid_keys(config))
    problems += ignored_value_warnings(given, config, dataset_option_keys(), strict=strict)
    if strict:
        check_strict(problems)
    with warnings.catch_warnings(record=True) as caught:  # the device fallback: one clean line, not a traceback line
        warnings.simplefilter("always")
        config["_devices"] = resolve_devices(config["device"])
    notices = problems + [str(w.message) for w in caught]
    for message in notices if distributed.speaks() else ():
        print(f"warning: {message}", file=sys.stderr)
    config["_warnings"] = notices
    distributed.setup(config)  # under torchrun: join the process group, one device per process
    return config


def check_dataset_options(config: Dict[str, Any]) -> None:
    """Build the plug-in's dataset object (cheap: nothing is read) so that a bad dataset key ("resolution" 0,
    a synthetic size out of range...) is a ConfigError before anything is loaded or trained."""
    try:
        dataset_hook(config)(config["dataset"])
    except (TypeError, ValueError) as err:
        if isinstance(err, DatasetLayoutError):
            raise
        raise ConfigError(str(err)) from None


def load_dataset(config: Dict[str, Any]):
    """Build the dataset object once (ours, or None for PyCIL's own); check the class split."""
    name = config["dataset"]
    idata = dataset_hook(config)(name)
    if idata is None:
        check_dataset_name(name)  # neither ours nor PyCIL's -> ConfigError with the closest name
        return None
    idata.download_data()
    idata.download_data = lambda: None  # built once; PyCIL's DataManager calls it again
    n_classes = len(np.unique(idata.train_targets))
    if config["init_cls"] > n_classes:
        raise ConfigError(
            f'"init_cls" is {config["init_cls"]} but dataset {name!r} has only {n_classes} classes; '
            f"lower init_cls (and increment) or use a dataset with more classes"
        )
    if config["init_cls"] < n_classes and config["increment"] > n_classes - config["init_cls"]:
        log.warning("increment %s exceeds the %s classes left after init_cls", config["increment"], n_classes)
    return idata
