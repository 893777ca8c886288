"""Running the planned runs: each one a subprocess of ``exps/run.py`` (:func:`subprocess_runner`), finished
runs skipped on resume, ``jobs`` at a time (:func:`execute_runs`), a line per run with its headline numbers
and the time the benchmark has left."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..io import write_json
from .eta import eta_seconds, eta_text
from .layout import REPO_ROOT, RUN_SCRIPT, read_results
from .plan import RunSpec
from .stats import fmt, human_bytes

__all__ = ["subprocess_runner", "stop_live_runs", "headline", "execute_runs"]


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
