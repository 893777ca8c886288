"""Benchmark CIM against the baseline: run each config with "cim" off and on for the same seeds,
then write summary.md / summary.csv and the figures (curves.png, memory.png, exemplars.png).

Folder layout of a benchmark DIR::

    DIR/benchmark.json                         manifest: configs (without "cim"/"seed"), seeds, variants
    DIR/<config stem>/<variant>/seed_<s>/      one run: config.json, console.log and the runner's files
                                               (results.json, predictions.npz, checkpoint.pt, exemplars.pt, memory.pt)
    DIR/summary.md, summary.csv, curves.png, memory.png, exemplars.png

Variants: "baseline" ("cim" false) and "cim" ("cim" true), or one "cim-<mode>" per mask mode when
the config sets "cim_mask" or the command passes mask modes. Each run is a subprocess of
``exps/run.py`` so that a crash of one run neither stops the benchmark nor keeps its memory.

Object sizes (where the dataset knows its boxes): an image's object size is its true box area /
image area, a class's size that of its median training image; small / medium / large are the
terciles of the class sizes (the paper gives no numeric split).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import CIM_MASK_MODES, ConfigError, load_config
from .io import atomic_write_text, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_SCRIPT = REPO_ROOT / "exps" / "run.py"
DEFAULT_SEEDS = (1993, 1994, 1995)
MANIFEST = "benchmark.json"
MANIFEST_SCHEMA = "cim-plugin/benchmark/1"
BASELINE = "baseline"
REPORT_FILES = ("summary.md", "summary.csv", "curves.png", "memory.png", "exemplars.png")
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


def variants_for(config: Dict[str, Any], mask_modes: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Variant name -> the keys it sets: baseline, then "cim" or one "cim-<mode>" per mask mode.

    ``mask_modes`` (from the command) wins over the config's "cim_mask"; without either the
    single CIM variant "cim" uses the default mask mode.
    """
    out: Dict[str, Dict[str, Any]] = {BASELINE: {"cim": False}}
    if mask_modes:
        modes = list(dict.fromkeys(mask_modes))
    elif "cim_mask" in config:
        modes = [config["cim_mask"]]
    else:
        out["cim"] = {"cim": True}
        return out
    for mode in modes:
        if mode not in CIM_MASK_MODES:
            raise ConfigError(f"unknown mask mode {mode!r}; valid modes: {list(CIM_MASK_MODES)}")
        out[f"cim-{mode}"] = {"cim": True, "cim_mask": mode}
    return out


def load_benchmark_configs(paths: Sequence[str | Path], seeds: Sequence[int],
                           warn: Callable[[str], None]) -> Dict[str, Dict[str, Any]]:
    """Read the configs: config stem -> {"path", "config"} with "cim" and "seed" removed.

    A config that sets "cim" is warned about (the benchmark owns that key); one that sets other
    seeds than ``seeds`` gets a note. Unknown learners raise ConfigError listing the valid ones.
    """
    from .pycil import learner_class

    out: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        path = Path(path)
        config = load_config(path)
        if not isinstance(config.get("model_name"), str):
            raise ConfigError(f'{path}: "model_name" must name a PyCIL learner (e.g. "icarl", "der", "foster")')
        try:
            learner_class(config["model_name"])
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


def validate_runs(configs: Dict[str, Dict[str, Any]], mask_modes: Optional[Sequence[str]]) -> None:
    """Check each config as the runner would (keys, devices, CIM support) before any run starts.

    One check per config, with its first CIM variant's keys (the variants differ only in "cim" and
    "cim_mask", which :func:`variants_for` has checked), so key warnings are printed once.
    """
    from .adapter import cim_learner_class
    from .pycil import learner_class
    from .runner import prepare

    for entry in configs.values():
        variants = variants_for(entry["config"], mask_modes)
        overrides = next(v for name, v in variants.items() if name != BASELINE)
        config = dict(entry["config"], **overrides, seed=[DEFAULT_SEEDS[0]])
        try:
            args = prepare(config)
            cim_learner_class(learner_class(args["model_name"]), args)
        except ConfigError as err:
            raise ConfigError(f"{entry['path']}: {err}") from None


def plan_runs(configs: Dict[str, Dict[str, Any]], seeds: Sequence[int], out_dir: Path,
              mask_modes: Optional[Sequence[str]] = None) -> List[RunSpec]:
    """All runs, seed-major (every variant of seed 1 before seed 2), so early seeds give a first table."""
    runs = []
    for seed in seeds:
        for stem, entry in configs.items():
            for variant, overrides in variants_for(entry["config"], mask_modes).items():
                config = dict(entry["config"], **overrides)
                config["seed"] = [int(seed)]
                runs.append(RunSpec(stem, variant, int(seed), config, out_dir / stem / variant / f"seed_{seed}"))
    return runs


# ------------------------------------------------------------------------------------- manifest
def make_manifest(configs: Dict[str, Dict[str, Any]], seeds: Sequence[int],
                  mask_modes: Optional[Sequence[str]]) -> Dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA,
        "configs": configs,
        "seeds": [int(s) for s in seeds],
        "variants": {stem: list(variants_for(e["config"], mask_modes)) for stem, e in configs.items()},
        "mask_modes": list(mask_modes) if mask_modes else None,
    }


