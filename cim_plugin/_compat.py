"""Old import paths keep working: `cim_plugin.memory`, `cim_plugin.adapter`, `cim_plugin.benchmark`, ...

Before the split into `method/`, `pycil/` and `bench/`, every module sat directly in `cim_plugin/`. A
finder on `sys.meta_path` answers the old names: a name that moved whole (`cim_plugin.memory`) *is* the
new module (same object, so monkeypatching either name patches both, and pickles that name the old
path still load); a name whose module was split (`cim_plugin.adapter`, `cim_plugin.benchmark`) is a
module holding every name of its parts. Targets are imported only when an old name is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from typing import Dict, Tuple

# old module (under cim_plugin.) -> the new module(s) (under cim_plugin.) that hold its names
MOVED: Dict[str, Tuple[str, ...]] = {
    **{name: (f"method.{name}",) for name in (
        "cam", "boxes", "codec", "herding", "memory", "pau", "cim_branch", "bilevel", "rng")},
    **{name: (f"pycil.{name}",) for name in ("runner", "cli", "checkpoint")},
    "inner_losses": ("pycil.learners.losses", "pycil.learners"),
    **{name: (f"pycil.learners.der_p.{name}",) for name in ("channel_masks", "pruning")},
    "der_p": ("pycil.learners.der_p.learner",),
    "adapter": ("method.data", "method.network", "method.cim", "pycil.network", "pycil.data", "pycil.mixin"),
    "plots": ("bench.figures",),
    "metrics": ("bench.metrics",),
    "benchmark": ("bench.runs", "bench.tables", "bench.sizes", "bench.report"),
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    PREFIX = "cim_plugin."

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.PREFIX) and fullname[len(self.PREFIX):] in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a plain module; exec_module fills it or puts the new module in its place

    def exec_module(self, module: types.ModuleType) -> None:
        targets = [importlib.import_module(self.PREFIX + t) for t in MOVED[module.__name__[len(self.PREFIX):]]]
        if len(targets) == 1:
            sys.modules[module.__name__] = targets[0]  # the import system returns what sys.modules holds
            return
        for target in targets:
            module.__dict__.update({k: v for k, v in vars(target).items() if not k.startswith("__")})
        module.__doc__ = f"Old name; its contents now live in {', '.join(t.__name__ for t in targets)}."


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
