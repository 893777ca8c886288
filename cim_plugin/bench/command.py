"""The benchmark command (the top layer of ``cim_plugin.bench``, under ``exps/benchmark.py``): check the configs,
plan the runs, run them, write the report. The layers below are listed in ``cim_plugin/bench/__init__.py``."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..config import ConfigError
from .execute import execute_runs, subprocess_runner
from .layout import DEFAULT_SEEDS
from .manifest import make_manifest, prepare_out_dir
from .plan import RunSpec, load_benchmark_configs, plan_runs, validate_runs
from .report import build_report

__all__ = ["run_benchmark"]


def run_benchmark(config_paths: Sequence[str | Path], seeds: Optional[Sequence[int]] = None,
                  out_dir: Optional[Path] = None, mask_modes: Optional[Sequence[str]] = None,
                  resume: bool = False, overwrite: bool = False, report_only: bool = False,
                  runner: Callable[[RunSpec, bool], int] = subprocess_runner,
                  echo: Callable[[str], None] = print, warn: Optional[Callable[[str], None]] = None,
                  validate: bool = True, jobs: int = 1, checks=None, codecs: Optional[Sequence[str]] = None,
                  baseline_only: bool = False, no_baseline: bool = False) -> int:
    """The benchmark command. Returns 0 when every run finished, 1 when some failed (the report is
    written from the others). Bad input raises ConfigError (the CLI prints it and exits 2).

    ``runner(spec, resume) -> exit code`` runs one spec (tests pass a fake); ``checks`` is the host's
    config checks (``cim_plugin.pycil.checks``: learner names, and with ``validate`` every variant's config
    as the runner would check it, before the first run); ``jobs`` runs that many specs at once (each in its
    own process); ``baseline_only`` runs only the baseline of each config (no CIM variant), ``no_baseline``
    only its CIM variants (two or more).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number >= 1, got {jobs!r}")
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    if report_only:
        if out_dir is None:
            raise ConfigError("--report-only needs --out DIR (a benchmark folder)")
        if not Path(out_dir).is_dir():
            raise ConfigError(f"--report-only: {out_dir} does not exist")
        paths = build_report(Path(out_dir))
        for p in paths.values():
            echo(f"wrote {p}")
        return 0
    if not config_paths:
        raise ConfigError("give at least one config: exps/benchmark.py CONFIG.json [CONFIG2.json ...]")
    seeds = list(DEFAULT_SEEDS if not seeds else seeds)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds has repeated values {seeds}; give each seed once")
    configs = load_benchmark_configs(config_paths, seeds, warn, checks)
    if validate and checks is not None:
        validate_runs(configs, mask_modes, checks, codecs, baseline_only, no_baseline)
    if out_dir is None:
        out_dir = Path("runs") / f"benchmark_{'_'.join(configs)}_{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, make_manifest(configs, seeds, mask_modes, codecs, baseline_only, no_baseline),
                    resume, overwrite)
    runs = plan_runs(configs, seeds, out_dir, mask_modes, codecs, baseline_only, no_baseline)
    arms = "the baseline only" if baseline_only else "CIM variants only" if no_baseline else "baseline and CIM variants"
    echo(f"benchmark: {len(runs)} runs ({len(configs)} config(s), seeds {seeds}, {arms}) into {out_dir}")
    if runner is subprocess_runner and jobs > 1:
        runner = functools.partial(subprocess_runner, threads=max(1, (os.cpu_count() or 1) // jobs))
    failed = execute_runs(runs, resume, runner, echo, jobs=jobs)
    paths = build_report(out_dir)
    for p in paths.values():
        echo(f"wrote {p}")
    if failed:
        echo(f"{len(failed)} run(s) failed: {', '.join(s.name for s in failed)}; fix and rerun with --resume")
        return 1
    return 0
