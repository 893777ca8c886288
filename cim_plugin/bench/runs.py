"""Benchmark CIM against the baseline: run each config with "cim" off and on for the same seeds,
then write summary.md / summary.csv and the figures (curves.png, memory.png, exemplars.png).

Folder layout of a benchmark DIR::

    DIR/benchmark.json                         manifest: configs (without "cim"/"seed"), seeds, variants
    DIR/<config stem>/<variant>/seed_<s>/      one run: config.json, console.log and the runner's files
                                               (results.json, predictions.npz, checkpoint.pt, exemplars.pt, memory.pt)
    DIR/summary.md, summary.csv, curves.png, memory.png, exemplars.png

Variants: "baseline" ("cim" false) and "cim" ("cim" true), or one "cim-<mode>" per mask mode when
the config sets "cim_mask" or the command passes mask modes; with codecs, each once per codec
("cim-full-jpeg" is MRDC, "cim-cim-jpeg" CIM+JPEG). Each run is a subprocess of
``exps/run.py`` so that a crash of one run neither stops the benchmark nor keeps its memory.

Object sizes (where the dataset knows its boxes): an image's object size is its true box area /
image area, a class's size that of its median training image; small / medium / large are the
terciles of the class sizes (the paper gives no numeric split).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..config import CIM_MASK_MODES, EXEMPLAR_CODECS, ConfigError, load_config
from ..io import write_json
from .eta import eta_seconds, eta_text
from .manifest import (MANIFEST, MANIFEST_SCHEMA, REPORT_FILES, config_keys_differing,  # noqa: F401 (re-exported)
                       manifest_differences, prepare_out_dir, read_manifest)

from ..paths import REPO_ROOT
RUN_SCRIPT = REPO_ROOT / "exps" / "run.py"
DEFAULT_SEEDS = (1993, 1994, 1995)
BASELINE = "baseline"
SIZE_GROUPS = ("small", "medium", "large")
BENCHMARK_OWNED = ("cim", "seed")  # keys the benchmark sets per run


# ----------------------------------------------------------------------------------------- plan
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


def variants_for(config: Dict[str, Any], mask_modes: Optional[Sequence[str]] = None,
                 codecs: Optional[Sequence[str]] = None, baseline_only: bool = False,
                 no_baseline: bool = False) -> Dict[str, Dict[str, Any]]:
    """Variant name -> the keys it sets: baseline, then "cim" or one "cim-<mode>" per mask mode, each once
    per exemplar codec of ``codecs`` ("-jpeg" appended to the name of a JPEG variant: "cim-full-jpeg").

    ``mask_modes`` (from the command) wins over the config's "cim_mask"; without either the
    single CIM variant "cim" uses the default mask mode. ``codecs`` wins over "exemplar_codec".
    ``baseline_only``: the baseline alone (a reference arm, e.g. the learner with a larger memory).
    ``no_baseline``: the CIM variants alone (a budget too small for one full image per class, where only
    compressed exemplars can run; the report compares the variants with each other).
    """
    if baseline_only and no_baseline:
        raise ConfigError("--baseline-only and --no-baseline exclude each other; pass one")
    out: Dict[str, Dict[str, Any]] = {} if no_baseline else {BASELINE: {"cim": False}}
    if baseline_only:
        if mask_modes or codecs:
            raise ConfigError("--baseline-only runs no CIM variant; drop --mask-modes and --codecs")
        return out
    modes = list(dict.fromkeys(mask_modes)) if mask_modes else [config["cim_mask"]] if "cim_mask" in config else [None]
    for mode in modes:
        if mode is not None and mode not in CIM_MASK_MODES:
            raise ConfigError(f"unknown mask mode {mode!r}; valid modes: {list(CIM_MASK_MODES)}")
        for codec in dict.fromkeys(codecs or [None]):
            if codec is not None and codec not in EXEMPLAR_CODECS:
                raise ConfigError(f"unknown exemplar codec {codec!r}; valid codecs: {list(EXEMPLAR_CODECS)}")
            keys = {"cim": True, **({} if mode is None else {"cim_mask": mode}),
                    **({} if codec is None else {"exemplar_codec": codec})}
            out[("cim" if mode is None else f"cim-{mode}") + ("-jpeg" if codec == "jpeg" else "")] = keys
    if no_baseline and len(out) < 2:
        raise ConfigError("--no-baseline leaves one CIM variant and nothing to compare it with; give two or more, "
                          "e.g. --mask-modes cim full --codecs jpeg")
    return out


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


# ------------------------------------------------------------------------------------- manifest
def make_manifest(configs: Dict[str, Dict[str, Any]], seeds: Sequence[int], mask_modes: Optional[Sequence[str]],
                  codecs: Optional[Sequence[str]] = None, baseline_only: bool = False,
                  no_baseline: bool = False) -> Dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA,
        "configs": configs,
        "seeds": [int(s) for s in seeds],
        "variants": {stem: list(variants_for(e["config"], mask_modes, codecs, baseline_only, no_baseline))
                     for stem, e in configs.items()},
        "mask_modes": list(mask_modes) if mask_modes else None,
        **({"codecs": list(codecs)} if codecs else {}),
    }


# ------------------------------------------------------------------------------------------ runs
def read_results(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def subprocess_runner(spec: RunSpec, resume: bool, threads: Optional[int] = None) -> int:
    """Run one spec as `python exps/run.py DIR/config.json --out DIR [--resume]`; output to console.log.

    If the benchmark itself is interrupted (Ctrl-C, SIGTERM turned into SystemExit by the CLI), the
    run is terminated too, so no orphan keeps training; its checkpoint lets --resume go on.
    """
    cmd = [sys.executable, str(RUN_SCRIPT), str(spec.dir / "config.json"), "--out", str(spec.dir)]
    if resume:
        cmd.append("--resume")
    if _STOP.is_set():  # the benchmark is being interrupted: start nothing new
        return 130
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads is not None:  # parallel runs share the cores: one thread pool each, no oversubscription
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(spec.dir / "console.log", "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            return proc.wait()
        except BaseException:
            _terminate(proc)
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)


# Runs in flight (for --jobs: an interrupt reaches the main thread only, which stops them all).
_LIVE: set = set()
_LIVE_LOCK = threading.Lock()
_STOP = threading.Event()


def _terminate(proc: "subprocess.Popen") -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_live_runs() -> None:
    """Stop every run in flight and start no new one (the benchmark was interrupted)."""
    _STOP.set()
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        _terminate(proc)


def headline(results: Dict[str, Any]) -> str:
    """One line of a run's numbers: accuracy, exemplars, bytes, time."""
    from .tables import fmt, human_bytes

    last = results["phases"][-1] if results.get("phases") else {}
    per_class = (last.get("exemplars_per_class") or {}).get("mean")
    parts = [f"avg inc acc {fmt(_num(results.get('avg_incremental_accuracy_cnn')))}",
             f"last {fmt(_num(results.get('last_top1_cnn')))}"]
    if per_class is not None:
        parts.append(f"{per_class:.1f} exemplars/class")
    if last.get("memory_budget_bytes"):
        parts.append(f"{human_bytes(last.get('memory_bytes', 0))} / {human_bytes(last['memory_budget_bytes'])}")
    parts.append(f"{fmt(_num(results.get('wall_s')), digits=0)} s")
    return " | ".join(parts)


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _failure_line(run_dir: Path) -> str:
    log = run_dir / "console.log"
    if not log.is_file():
        return "no output"
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    return (errors or lines or ["no output"])[-1][:300]


