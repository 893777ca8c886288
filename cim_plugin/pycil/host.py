"""Everything that touches PyCIL lives here: finding and importing the submodule, PyCIL's learner
table (and the plug-in's learners, from :mod:`.learners`), device selection, and the per-run patches
(module constants, the dataset hook, network factories).

PyCIL's files are never edited: we adapt it from outside by setting attributes on its modules
for the duration of one run and restoring them afterwards (:mod:`.constants`).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import os
import re
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import nn

from ..config import ConfigError, did_you_mean
from ..paths import REPO_ROOT
from .constants import learner_modules, module_constants, overridden
from .learners import PLUGIN_LEARNERS

__all__ = ["SUBMODULE_FIX", "PINNED_COMMIT", "PyCILMissing", "pycil_dir", "pycil_available", "import_pycil",
           "LEARNERS", "PYCIL_DATASETS", "learner_class", "convnet_names", "check_convnet_type", "pycil_arg_keys",
           "resolve_devices", "STEM_BY_NAME_NETS", "stem_dataset_name", "UNRUNNABLE", "ONLY_32PX",
           "check_runnable", "NEEDS_CUDA", "patched"]

SUBMODULE_FIX = "git submodule update --init third_party/PyCIL"
PINNED_COMMIT = "87cc411"  # third_party/PyCIL, the PyCIL the plug-in is checked against


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
        if "CIM_PYCIL_DIR" in os.environ:
            raise PyCILMissing(
                f"CIM_PYCIL_DIR={os.environ['CIM_PYCIL_DIR']} holds no PyCIL checkout (no trainer.py and "
                f"models/base.py under {root}).\nFix: point CIM_PYCIL_DIR at a PyCIL clone (git clone "
                f"https://github.com/G-U-N/PyCIL.git; the plug-in is tested with commit {PINNED_COMMIT}), or unset "
                f"it to use the submodule: `{SUBMODULE_FIX}` in the repository root."
            )
        raise PyCILMissing(
            f"PyCIL is not checked out at {root} (the git submodule third_party/PyCIL is empty).\n"
            f"Fix: run `{SUBMODULE_FIX}` in the repository root (or `bash setup.sh`, which does it), or set "
            f"CIM_PYCIL_DIR to a PyCIL clone."
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
# The plug-in's own learners (der_p, lucir) are declared in .learners: PLUGIN_LEARNERS, same form.
PYCIL_DATASETS = ("cifar10", "cifar100", "imagenet100", "imagenet1000")


def learner_class(model_name: str):
    """The PyCIL learner class for a config's "model_name"; ConfigError listing valid names."""
    name = model_name.lower()
    table = {**LEARNERS, **PLUGIN_LEARNERS}
    if name not in table:
        raise ConfigError(f'unknown "model_name" {model_name!r}; valid names: {sorted(table)}'
                          f'{did_you_mean(model_name, table)} (fix: set "model_name" to one of them)')
    import_pycil()
    module_name, cls_name = table[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def convnet_names() -> List[str]:
    """The "convnet_type" values PyCIL's ``utils/inc_net.get_convnet`` accepts, sorted (lower case).

    Read from the function's own source (``name == "..."`` comparisons), so the list follows the
    pinned PyCIL without building any network. Empty when the source cannot be read.
    """
    import_pycil()
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(importlib.import_module("utils.inc_net").get_convnet)))
    except (OSError, TypeError, SyntaxError):
        return []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and all(isinstance(op, ast.Eq) for op in node.ops):
            names.update(c.value for c in node.comparators
                         if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return sorted(n.lower() for n in names)


def check_convnet_type(name: str) -> None:
    """ConfigError listing PyCIL's convnets when ``name`` is not one of them (no check if none are found)."""
    valid = convnet_names()
    if not valid or name.lower() in valid:
        return
    raise ConfigError(f'unknown "convnet_type" {name!r}; PyCIL (utils/inc_net.get_convnet) builds {valid}'
                      f'{did_you_mean(name, valid)} (fix: set "convnet_type" to one of them)')


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
    no_cuda: List[Any] = []  # GPU ids asked for on a machine without CUDA: one warning for all of them
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
            no_cuda.append(entry)
            devices.append(torch.device("cpu"))
            continue
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f'"device" {entry!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s) '
                f"(ids 0..{torch.cuda.device_count() - 1}); use one of them or \"cpu\""
            )
        devices.append(torch.device(f"cuda:{index}"))
    if no_cuda:
        asked = no_cuda[0] if len(no_cuda) == 1 else no_cuda
        warnings.warn(f'"device" {asked!r} requested but CUDA is not available on this machine: running on the '
                      f'CPU (set "device": ["cpu"] to say so)', stacklevel=2)
    # Duplicate CPU entries make no sense for DataParallel: one CPU is one device.
    if all(d.type == "cpu" for d in devices):
        devices = [torch.device("cpu")]
    elif any(d.type == "cpu" for d in devices):  # nn.DataParallel runs on GPUs only
        raise ConfigError(f'"device" {list(spec)} mixes the CPU and GPUs; DataParallel needs GPUs only: '
                          f'list GPU ids (e.g. ["0", "1"]) or "cpu" alone')
    if len(set(devices)) < len(devices):
        raise ConfigError(f'"device" {list(spec)} names a GPU twice; list each GPU id once')
    return devices