def read_manifest(out_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); remove it or choose another --out folder") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"{path} is not a cim-plugin benchmark manifest; choose another --out folder")
    return manifest


def manifest_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """What differs between two manifests, one phrase each (config keys are named; "device" may
    differ, as for the runner's own resume)."""
    out = []
    old_c, new_c = old.get("configs", {}), new.get("configs", {})
    only_old, only_new = sorted(set(old_c) - set(new_c)), sorted(set(new_c) - set(old_c))
    if only_old:
        out.append(f"configs {only_old} are only in the folder")
    if only_new:
        out.append(f"configs {only_new} are only in this command")
    for stem in [s for s in new_c if s in old_c]:
        a, b = old_c[stem]["config"], new_c[stem]["config"]
        keys = sorted(k for k in (set(a) | set(b)) - {"device"} if a.get(k, "<unset>") != b.get(k, "<unset>"))
        if keys:
            out.append(f"config {stem!r}: keys {keys} differ")
    if list(old.get("seeds", [])) != list(new.get("seeds", [])):
        out.append(f"seeds {old.get('seeds')} in the folder vs {new.get('seeds')} now")
    if old.get("variants") != new.get("variants") and not only_old and not only_new:
        out.append(f"variants {old.get('variants')} in the folder vs {new.get('variants')} now")
    return out