def execute_runs(runs: Sequence[RunSpec], resume: bool, runner: Callable[[RunSpec, bool], int],
                 echo: Callable[[str], None], jobs: int = 1) -> List[RunSpec]:
    """Run every spec (skipping finished ones on resume), `jobs` at a time; returns the specs that failed.

    With jobs > 1 the runs start in plan order (a seed's baseline and CIM runs side by side, so both see
    the same load) and each run gets one thread per job share of the cores (see `subprocess_runner`).
    Each run's closing line ends with an estimate of the time the benchmark has left (`bench/eta.py`).
    """
    failed: List[RunSpec] = []
    lock = threading.Lock()
    finished: List[tuple] = []  # ((stem, variant), wall seconds) of the runs done, for the time-left estimate
    started: Dict[int, float] = {}  # plan index -> perf_counter at start, for the runs in flight
    waiting = set(range(len(runs)))  # plan indices not yet done (finished or failed)

    def time_left() -> str:  # called under the lock
        now = time.perf_counter()
        left = [((runs[i].stem, runs[i].variant), now - started[i] if i in started else 0.0) for i in waiting]
        return eta_text(eta_seconds(finished, left, jobs)) if left else ""

    def one(k: int, spec: RunSpec) -> None:
        tag = f"[{k}/{len(runs)}] {spec.name}"
        done = read_results(spec.dir)
        if done is not None and done.get("finished"):
            with lock:
                waiting.discard(k - 1)
                if isinstance(done.get("wall_s"), (int, float)):
                    finished.append(((spec.stem, spec.variant), float(done["wall_s"])))
                echo(f"{tag}: finished before, skipped | {headline(done)}")
            return
        spec.dir.mkdir(parents=True, exist_ok=True)
        write_json(spec.dir / "config.json", spec.config)
        going_on = resume and (done is not None or (spec.dir / "checkpoint.pt").exists())
        with lock:
            echo(f"{tag}: {'resumed' if going_on else 'started'}")
            start = started[k - 1] = time.perf_counter()
        rc = runner(spec, resume)
        results = read_results(spec.dir)
        with lock:
            seconds = time.perf_counter() - start
            waiting.discard(k - 1)
            started.pop(k - 1, None)
            if rc == 0 and results is not None and results.get("finished"):
                finished.append(((spec.stem, spec.variant), seconds))
                echo(f"{tag}: done in {seconds:.0f} s | {headline(results)}{time_left()}")
            else:
                failed.append(spec)
                echo(f"{tag}: FAILED (exit {rc}): {_failure_line(spec.dir)} (see {spec.dir / 'console.log'})"
                     f"{time_left()}")

    if jobs <= 1:
        for k, spec in enumerate(runs, 1):
            one(k, spec)
        return failed
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        pending = {pool.submit(one, k, spec) for k, spec in enumerate(runs, 1)}
        while pending:  # wake every 0.2 s: a Ctrl-C that the kernel handed to a worker thread still lands here
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()
    except BaseException:  # Ctrl-C / SIGTERM reach this thread only: cancel the queue, stop the runs in flight
        pool.shutdown(wait=False, cancel_futures=True)
        stop_live_runs()
        raise
    pool.shutdown()
    order = {id(spec): k for k, spec in enumerate(runs)}
    return sorted(failed, key=lambda spec: order[id(spec)])


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
    from .report import build_report

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