def _adaptive_pool_factory(factory):
    """Wrap a CIFAR-resnet factory so that its final pooling adapts to any input size.

    PyCIL's resnet32 ends with AvgPool2d(8), which is only right for 32x32 inputs; with a global
    average pool (the same numbers at 32x32) it runs on 64x64 images too. MEMO's factory
    (``get_memo_resnet32``) returns a pair (generalized blocks, adaptive block); the pool sits in the
    adaptive block, which MEMO copies for every new phase, so the pair is fixed in the same way.
    """

    def fix(net):
        if isinstance(getattr(net, "avgpool", None), nn.AvgPool2d):
            net.avgpool = nn.AdaptiveAvgPool2d(1)
        return net

    def build(*args, **kwargs):
        net = factory(*args, **kwargs)
        if isinstance(net, tuple):
            return tuple(fix(part) for part in net)
        return fix(net)

    return build


# get_convnet names whose factories pick their first layers by the dataset's name ("cifar" or "imagenet"
# in args["dataset"]) and build none for any other name (PyCIL's convs/resnet.py and its variants).
STEM_BY_NAME_NETS = ("resnet18", "resnet34", "resnet50", "cosine_resnet18", "cosine_resnet34", "cosine_resnet50",
                     "resnet18_rep", "resnet18_cbam", "resnet34_cbam", "resnet50_cbam")


def stem_dataset_name(image_size) -> str:
    """The dataset name whose stem PyCIL should build for a plug-in dataset of ``image_size`` (H, W) pixels.

    "imagenet" (7x7 conv + max-pool, or PyCIL's own choice for its ImageNet configs) for images that
    vary in size (trained at 224 px) or are larger than 64 px; "cifar" (3x3 conv) for small images.
    """
    return "imagenet" if image_size is None or min(image_size) > 64 else "cifar"


def _stem_factory(factory, stem_name: str):
    """Wrap a STEM_BY_NAME_NETS factory: a dataset named neither "cifar*" nor "imagenet*", or one read at a
    chosen "resolution" (imagenet100 at 32 px, say), gets ``stem_name``'s stem.

    Without it PyCIL's resnet18 has no ``conv1`` for the plug-in's datasets (food101, synthetic,
    tinyimagenet) and crashes at the first forward.
    """

    def build(*args, **kwargs):
        run_args = kwargs.get("args")
        if isinstance(run_args, dict) and (run_args.get("resolution") is not None or not any(
                k in str(run_args.get("dataset", "")) for k in ("cifar", "imagenet"))):
            kwargs["args"] = {**run_args, "dataset": stem_name}
        return factory(*args, **kwargs)

    return build


# Learners the pinned PyCIL cannot build or train on the plug-in's datasets, with the reason (checked against
# third_party/PyCIL); refused before any data is loaded, with or without "cim".
UNRUNNABLE: Dict[str, str] = {
    "ssre": "the pinned PyCIL's SSRE cannot be built: models/ssre.py calls IncrementalNet(convnet_type, False, "
            "args=args) but utils/inc_net.IncrementalNet takes (args, pretrained) (TypeError: got multiple values "
            "for argument 'args'), with any convnet_type and image size",
}
# Learners that only train on 32x32 images, with the reason.
ONLY_32PX: Dict[str, str] = {
    "pass": "PyCIL's PASS reshapes every rotated training batch to (-1, 3, 32, 32) (models/pa2s.py), so any "
            "other image size fails in its loss (batch size mismatch)",
}