def prepare_out_dir(out_dir: Path, manifest: Dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding another benchmark (unless resume/overwrite); write the manifest.

    resume: the folder's manifest must match (else ConfigError naming the differing keys).
    overwrite: the old benchmark's run folders and report files are deleted first.
    A non-empty folder without a manifest is never touched.
    """
    out_dir = Path(out_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pass one")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder")
    old = read_manifest(out_dir) if out_dir.exists() else None
    if old is None and out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty and holds no benchmark ({MANIFEST} is missing); "
                          f"choose another --out folder")
    if old is not None:
        if resume:
            diffs = manifest_differences(old, manifest)
            if diffs:
                raise ConfigError(f"{out_dir} holds a benchmark of a different setup: {'; '.join(diffs)}. "
                                  f"Resume with the same configs and --seeds, or choose another --out folder")
        elif overwrite:
            for stem in old.get("configs", {}):
                target = out_dir / stem
                if target.is_dir() and target.resolve().parent == out_dir.resolve():
                    shutil.rmtree(target)
            for name in REPORT_FILES:
                (out_dir / name).unlink(missing_ok=True)
        else:
            stems = sorted(old.get("configs", {}))
            raise ConfigError(f"{out_dir} already holds a benchmark (configs {stems}, seeds {old.get('seeds')}); "
                              f"pass --resume to continue it, --overwrite to replace it, or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / MANIFEST, manifest)


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
    """
    failed: List[RunSpec] = []
    lock = threading.Lock()

    def one(k: int, spec: RunSpec) -> None:
        tag = f"[{k}/{len(runs)}] {spec.name}"
        done = read_results(spec.dir)
        if done is not None and done.get("finished"):
            with lock:
                echo(f"{tag}: finished before, skipped | {headline(done)}")
            return
        spec.dir.mkdir(parents=True, exist_ok=True)
        write_json(spec.dir / "config.json", spec.config)
        going_on = resume and (done is not None or (spec.dir / "checkpoint.pt").exists())
        with lock:
            echo(f"{tag}: {'resumed' if going_on else 'started'}")
        start = time.perf_counter()
        rc = runner(spec, resume)
        results = read_results(spec.dir)
        with lock:
            if rc == 0 and results is not None and results.get("finished"):
                echo(f"{tag}: done in {time.perf_counter() - start:.0f} s | {headline(results)}")
            else:
                failed.append(spec)
                echo(f"{tag}: FAILED (exit {rc}): {_failure_line(spec.dir)} (see {spec.dir / 'console.log'})")

    if jobs <= 1:
        for k, spec in enumerate(runs, 1):
            one(k, spec)
        return failed
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for future in [pool.submit(one, k, spec) for k, spec in enumerate(runs, 1)]:
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
                  validate: bool = True, jobs: int = 1) -> int:
    """The benchmark command. Returns 0 when every run finished, 1 when some failed (the report is
    written from the others). Bad input raises ConfigError (the CLI prints it and exits 2).

    ``runner(spec, resume) -> exit code`` runs one spec (tests pass a fake); ``validate`` checks
    every variant's config with the runner's own validation before the first run; ``jobs`` runs that
    many specs at once (each in its own process).
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
    configs = load_benchmark_configs(config_paths, seeds, warn)
    if validate:
        validate_runs(configs, mask_modes)
    if out_dir is None:
        out_dir = Path("runs") / f"benchmark_{'_'.join(configs)}_{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, make_manifest(configs, seeds, mask_modes), resume, overwrite)
    runs = plan_runs(configs, seeds, out_dir, mask_modes)
    echo(f"benchmark: {len(runs)} runs ({len(configs)} config(s), seeds {seeds}, baseline and CIM variants) "
         f"into {out_dir}")
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


# ---------------------------------------------------------------------------------- statistics
def mean_std(values: Iterable[Optional[float]]) -> Tuple[float, float, int]:
    """(mean, sample std with ddof 1, n) of the non-None values; NaN mean if none, NaN std if n < 2."""
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def fmt(mean: float, std: float = float("nan"), digits: int = 2) -> str:
    """"m ± s" (or "m" with a single seed, "—" when missing)."""
    if mean is None or not math.isfinite(mean):
        return "—"
    if std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def collect_runs(out_dir: Path) -> Dict[Tuple[str, str], Dict[int, Dict[str, Any]]]:
    """(stem, variant) -> seed -> results dict of the finished runs under out_dir (with "_dir")."""
    out: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]] = {}
    for path in sorted(Path(out_dir).glob("*/*/seed_*/results.json")):
        results = read_results(path.parent)
        if results is None or not results.get("finished") or not results.get("phases"):
            continue
        try:
            seed = int(path.parent.name[len("seed_"):])
        except ValueError:
            continue
        results["_dir"] = str(path.parent)
        out.setdefault((path.parent.parent.parent.name, path.parent.parent.name), {})[seed] = results
    return out


def _order(groups, manifest: Optional[Dict[str, Any]]) -> List[Tuple[str, str]]:
    """Manifest order when known; else configs sorted, baseline first."""
    keys = list(groups)
    if manifest:
        ranked = [(s, v) for s, vs in manifest.get("variants", {}).items() for v in vs]
        known = [k for k in ranked if k in groups]
        return known + sorted(k for k in keys if k not in known)
    return sorted(keys, key=lambda k: (k[0], k[1] != BASELINE, k[1]))


def summary_rows(groups: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]],
                 order: Optional[List[Tuple[str, str]]] = None) -> List[Dict[str, Any]]:
    """One row per (config, variant): mean/std over seeds of the headline numbers, and for CIM
    variants the gain over the baseline of the same config (paired by seed) and the time ratio
    (mean wall time of the variant / of the baseline over the paired seeds)."""
    rows = []
    for stem, variant in order or _order(groups, None):
        runs = groups[(stem, variant)]
        seeds = sorted(runs)
        first = runs[seeds[0]]
        last = [runs[s]["phases"][-1] for s in seeds]

        def stat(get):
            return mean_std(get(runs[s]) for s in seeds)

        row: Dict[str, Any] = {
            "config": stem, "learner": first.get("learner"), "dataset": first.get("dataset"), "variant": variant,
            "cim_mask": first["config"].get("cim_mask") if first.get("cim") else None,
            "n_seeds": len(seeds), "seeds": " ".join(map(str, seeds)),
        }
        for key, get in (
            ("aia_cnn", lambda r: r.get("avg_incremental_accuracy_cnn")),
            ("aia_nme", lambda r: r.get("avg_incremental_accuracy_nme")),
            ("last_top1_cnn", lambda r: r.get("last_top1_cnn")),
            ("forgetting_cnn", lambda r: r.get("forgetting_cnn")),
            ("exemplars_per_class", lambda r: (r["phases"][-1].get("exemplars_per_class") or {}).get("mean")),
            ("memory_bytes", lambda r: r["phases"][-1].get("memory_bytes")),
            ("wall_s", lambda r: r.get("wall_s")),
        ):
            row[f"{key}_mean"], row[f"{key}_std"], _ = stat(get)
        row["budget_bytes"] = mean_std(p.get("memory_budget_bytes") for p in last)[0]
        row["memory_use"] = (row["memory_bytes_mean"] / row["budget_bytes"]
                             if row["budget_bytes"] and math.isfinite(row["budget_bytes"]) else float("nan"))
        base = groups.get((stem, BASELINE))
        for key in ("gain_aia_cnn", "gain_last_top1_cnn"):
            row[f"{key}_mean"] = row[f"{key}_std"] = row[f"{key}_se"] = float("nan")
        row["time_ratio"], row["n_paired"] = float("nan"), 0
        if variant != BASELINE and base:
            paired = [s for s in seeds if s in base]
            row["n_paired"] = len(paired)
            for key, field in (("gain_aia_cnn", "avg_incremental_accuracy_cnn"),
                               ("gain_last_top1_cnn", "last_top1_cnn")):
                diffs = [runs[s][field] - base[s][field] for s in paired
                         if runs[s].get(field) is not None and base[s].get(field) is not None]
                row[f"{key}_mean"], row[f"{key}_std"], n = mean_std(diffs)
                row[f"{key}_se"] = row[f"{key}_std"] / math.sqrt(n) if n > 1 else float("nan")
            base_wall = sum(base[s]["wall_s"] for s in paired)
            if paired and base_wall > 0:
                row["time_ratio"] = sum(runs[s]["wall_s"] for s in paired) / base_wall
        rows.append(row)
    return rows


CSV_COLUMNS = ("config", "learner", "dataset", "variant", "cim_mask", "n_seeds", "seeds",
               "aia_cnn_mean", "aia_cnn_std", "aia_nme_mean", "aia_nme_std", "last_top1_cnn_mean",
               "last_top1_cnn_std", "forgetting_cnn_mean", "forgetting_cnn_std", "exemplars_per_class_mean",
               "exemplars_per_class_std", "memory_bytes_mean", "budget_bytes", "memory_use", "wall_s_mean",
               "wall_s_std", "gain_aia_cnn_mean", "gain_aia_cnn_std", "gain_aia_cnn_se", "gain_last_top1_cnn_mean",
               "gain_last_top1_cnn_std", "gain_last_top1_cnn_se", "time_ratio", "n_paired")


def write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    """summary.csv: one row per (config, variant); NaN written as an empty cell."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                             round(v, 6) if isinstance(v, float) else ("" if v is None else v))
                         for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def results_table(rows: List[Dict[str, Any]]) -> List[str]:
    """The combined markdown table of :func:`summary_rows`."""
    head = ("| config | learner | variant | seeds | avg inc acc CNN (%) | avg inc acc NME (%) | last top-1 (%) "
            "| forgetting (%) | exemplars / class | memory held / budget | wall time (s) | gain avg inc acc (pts ± s.e.) "
            "| gain last top-1 (pts ± s.e.) | time ratio |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mem = (f"{human_bytes(r['memory_bytes_mean'])} / {human_bytes(r['budget_bytes'])} "
               f"({100 * r['memory_use']:.0f} %)"
               if math.isfinite(r["memory_use"]) else "—")
        ratio = f"{r['time_ratio']:.2f}" if math.isfinite(r["time_ratio"]) else "—"
        lines.append("| " + " | ".join([
            r["config"], str(r["learner"]), r["variant"], str(r["n_seeds"]),
            fmt(r["aia_cnn_mean"], r["aia_cnn_std"]), fmt(r["aia_nme_mean"], r["aia_nme_std"]),
            fmt(r["last_top1_cnn_mean"], r["last_top1_cnn_std"]),
            fmt(r["forgetting_cnn_mean"], r["forgetting_cnn_std"]),
            fmt(r["exemplars_per_class_mean"], r["exemplars_per_class_std"], 1), mem,
            fmt(r["wall_s_mean"], r["wall_s_std"], 0),
            "" if r["variant"] == BASELINE else _signed(r["gain_aia_cnn_mean"], r["gain_aia_cnn_se"]),
            "" if r["variant"] == BASELINE else _signed(r["gain_last_top1_cnn_mean"], r["gain_last_top1_cnn_se"]),
            "" if r["variant"] == BASELINE else ratio,
        ]) + " |")
    return lines


