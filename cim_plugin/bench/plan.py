"""Planning a benchmark: read its configs, check every variant's config before any run starts, and list
the runs (:class:`RunSpec`: config stem, variant, seed, full config, run folder)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..config import ConfigError, load_config
from .layout import BASELINE, DEFAULT_SEEDS
from .variants import variants_for

__all__ = ["RunSpec", "load_benchmark_configs", "validate_runs", "plan_runs"]


@dataclass(frozen=True)
class RunSpec:
    """One run of the benchmark: a config stem, a variant, a seed, its full config and folder."""

    stem: str
    variant: str
    seed: int
    config: Dict[str, Any]
    dir: Path

    @property
    def name(self) -> str:
        return f"{self.stem}/{self.variant}/seed_{self.seed}"


def load_benchmark_configs(paths: Sequence[str | Path], seeds: Sequence[int],
                           warn: Callable[[str], None], checks=None) -> Dict[str, Dict[str, Any]]:
    """Read the configs: config stem -> {"path", "config"} with "cim" and "seed" removed.

    A config that sets "cim" is warned about (the benchmark owns that key); one that sets other
    seeds than ``seeds`` gets a note. With ``checks`` (the host's, e.g. ``cim_plugin.pycil.checks``), unknown
    learners raise ConfigError listing the valid ones.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        path = Path(path)
        config = load_config(path)
        if not isinstance(config.get("model_name"), str):
            raise ConfigError(f'{path}: "model_name" must name a PyCIL learner (e.g. "icarl", "der", "foster")')
        try:
            if checks is not None:
                checks.check_learner(config["model_name"])
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        if "cim" in config:
            warn(f'{path} sets "cim": {json.dumps(config["cim"])}; the benchmark runs every config with "cim" '
                 f"false and true, so this value is overridden")
            config.pop("cim")
        if "seed" in config:
            given = config.pop("seed")
            given = given if isinstance(given, list) else [given]
            if list(given) != list(seeds):
                warn(f"{path} sets \"seed\": {json.dumps(given)}; the benchmark runs seeds {list(seeds)} "
                     f"(choose them with --seeds)")
        stem = path.stem
        if stem in out:
            raise ConfigError(f"two configs are named {stem!r} ({out[stem]['path']} and {path}); their runs would "
                              f"share DIR/{stem}; rename one")
        out[stem] = {"path": str(path), "config": config}
    return out


def validate_runs(configs: Dict[str, Dict[str, Any]], mask_modes: Optional[Sequence[str]], checks,
                  codecs: Optional[Sequence[str]] = None, baseline_only: bool = False,
                  no_baseline: bool = False) -> None:
    """Check each config with ``checks.check_run`` (the runner's own checks: keys, devices, CIM support)
    before any run starts.

    One check per config, with its first CIM variant's keys (the variants differ only in "cim" and
    "cim_mask", which :func:`variants_for` has checked), so key warnings are printed once.
    """
    for entry in configs.values():
        variants = variants_for(entry["config"], mask_modes, codecs, baseline_only, no_baseline)
        overrides = next((v for name, v in variants.items() if name != BASELINE), None) or variants[BASELINE]
        config = dict(entry["config"], **overrides, seed=[DEFAULT_SEEDS[0]])
        try:
            checks.check_run(config)
        except ConfigError as err:
            raise ConfigError(f"{entry['path']}: {err}") from None


def plan_runs(configs: Dict[str, Dict[str, Any]], seeds: Sequence[int], out_dir: Path,
              mask_modes: Optional[Sequence[str]] = None, codecs: Optional[Sequence[str]] = None,
              baseline_only: bool = False, no_baseline: bool = False) -> List[RunSpec]:
    """All runs, seed-major (every variant of seed 1 before seed 2), so early seeds give a first table."""
    runs = []
    for seed in seeds:
        for stem, entry in configs.items():
            for variant, overrides in variants_for(entry["config"], mask_modes, codecs, baseline_only,
                                                   no_baseline).items():
                config = dict(entry["config"], **overrides)
                config["seed"] = [int(seed)]
                runs.append(RunSpec(stem, variant, int(seed), config, out_dir / stem / variant / f"seed_{seed}"))
    return runs