# Learners whose pinned PyCIL code moves tensors with a bare .cuda(), so they stop on a machine without CUDA.
NEEDS_CUDA: Dict[str, str] = {
    "simplecil": "models/simplecil.py moves every batch to the GPU with data.cuda() when it builds its prototypes",
    "aper_finetune": "models/aper_finetune.py moves every batch to the GPU with data.cuda() when it builds its "
                     "prototypes",
    "coil": "models/coil.py builds its transport plan with torch.tensor(T).float().cuda()",
    "beefiso": "models/beef_iso.py makes its zero losses with torch.tensor(0.).cuda()",
}


def _on_cpu_only(devices) -> bool:
    return devices is not None and all(str(d).lower().startswith("cpu") for d in devices)


def check_runnable(model_name: str, image_size=(32, 32), devices=None) -> None:
    """ConfigError with the reason and the fix when the pinned PyCIL cannot run ``model_name`` on images of
    ``image_size`` (H, W; None: images that vary in size) on ``devices`` (the config's "device" list; None:
    not checked)."""
    name = str(model_name).lower()
    if name in UNRUNNABLE:
        raise ConfigError(f'learner "{name}" is refused: {UNRUNNABLE[name]}; choose another "model_name"')
    if name in NEEDS_CUDA and _on_cpu_only(devices):
        raise ConfigError(f'learner "{name}" needs a CUDA GPU: the pinned PyCIL\'s {NEEDS_CUDA[name]}; '
                          f'run it with "device": ["0"] on a machine with a GPU, or choose another "model_name"')
    if name in ONLY_32PX and (image_size is None or tuple(image_size) != (32, 32)):
        shown = "images of varying size" if image_size is None else f"{image_size[0]}x{image_size[1]} images"
        raise ConfigError(f'learner "{name}" needs 32x32 images but the dataset has {shown}: {ONLY_32PX[name]}; '
                          f'use a 32 px dataset ("synthetic_image_size": 32, or "resolution": 32 for a folder '
                          f"dataset) or another learner")


@contextlib.contextmanager
def patched(config: Dict[str, Any], idata_hook=None) -> Iterator[Dict[str, Any]]:
    """Adapt PyCIL for one run, restoring everything afterwards.

    - module constants of the learner's module named by top-level config keys are overridden;
    - `utils.data_manager._get_idata` first asks `idata_hook(name)` (the plug-in's datasets);
    - CIFAR resnets get a global average pool when the plug-in dataset's images are not 32x32 (or vary);
      ImageNet-style resnets get a stem for plug-in datasets named neither "cifar*" nor "imagenet*".

    Yields a dict with "idata" (the last dataset object built) for the caller's bookkeeping.
    """
    import_pycil()
    # PyCIL's own datasets (no "_image_size"): CIFAR is 32x32, its ImageNets vary in size
    own_size = (32, 32) if "cifar" in str(config.get("dataset", "")).lower() else None
    check_runnable(config["model_name"], config.get("_image_size", own_size), config.get("device"))
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
    if "_image_size" in config:  # a plug-in dataset (absent: PyCIL's own); None: its images vary in size
        size = config["_image_size"]
        stem = stem_dataset_name(size)
        net_patches = {name: _stem_factory(getattr(inc_net, name), stem)
                       for name in STEM_BY_NAME_NETS if hasattr(inc_net, name)}
        if size is None or tuple(size) != (32, 32):
            net_patches["resnet32"] = _adaptive_pool_factory(inc_net.resnet32)
            net_patches["cosine_resnet32"] = _adaptive_pool_factory(inc_net.cosine_resnet32)
            net_patches["get_memo_resnet32"] = _adaptive_pool_factory(inc_net.get_memo_resnet32)
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(overridden(module, {k: config[k] for k in module_constants(module) if k in config}))
        stack.enter_context(overridden(data_manager, {"_get_idata": get_idata}))
        stack.enter_context(overridden(inc_net, net_patches))
        yield state
