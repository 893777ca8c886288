"""Everything that touches PyCIL lives here: finding and importing the submodule, the learner
table, per-run overrides of PyCIL's module constants, device selection, and the dataset hook.

PyCIL's files are never edited: we adapt it from outside by setting attributes on its modules
for the duration of one run and restoring them afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import nn

from .config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
SUBMODULE_FIX = "git submodule update --init third_party/PyCIL"


class PyCILMissing(RuntimeError):
    """The PyCIL submodule is not checked out."""


def pycil_dir() -> Path:
    """Where PyCIL lives: $CIM_PYCIL_DIR, else the pinned submodule third_party/PyCIL."""
    return Path(os.environ.get("CIM_PYCIL_DIR", REPO_ROOT / "third_party" / "PyCIL"))


def pycil_available() -> bool:
    root = pycil_dir()
    return (root / "trainer.py").is_file() and (root / "models" / "base.py").is_file()


def import_pycil():
    """Put PyCIL on sys.path and import its trainer; raise PyCILMissing with the fix if absent."""
    root = pycil_dir()
    if not pycil_available():
        raise PyCILMissing(
            f"PyCIL is not checked out at {root} (the git submodule third_party/PyCIL is empty).\n"
            f"Fix: run `{SUBMODULE_FIX}` in the repository root (or `bash setup.sh`, which does it)."
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("trainer")


# PyCIL's factory names -> "module:Class". A table, not an if/elif chain; names as in utils/factory.py.
LEARNERS: Dict[str, str] = {
    "icarl": "models.icarl:iCaRL",
    "bic": "models.bic:BiC",
    "podnet": "models.podnet:PODNet",
    "lwf": "models.lwf:LwF",
    "ewc": "models.ewc:EWC",
    "wa": "models.wa:WA",
    "der": "models.der:DER",
    "finetune": "models.finetune:Finetune",
    "replay": "models.replay:Replay",
    "gem": "models.gem:GEM",
    "coil": "models.coil:COIL",
    "foster": "models.foster:FOSTER",
    "rmm-icarl": "models.rmm:RMM_iCaRL",
    "rmm-foster": "models.rmm:RMM_FOSTER",
    "fetril": "models.fetril:FeTrIL",
    "pass": "models.pa2s:PASS",
    "il2a": "models.il2a:IL2A",
    "ssre": "models.ssre:SSRE",
    "memo": "models.memo:MEMO",
    "beefiso": "models.beef_iso:BEEFISO",
    "simplecil": "models.simplecil:SimpleCIL",
    "acil": "models.acil:ACIL",
    "ds-al": "models.dsal:DSAL",
    "aper_finetune": "models.aper_finetune:APER_FINETUNE",
}
# Learners the plug-in adds (built on PyCIL's classes), same "module:Class" form.
PLUGIN_LEARNERS: Dict[str, str] = {
    "der_p": "cim_plugin.der_p:DERP",
}
PYCIL_DATASETS = ("cifar10", "cifar100", "imagenet100", "imagenet1000")


def learner_class(model_name: str):
    """The PyCIL learner class for a config's "model_name"; ConfigError listing valid names."""
    name = model_name.lower()
    table = {**LEARNERS, **PLUGIN_LEARNERS}
    if name not in table:
        raise ConfigError(f'unknown "model_name" {model_name!r}; valid names: {sorted(table)}')
    import_pycil()
    module_name, cls_name = table[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


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


_ARG_KEY = re.compile(r"""args(?:\[\s*|\.get\(\s*)["']([A-Za-z0-9_]+)["']""")


def pycil_arg_keys() -> set:
    """Every key PyCIL reads from its args dict (scanned from its sources once)."""
    global _ARG_KEYS_CACHE
    if _ARG_KEYS_CACHE is None:
        keys = set()
        for path in pycil_dir().rglob("*.py"):
            keys.update(_ARG_KEY.findall(path.read_text(errors="ignore")))
        keys.add("config")  # main.py's own argparse key
        _ARG_KEYS_CACHE = keys
    return _ARG_KEYS_CACHE


_ARG_KEYS_CACHE: Optional[set] = None


def resolve_devices(spec: List[Any]) -> List[torch.device]:
    """PyCIL's "device" list -> torch devices.

    "cpu", "-1" or -1 select the CPU. "0", 0, "cuda:0" select a GPU; on a machine without CUDA
    they fall back to the CPU with a warning. A GPU id the machine does not have, or an entry we
    cannot parse, is a ConfigError. Several GPUs keep PyCIL's DataParallel.
    """
    devices: List[torch.device] = []
    for entry in spec:
        text = str(entry).strip().lower()
        if text in ("cpu", "-1"):
            devices.append(torch.device("cpu"))
            continue
        match = re.fullmatch(r"(?:cuda:)?(\d+)", text)
        if not match:
            raise ConfigError(
                f'"device" entry {entry!r} is not understood; use "cpu" (or "-1") or a GPU id such as "0"'
            )
        index = int(match.group(1))
        if not torch.cuda.is_available():
            import warnings

            warnings.warn(f'device {entry!r} requested but CUDA is not available: running on the CPU')
            devices.append(torch.device("cpu"))
            continue
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f'"device" {entry!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s) '
                f"(ids 0..{torch.cuda.device_count() - 1}); use one of them or \"cpu\""
            )
        devices.append(torch.device(f"cuda:{index}"))
    # Duplicate CPU entries make no sense for DataParallel: one CPU is one device.
    if all(d.type == "cpu" for d in devices):
        devices = [torch.device("cpu")]
    return devices


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


def _adaptive_pool_factory(factory):
    """Wrap a CIFAR-resnet factory so that its final pooling adapts to any input size.

    PyCIL's resnet32 ends with AvgPool2d(8), which is only right for 32x32 inputs; with a global
    average pool (the same numbers at 32x32) it runs on 64x64 images too.
    """

    def build(*args, **kwargs):
        net = factory(*args, **kwargs)
        if isinstance(getattr(net, "avgpool", None), nn.AvgPool2d):
            net.avgpool = nn.AdaptiveAvgPool2d(1)
        return net

    return build


@contextlib.contextmanager
def patched(config: Dict[str, Any], idata_hook=None) -> Iterator[Dict[str, Any]]:
    """Adapt PyCIL for one run, restoring everything afterwards.

    - module constants of the learner's module named by top-level config keys are overridden;
    - `utils.data_manager._get_idata` first asks `idata_hook(name)` (the plug-in's datasets);
    - CIFAR resnets get a global average pool when the dataset's images are not 32x32.

    Yields a dict with "idata" (the last dataset object built) for the caller's bookkeeping.
    """
    import_pycil()
    modules = learner_modules(learner_class(config["model_name"]))
    data_manager = importlib.import_module("utils.data_manager")
    inc_net = importlib.import_module("utils.inc_net")
    state: Dict[str, Any] = {"idata": None}
    original_get_idata = data_manager._get_idata

    def get_idata(name):
        idata = idata_hook(name) if idata_hook is not None else None
        if idata is None:
            idata = original_get_idata(name)
        state["idata"] = idata
        return idata

    net_patches = {}
    size = config.get("_image_size")
    if size is not None and tuple(size) != (32, 32):
        net_patches = {
            "resnet32": _adaptive_pool_factory(inc_net.resnet32),
            "cosine_resnet32": _adaptive_pool_factory(inc_net.cosine_resnet32),
        }
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(overridden(module, {k: config[k] for k in module_constants(module) if k in config}))
        stack.enter_context(overridden(data_manager, {"_get_idata": get_idata}))
        stack.enter_context(overridden(inc_net, net_patches))
        yield state