def _signed(mean: float, std: float) -> str:
    text = fmt(mean, std)
    return text if text == "—" or mean < 0 else "+" + text


# ------------------------------------------------------------------------------ object sizes
@dataclass
class SizeInfo:
    """Object sizes of a dataset's classes: a class's size is the median box-area fraction of its
    training images; ``thresholds`` are the terciles of those class sizes; ``class_group`` maps
    an original label to 0 (small), 1 (medium) or 2 (large)."""

    thresholds: Tuple[float, float]
    class_group: Dict[int, int]
    class_fraction: Dict[int, float]


def _fractions(boxes: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None) / float(size[0] * size[1])


def size_info(idata) -> Optional[SizeInfo]:
    """Object-size groups of a loaded dataset's classes, or None without boxes or a fixed image size."""
    if idata is None or getattr(idata, "train_boxes", None) is None:
        return None
    size = getattr(idata, "image_size", None)
    if size is None:
        return None
    train = _fractions(idata.train_boxes, size)
    targets = np.asarray(idata.train_targets)
    labels = np.unique(targets)
    medians = np.asarray([np.median(train[targets == c]) for c in labels])
    t1, t2 = (float(q) for q in np.quantile(medians, [1 / 3, 2 / 3]))
    groups = np.digitize(medians, [t1, t2], right=False)
    return SizeInfo((t1, t2), {int(c): int(g) for c, g in zip(labels, groups)},
                    {int(c): float(m) for c, m in zip(labels, medians)})


def _dataset_key(config: Dict[str, Any]) -> str:
    from .datasets import DATASETS

    cls = DATASETS.get(str(config.get("dataset", "")).lower())
    keys = ("dataset",) + tuple(getattr(cls, "option_keys", ()))
    return json.dumps({k: config.get(k) for k in keys}, sort_keys=True)


def load_dataset(config: Dict[str, Any]):
    """The run's dataset object with its data read (None for PyCIL's own datasets)."""
    from .datasets import build_idata

    idata = build_idata(config["dataset"], config)
    if idata is not None:
        idata.download_data()
    return idata


def _predictions(run_dir: str) -> Optional[Dict[str, np.ndarray]]:
    path = Path(run_dir) / "predictions.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def size_split(runs: Dict[int, Dict[str, Any]], info: SizeInfo) -> Dict[str, List[Tuple[float, float]]]:
    """Per class size group (small, medium, large): (mean, std) over seeds of exemplars per class
    after the last phase and of last-phase top-1 accuracy (%) on the test images of those classes.
    Runs without predictions.npz (the class order) are left out."""
    exemplars: List[List[float]] = [[], [], []]
    accuracy: List[List[float]] = [[], [], []]
    for res in runs.values():
        pred = _predictions(res["_dir"])
        if pred is None:
            continue
        order = np.asarray(pred["class_order"])
        group_of = np.asarray([info.class_group.get(int(label), -1) for label in order])  # by incremental id
        counts = res["phases"][-1].get("exemplars_per_class_counts")
        if counts is not None:
            counts = np.asarray(counts, float)
            groups = group_of[: len(counts)]
            for g in range(3):
                if (groups == g).any():
                    exemplars[g].append(float(counts[groups == g].mean()))
        y_true = np.asarray(pred["y_true"], dtype=np.int64)
        correct = np.asarray(pred["y_pred"]) == y_true
        test_groups = group_of[y_true]
        for g in range(3):
            if (test_groups == g).any():
                accuracy[g].append(float(100.0 * correct[test_groups == g].mean()))
    return {"exemplars": [mean_std(v)[:2] for v in exemplars], "accuracy": [mean_std(v)[:2] for v in accuracy]}


def _load_exemplars(run_dir: str) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / "exemplars.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


#: placements of the same-size random reference box per stored box, and the seed of their generator
REFERENCE_DRAWS = 16
REFERENCE_SEED = 0


class BoxIoU(NamedTuple):
    """Mean over a run's exemplars (a known source image each) of: IoU of the stored box with the true
    object box (``iou``); the same for a box of the same width and height at a random valid place
    (``random_iou``, averaged over :data:`REFERENCE_DRAWS` draws of a generator seeded with
    :data:`REFERENCE_SEED`) and at the image centre (``center_iou``); stored and true box area / image
    area (``box_fraction``, ``true_fraction``)."""

    iou: float
    random_iou: float
    center_iou: float
    box_fraction: float
    true_fraction: float


def box_ious(stored: torch.Tensor, true: torch.Tensor, size: Tuple[int, int],
             draws: int = REFERENCE_DRAWS, seed: int = REFERENCE_SEED) -> BoxIoU:
    """:class:`BoxIoU` of stored boxes int Tensor(N, 4) vs true boxes int Tensor(N, 4) of (H, W) images."""
    from .boxes import box_iou, same_size_center_boxes, same_size_random_boxes

    H, W = size
    stored, true = stored.long().cpu(), true.long().cpu()
    gen = torch.Generator().manual_seed(seed)
    moved = same_size_random_boxes(stored, H, W, draws=draws, generator=gen)  # (draws, N, 4)
    random_iou = box_iou(moved.reshape(-1, 4), true.repeat(draws, 1)).mean()
    centred = same_size_center_boxes(stored, H, W)
    return BoxIoU(float(box_iou(stored, true).mean()), float(random_iou), float(box_iou(centred, true).mean()),
                  float(_fractions(stored.numpy(), size).mean()), float(_fractions(true.numpy(), size).mean()))


def box_iou_of_run(run_dir: str, idata) -> Optional[BoxIoU]:
    """:class:`BoxIoU` of a run's stored boxes (exemplars.pt) vs the dataset's true boxes; None without
    exemplars.pt, boxes or a known source image."""
    ex = _load_exemplars(run_dir)
    if ex is None or ex.get("boxes") is None or getattr(idata, "train_boxes", None) is None:
        return None
    src = torch.as_tensor(ex["source_index"]).long()
    keep = src >= 0
    if not bool(keep.any()):
        return None
    stored = torch.as_tensor(ex["boxes"]).long()[keep]
    true = torch.as_tensor(np.asarray(idata.train_boxes)[src[keep].numpy()]).long()
    return box_ious(stored, true, tuple(idata.image_size))


def old_new_rows(groups, order) -> List[Dict[str, Any]]:
    """Per (config, variant) and phase: mean over seeds of top-1 on the old classes (mean over earlier
    tasks of the accuracy matrix) and on the new ones (this phase's task), exemplars per class and, for CIM,
    the stored boxes' mean area fraction. Phases without an accuracy matrix are left out."""
    rows = []
    for stem, variant in order:
        runs = groups[(stem, variant)]
        n_phases = min(len(r.get("phases") or []) for r in runs.values())
        for p in range(n_phases):
            old, new, per_class, box = [], [], [], []
            for r in runs.values():
                matrix = r.get("accuracy_matrix_cnn") or []
                if p < len(matrix) and matrix[p][p] is not None:
                    new.append(matrix[p][p])
                    if p > 0:
                        old.append(float(np.mean([v for v in matrix[p][:p] if v is not None])))
                phase = r["phases"][p]
                per_class.append((phase.get("exemplars_per_class") or {}).get("mean"))
                box.append(phase.get("mean_box_fraction"))
            rows.append({"config": stem, "variant": variant, "phase": p, "old": mean_std(old)[:2],
                         "new": mean_std(new)[:2], "exemplars_per_class": mean_std(per_class)[:2],
                         "box_fraction": mean_std(box)[:2]})
    return rows


def old_new_section(groups, order) -> List[str]:
    """Markdown: accuracy on old vs new classes per phase, with exemplars per class and box area."""
    rows = old_new_rows(groups, order)
    if not rows:
        return []
    lines = ["", "## Old and new classes per phase (mean ± std over seeds)", "",
             "| config | variant | phase | top-1 old classes (%) | top-1 new classes (%) | exemplars / class "
             "| stored box area fraction |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["config"], r["variant"], str(r["phase"]), fmt(*r["old"]) if r["phase"] > 0 else "—", fmt(*r["new"]),
            fmt(*r["exemplars_per_class"], 1), fmt(*r["box_fraction"], 3)]) + " |")
    lines += ["", "Old = mean top-1 over the tasks of earlier phases (accuracy matrix row of this phase); new = "
              "top-1 on this phase's task. Box area fraction = mean stored box area / image area (CIM only)."]
    return lines


def object_size_section(groups, order, datasets: Dict[str, Any]) -> List[str]:
    """Markdown of the object-size tables and the box IoU table (configs whose dataset has boxes)."""
    lines: List[str] = []
    size_rows, iou_rows = [], []
    for stem, variant in order:
        runs = groups[(stem, variant)]
        config = next(iter(runs.values()))["config"]
        idata, info = datasets.get(_dataset_key(config), (None, None))
        if info is None:
            continue
        split = size_split(runs, info)
        size_rows.append((stem, variant, split, info))
        if variant != BASELINE and idata is not None:
            ious = [box_iou_of_run(r["_dir"], idata) for r in runs.values()]
            ious = [x for x in ious if x is not None]
            if ious:
                stats = [mean_std(column)[:2] for column in zip(*ious)]
                iou_rows.append((stem, variant, config.get("cim_mask"), stats, len(ious)))
    if not size_rows:
        return lines
    lines += ["", "## By object size", "",
              "Object size = true box area / image area; a class's size is that of its median training image, "
              "and classes are split at the terciles of the class sizes (the paper gives no numeric split). "
              "Accuracy is top-1 after the last phase on the test images of each group's classes."]
    seen = set()
    for stem, variant, _, info in size_rows:
        if id(info) in seen:
            continue
        seen.add(id(info))
        (t1, t2), counts = info.thresholds, np.bincount(list(info.class_group.values()), minlength=3)
        dataset = next(iter(groups[(stem, variant)].values()))["dataset"]
        lines.append(f"- {dataset} ({stem}): small < {t1:.3f} ≤ medium < {t2:.3f} ≤ large; {counts[0]} small, "
                     f"{counts[1]} medium, {counts[2]} large classes.")
    lines += ["",
              "| config | variant | exemplars/class small | exemplars/class medium | exemplars/class large "
              "| last top-1 small (%) | last top-1 medium (%) | last top-1 large (%) |",
              "|---|---|---|---|---|---|---|---|"]
    for stem, variant, split, _ in size_rows:
        ex = [fmt(m, s, 1) for m, s in split["exemplars"]]
        acc = [fmt(m, s) for m, s in split["accuracy"]]
        lines.append(f"| {stem} | {variant} | " + " | ".join(ex + acc) + " |")
    if iou_rows:
        lines += ["", "## Mask boxes vs true object boxes", "",
                  "Mean IoU of the stored box of each exemplar with its image's true object box (mean ± std over "
                  "seeds), next to two references computed on the same exemplars: a box of the same width and "
                  f"height at a random valid place (mean of {REFERENCE_DRAWS} draws, generator seed "
                  f"{REFERENCE_SEED}) and at the image centre. Masks find objects when the stored boxes beat "
                  "both. A whole-image box would score the true box's area fraction.", "",
                  "| config | variant | mask mode | mean IoU | same-size random IoU | same-size centred IoU "
                  "| stored box area fraction | true box area fraction | seeds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for stem, variant, mode, stats, n in iou_rows:
            lines.append(f"| {stem} | {variant} | {mode} | " + " | ".join(fmt(m, s, 3) for m, s in stats) + f" | {n} |")
    return lines


# ----------------------------------------------------------------------------------- figures
def curve_panels(groups, order) -> List[Dict[str, Any]]:
    panels: Dict[str, Dict[str, Any]] = {}
    for stem, variant in order:
        runs = groups[(stem, variant)]
        first = next(iter(runs.values()))
        n = min(len(r["phases"]) for r in runs.values())
        x = [p["classes"] for p in first["phases"][:n]]
        acc = np.asarray([[p["top1_cnn"] for p in r["phases"][:n]] for r in runs.values()], float)
        std = acc.std(axis=0, ddof=1) if len(acc) > 1 else np.full(n, np.nan)
        panel = panels.setdefault(stem, {"title": f"{first.get('learner')} ({stem}, {first.get('dataset')})",
                                         "lines": []})
        panel["lines"].append({"label": variant, "x": x, "mean": acc.mean(axis=0), "std": std})
    return list(panels.values())


def memory_panels(groups, order, datasets) -> List[Dict[str, Any]]:
    """Exemplars per class by original label (sorted by object size when known), mean over seeds."""
    panels: Dict[str, Dict[str, Any]] = {}
    for stem, variant in order:
        runs = groups[(stem, variant)]
        first = next(iter(runs.values()))
        per_seed, by_label = [], True
        for res in runs.values():
            counts = res["phases"][-1].get("exemplars_per_class_counts")
            if counts is None:
                continue
            pred = _predictions(res["_dir"])
            if pred is None:
                by_label = False
                per_seed.append(np.asarray(counts, float))
                continue
            order_ = np.asarray(pred["class_order"])[: len(counts)]
            row = np.full(int(order_.max()) + 1, np.nan)
            row[order_] = counts
            per_seed.append(row)
        if not per_seed:
            continue
        width = max(len(r) for r in per_seed)
        table = np.full((len(per_seed), width), np.nan)
        for i, r in enumerate(per_seed):
            table[i, : len(r)] = r
        mean = np.nanmean(table, axis=0)
        std = np.nanstd(table, axis=0, ddof=1) if len(per_seed) > 1 else np.full(width, np.nan)
        panel = panels.setdefault(stem, {"title": f"{first.get('learner')} ({stem})", "bars": [],
                                         "by_label": by_label, "config": first["config"]})
        panel["by_label"] = panel["by_label"] and by_label
        panel["bars"].append({"label": variant, "mean": mean, "std": std})
    out = []
    for panel in panels.values():
        width = max(len(b["mean"]) for b in panel["bars"])
        for b in panel["bars"]:
            b["mean"], b["std"] = (np.pad(b[k], (0, width - len(b[k])), constant_values=np.nan)
                                   for k in ("mean", "std"))
        _, info = datasets.get(_dataset_key(panel["config"]), (None, None))
        if panel["by_label"] and info is not None:
            perm = np.argsort([info.class_fraction.get(c, np.inf) for c in range(width)], kind="stable")
            for b in panel["bars"]:
                b["mean"], b["std"] = b["mean"][perm], b["std"][perm]
            panel["xlabel"] = "class (original label), sorted by object size: small → large"
            panel["ticklabels"] = [str(int(c)) for c in perm]
        else:
            panel["xlabel"] = "class (original label)" if panel["by_label"] else "class (incremental id)"
        out.append({k: v for k, v in panel.items() if k not in ("config", "by_label")})
    return out


def _original_image(idata, index: int) -> Optional[np.ndarray]:
    if idata is None or index < 0:
        return None
    item = idata.train_data[index]
    if isinstance(item, (str, bytes, os.PathLike)) or (isinstance(item, np.ndarray) and item.dtype.kind in "SU"):
        from PIL import Image

        with Image.open(str(item)) as im:
            item = np.asarray(im.convert("RGB"))
    arr = np.asarray(item, dtype=np.uint8)
    return np.ascontiguousarray(np.transpose(arr, (2, 0, 1)))


def class_names_of(idata) -> Optional[List[str]]:
    """The dataset's ``class_names`` list (see :mod:`cim_plugin.datasets.base`), or None when unknown."""
    names = getattr(idata, "class_names", None) if idata is not None else None
    if names is None:
        return None
    if callable(names) or isinstance(names, (str, bytes)):
        raise TypeError(f"{type(idata).__name__}.class_names must be a list of names (attribute or property), "
                        f"got {type(names).__name__}")
    return [str(n) for n in names]


def exemplar_columns(run_dir: str, idata, n_classes: int = 6) -> Tuple[List[Dict[str, Any]], str]:
    """Columns for :func:`cim_plugin.plots.plot_exemplars` from one CIM run: one exemplar (with a
    CAM when one is stored) for each of up to ``n_classes`` classes spread over the classes held."""
    import torch.nn.functional as F

    from .memory import CompressedMemory

    ex = _load_exemplars(run_dir)
    if ex is None or len(ex["labels"]) == 0:
        return [], ""
    memory_path = Path(run_dir) / "memory.pt"
    memory = CompressedMemory.load(memory_path) if memory_path.is_file() else None
    labels = torch.as_tensor(ex["labels"]).long()
    classes = torch.unique(labels)
    spread = np.unique(np.linspace(0, len(classes) - 1, min(n_classes, len(classes))).round().astype(np.int64))
    pick = classes[torch.from_numpy(spread)]
    cam_pos = {int(p): k for k, p in enumerate(torch.as_tensor(ex.get("cam_index", [])).long().tolist())}
    pred = _predictions(run_dir)
    names = class_names_of(idata)
    columns = []
    for c in pick.tolist():
        positions = (labels == c).nonzero().squeeze(1).tolist()
        with_cam = [p for p in positions if p in cam_pos]
        i = (with_cam or positions)[0]
        src = int(ex["source_index"][i])
        original = _original_image(idata, src)
        decoded = memory.decode_one(i).numpy() if memory is not None else None
        cam = None
        if ex.get("cams") is not None and i in cam_pos:
            cam = ex["cams"][cam_pos[i]].float()
            shape = (original if original is not None else decoded)
            if shape is not None and tuple(cam.shape) != tuple(shape.shape[1:]):
                cam = F.interpolate(cam[None, None], size=shape.shape[1:], mode="bilinear", align_corners=False)[0, 0]
            cam = cam.numpy()
        label = int(pred["class_order"][c]) if pred is not None else c
        name = names[label] if names is not None and label < len(names) else f"class {label}"
        true_box = None
        if idata is not None and getattr(idata, "train_boxes", None) is not None and src >= 0:
            true_box = np.asarray(idata.train_boxes[src])
        columns.append({"title": f"{name}\n{len(positions)} kept", "original": original, "cam": cam,
                        "box": None if ex.get("boxes") is None else ex["boxes"][i].numpy(),
                        "true_box": true_box, "decoded": decoded})
    return columns, f"Stored exemplars ({Path(run_dir).parent.parent.name}, {Path(run_dir).parent.name}, " \
                    f"{Path(run_dir).name})"


# ------------------------------------------------------------------------------------ report
def build_report(out_dir: Path, dataset_loader: Callable[[Dict[str, Any]], Any] = load_dataset) -> Dict[str, Path]:
    """(Re)build summary.md, summary.csv and the figures from the finished runs under out_dir.

    Returns name -> path of the files written. ``dataset_loader(config)`` loads a run's dataset
    (for object sizes, box IoU and the original images); a failure there only drops those parts.
    """
    from . import plots

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    groups = collect_runs(out_dir)
    written: Dict[str, Path] = {}
    lines = ["# CIM benchmark: plug-in vs baseline", ""]
    if manifest:
        paths = ", ".join(f"`{e['path']}`" for e in manifest["configs"].values())
        lines.append(f"Configs {paths}; seeds {manifest['seeds']}.")
    if not groups:
        lines += ["", "No finished run yet."]
        atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
        write_csv(out_dir / "summary.csv", [])
        return {"summary.md": out_dir / "summary.md", "summary.csv": out_dir / "summary.csv"}
    order = _order(groups, manifest)
    rows = summary_rows(groups, order)
    write_csv(out_dir / "summary.csv", rows)
    written["summary.csv"] = out_dir / "summary.csv"

    datasets: Dict[str, Tuple[Any, Optional[SizeInfo]]] = {}
    notes = []
    for runs in groups.values():
        config = next(iter(runs.values()))["config"]
        key = _dataset_key(config)
        if key in datasets:
            continue
        try:
            idata = dataset_loader(config)
            datasets[key] = (idata, size_info(idata))
        except Exception as err:  # the tables and curves do not need the data
            datasets[key] = (None, None)
            notes.append(f"dataset {config.get('dataset')!r} could not be loaded ({type(err).__name__}: {err}); "
                         f"object-size tables, box IoU and original images are left out")

    lines += ["", "## Results (mean ± std over seeds)", ""] + results_table(rows) + [
        "", "Average incremental accuracy = mean top-1 over phases. std = sample std over seeds (none with one "
        "seed). Gains are CIM minus baseline of the same config, paired by seed, shown as mean ± standard error "
        "(s.e. = sample std of the paired differences / √seeds; summary.csv also has their std); a gain is "
        "resolved from noise when gain − 1 s.e. > 0. Time ratio = total wall time "
        "of the variant / of the baseline over the same seeds. Memory is the bytes held after the last phase."]
    lines += old_new_section(groups, order)
    lines += object_size_section(groups, order, datasets)

    panels = curve_panels(groups, order)
    written["curves.png"] = plots.plot_curves(panels, out_dir / "curves.png")
    mem_panels = memory_panels(groups, order, datasets)
    if mem_panels:
        written["memory.png"] = plots.plot_memory(mem_panels, out_dir / "memory.png")
    figures = ["", "## Figures", "", "![accuracy per phase](curves.png)"]
    if "memory.png" in written:
        figures.append("![exemplars per class](memory.png)")
    for stem, variant in order:
        if variant == BASELINE:
            continue
        runs = groups[(stem, variant)]
        run = runs[min(runs)]
        idata = datasets.get(_dataset_key(run["config"]), (None, None))[0]
        columns, title = exemplar_columns(run["_dir"], idata)
        if columns:
            written["exemplars.png"] = plots.plot_exemplars(columns, out_dir / "exemplars.png", title=title)
            figures.append(f"![stored exemplars: original, CAM, box, decoded](exemplars.png) — {title}")
            break
    lines += figures
    expected = manifest and {(s, v) for s, vs in manifest.get("variants", {}).items() for v in vs}
    if manifest:
        missing = [f"{s}/{v}/seed_{seed}" for s, v in sorted(expected) for seed in manifest["seeds"]
                   if seed not in groups.get((s, v), {})]
        if missing:
            notes.append(f"{len(missing)} run(s) not finished, left out: {', '.join(missing)}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    written["summary.md"] = out_dir / "summary.md"
    return written
