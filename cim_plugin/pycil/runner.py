"""Run a PyCIL config: PyCIL's own phase loop, plus results.json, CPU support and clear errors.

The loop is the one of PyCIL's `trainer._train` (incremental_train -> eval_task -> after_task per
phase, after `_set_random()`), so a config without `"cim": true` gives PyCIL's numbers exactly.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .. import metrics
from ..bench.report import write_run_figures
from ..config import ConfigError
from ..io import write_json
from ..platform_info import numerics_key, platform_info
from . import checkpoint, distributed, summary
from .budget import bytes_per_image, check_budget_fits, memory_budget_bytes, memory_report  # noqa: F401
from .host import import_pycil, learner_class, patched
from .mixin import cim_learner_class
from .preflight import load_dataset, prepare  # noqa: F401 (prepare: the runner's entry for callers and tests)

log = logging.getLogger("cim_plugin")


class _EvalCapture:
    """Records (y_pred, y_true) each time the learner's `_evaluate` runs (instance-level wrap)."""

    def __init__(self, learner):
        self.calls: List[tuple] = []
        original = learner._evaluate

        def evaluate(y_pred, y_true):
            self.calls.append((np.asarray(y_pred)[:, 0], np.asarray(y_true)))
            accy = original(y_pred, y_true)
            # FOSTER's compression stage logs accy["top5"] by name: while fewer than 5 classes are known
            # the learner reports top-k (k = classes, see run_seed), so give that under "top5" too.
            accy.setdefault("top5", accy["top{}".format(learner.topk)])
            return accy

        learner._evaluate = evaluate


class _TrainTimer:
    """Wall seconds spent in the learner's training loops this phase (its epochs; with CIM also the per-epoch
    hook): `_train`, and `_run` where a learner trains there (BiC's two stages); a loop called from inside
    another counts once."""

    LOOPS = ("_train", "_run")

    def __init__(self, learner):
        self.seconds = 0.0
        self._depth = 0
        for name in self.LOOPS:
            original = getattr(learner, name, None)
            if original is not None:
                setattr(learner, name, self._timed(original))

    def _timed(self, original):
        def loop(*args, **kwargs):
            start = time.perf_counter()
            self._depth += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start

        return loop


def _write_warnings(handler: logging.Handler, messages) -> None:
    """The config's warnings (printed once to stderr by prepare) into run.log, through ``handler`` only."""
    for message in messages:
        handler.handle(logging.makeLogRecord({
            "name": "cim_plugin", "levelno": logging.WARNING, "levelname": "WARNING", "filename": "config.py",
            "msg": f"warning: {message}"}))


def _configure_logging(out_dir: Path) -> List[logging.Handler]:
    fmt = logging.Formatter("%(asctime)s [%(filename)s] => %(message)s")
    handlers: List[logging.Handler] = [logging.FileHandler(out_dir / "run.log"), logging.StreamHandler(sys.stdout)]
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    return handlers


def build_learner(args: Dict[str, Any]):
    """The learner for a run: PyCIL's own class, or its CIM-wrapped version with "cim": true."""
    cls = learner_class(args["model_name"])
    if args.get("cim"):
        cls = cim_learner_class(cls, args)
    return cls(args)


def _config_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """Keys whose values differ between two runs' configs (the device and "strict" change no number)."""
    ignore = {"device", "strict"}
    keys = (set(saved) | set(current)) - ignore
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def run_seed(config: Dict[str, Any], seed: int, out_dir: Path, resume: bool = False,
             on_phase: Optional[Callable] = None) -> Path:
    """Run all phases for one seed into `out_dir`; returns the path of its results.json.

    After every phase: results.json, predictions.npz (last phase's test predictions), the memory
    artifacts of CIM runs, and checkpoint.pt (everything needed to go on). With `resume`, a run
    continues after the last finished phase of out_dir/checkpoint.pt with identical numbers.
    """
    ddp = distributed.current()  # one process, or this one's place under torchrun (process 0 writes)
    if ddp.is_writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    handlers = _configure_logging(out_dir) if ddp.is_writer else []
    if handlers:
        _write_warnings(handlers[0], config.get("_warnings", ()))
    trainer = import_pycil()
    try:
        idata = load_dataset(config)
        args = {k: v for k, v in copy.deepcopy(config).items() if not k.startswith("_")}
        args["seed"] = seed
        args["device"] = list(config["_devices"])
        if idata is not None:
            args["_image_size"] = idata.image_size
        with patched(args, idata_hook=(lambda name: idata) if idata is not None else None), \
                ddp.patched(args["model_name"]):
            args.pop("_image_size", None)
            # PyCIL's modules: importable only once import_pycil() (above) put PyCIL on sys.path
            from utils.data_manager import DataManager
            from utils.toolkit import count_parameters  # PyCIL, as above

            trainer._set_random()
            for key, value in args.items():
                logging.info("%s: %s", key, value)
            try:
                data_manager = DataManager(args["dataset"], args["shuffle"], seed, args["init_cls"], args["increment"])
            except (OSError, RuntimeError) as err:  # PyCIL's own datasets download to ./data
                raise ConfigError(
                    f'dataset {args["dataset"]!r} could not be loaded by PyCIL ({err}); offline, put the extracted '
                    f'dataset under a folder and add "data_root": "<folder>" to the config (see README, Datasets)'
                ) from None
            learner = build_learner(args)
            check_budget_fits(config, learner, data_manager)
            topk = learner.topk
            results = _results_skeleton(config, seed, args)
            results["processes"] = ddp.processes(args["device"])  # collective under torchrun
            logging.info("processes: world size %d, backend %s, devices %s", results["processes"]["world_size"],
                         results["processes"]["backend"] or "none (one process)", results["processes"]["devices"])
            rows: List[List[Optional[float]]] = []
            first_task = 0
            ckpt_path = out_dir / checkpoint.CHECKPOINT
            saved = ddp.from_writer(lambda: checkpoint.load(ckpt_path) if ckpt_path.exists() else None) \
                if resume else None
            if saved is not None:
                differing = _config_differences(saved["results"]["config"], results["config"])
                if differing:
                    raise ConfigError(
                        f"{ckpt_path} belongs to a run with a different config (keys {differing} differ); "
                        f"resume with the same config or choose another --out folder"
                    )
                checkpoint.restore_learner(learner, saved["learner"])
                here, processes = results["platform"], results["processes"]
                results, rows = saved["results"], saved["rows"]
                if results.get("processes") != processes:  # resumed with other processes or devices
                    results.setdefault("resumed_processes", []).append(processes)
                if numerics_key(results.get("platform")) != numerics_key(here):  # phases from two platforms
                    results.setdefault("resumed_on", []).append(here)
                first_task = saved["phase"] + 1
                checkpoint.restore_rng(ddp.own_rng(saved))
                logging.info("resuming %s after phase %d", out_dir, saved["phase"])
            ddp.attach(learner, args)
            capture = _EvalCapture(learner)
            timer = _TrainTimer(learner)
            task_ends = list(np.cumsum(data_manager._increments))
            for task in range(first_task, data_manager.nb_tasks):
                logging.info("All params: %s", count_parameters(learner._network))
                logging.info("Trainable params: %s", count_parameters(learner._network, True))
                start = time.perf_counter()
                timer.seconds = 0.0
                # PyCIL's top-5 crashes while fewer than 5 classes are known: report top-k, k = classes
                # (set before training too: FOSTER evaluates inside incremental_train).
                learner.topk = min(topk, int(task_ends[task]))
                learner.incremental_train(data_manager)
                learner.topk = min(topk, learner._total_classes)
                capture.calls.clear()  # only eval_task's (FOSTER also evaluates inside incremental_train)
                cnn_accy, nme_accy = learner.eval_task()
                learner.after_task()
                wall = time.perf_counter() - start
                y_pred, y_true = capture.calls[0]
                rows.append(metrics.task_accuracies(y_pred, y_true, task_ends[: task + 1]))
                phase = _phase_record(task, learner, cnn_accy, nme_accy, wall, config, idata, task_ends[task])
                phase["train_s"] = round(timer.seconds, 3)
                results["phases"].append(phase)
                _summarise(results, rows)
                results["finished"] = task == data_manager.nb_tasks - 1
                rng = ddp.rng_states(checkpoint.rng_state())  # under torchrun, every process's
                if ddp.is_writer:
                    _write_artifacts(out_dir, learner, data_manager, y_pred, y_true)
                    checkpoint.save(ckpt_path, {
                        "phase": task, "learner": checkpoint.learner_state(learner), **rng,
                        "results": results, "rows": rows,
                    })
                    write_json(out_dir / "results.json", results)
                ddp.barrier()
                _log_phase(phase)
                for line in summary.phase_lines(results["phases"]):  # PyCIL's own lines, as its trainer logs them
                    logging.info(line)
                if results["finished"]:
                    for line in summary.final_lines(results):
                        logging.info(line)
                if on_phase is not None:
                    on_phase(learner, data_manager, results)
            if ddp.is_writer and results["finished"]:
                _run_figures(out_dir, results)
    finally:
        root = logging.getLogger()
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
    return out_dir / "results.json"


HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _run_figures(out_dir: Path, results: Dict[str, Any]) -> None:
    """old_new.png and accuracy_matrix.png in the run folder; a log line instead when matplotlib is missing."""
    if not HAVE_MATPLOTLIB:
        logging.getLogger("cim_plugin").info(
            "no figures in %s: matplotlib is not installed (pip install matplotlib, or pip install -e '.[plots]')",
            out_dir)
        return
    for path in write_run_figures(out_dir, results).values():
        logging.info("figure: %s", path)


def _write_artifacts(out_dir: Path, learner, data_manager, y_pred, y_true) -> None:
    """predictions.npz of the phase just evaluated, and the CIM memory files."""
    total = learner._total_classes
    test_index = np.concatenate([np.where(data_manager._test_targets == c)[0] for c in range(total)])
    tmp = out_dir / ".predictions.tmp.npz"
    np.savez(tmp, y_pred=y_pred, y_true=y_true, test_index=test_index,
             class_order=np.asarray(data_manager._class_order))
    tmp.replace(out_dir / "predictions.npz")
    if hasattr(learner, "cim_save_artifacts"):
        learner.cim_save_artifacts(out_dir)


def _public_config(config: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """The config a run of ``seed`` records in results.json (defaults filled, the runner's own "_" keys left out)."""
    public = {k: v for k, v in config.items() if not k.startswith("_")}
    public["seed"] = seed
    return public


def _results_skeleton(config, seed, args) -> Dict[str, Any]:
    return {
        "schema": "cim-plugin/results/1",
        "config": _public_config(config, seed),
        "learner": args["model_name"],
        "dataset": args["dataset"],
        "seed": seed,
        "cim": bool(args.get("cim")),
        "device": [str(d) for d in args["device"]],
        "platform": platform_info(args["device"]),
        "phases": [],
        "finished": False,
    }


def _phase_record(task, learner, cnn_accy, nme_accy, wall, config, idata, total_classes) -> Dict[str, Any]:
    memory = memory_report(learner, config, idata)
    image_bytes = bytes_per_image(learner, idata)
    record = {
        "phase": task,
        "classes": int(total_classes),
        "top1_cnn": float(cnn_accy["top1"]),
        "top5_cnn": float(cnn_accy["top{}".format(learner.topk)]),
        "top1_nme": None if nme_accy is None else float(nme_accy["top1"]),
        "top5_nme": None if nme_accy is None else float(nme_accy["top{}".format(learner.topk)]),
        "grouped_cnn": summary.grouped(cnn_accy),
        "grouped_nme": None if nme_accy is None else summary.grouped(nme_accy),
        "memory_budget_bytes": memory_budget_bytes(config, int(total_classes), image_bytes),
        "image_bytes": image_bytes,
        "wall_s": round(wall, 3),
    }
    record.update(memory)
    report = getattr(learner, "der_p_report", None)
    if report is not None:  # der_p: parameters per extractor before/after pruning, total params, FLOPs
        record["der_p"] = report
    return record


def _summarise(results: Dict[str, Any], rows) -> None:
    phases = results["phases"]
    matrix = metrics.accuracy_matrix(rows)
    results["accuracy_matrix_cnn"] = matrix
    results["avg_incremental_accuracy_cnn"] = metrics.average_incremental_accuracy([p["top1_cnn"] for p in phases])
    nme = [p["top1_nme"] for p in phases]
    results["avg_incremental_accuracy_nme"] = (
        None if any(v is None for v in nme) else metrics.average_incremental_accuracy(nme)
    )
    results["forgetting_cnn"] = metrics.forgetting(matrix)
    results["last_top1_cnn"] = phases[-1]["top1_cnn"]
    results["wall_s"] = round(sum(p["wall_s"] for p in phases), 3)


def _log_phase(phase: Dict[str, Any]) -> None:
    nme = "" if phase["top1_nme"] is None else f" NME {phase['top1_nme']:.2f}"
    per_class = phase.get("exemplars_per_class") or {}
    logging.info(
        "phase %d | %d classes | CNN top1 %.2f%s | %d exemplars (%s per class) | %d / %d bytes | %.1f s",
        phase["phase"],
        phase["classes"],
        phase["top1_cnn"],
        nme,
        phase["exemplars"],
        f"{per_class.get('mean', 0):.1f}" if per_class else "0",
        phase["memory_bytes"],
        phase["memory_budget_bytes"],
        phase["wall_s"],
    )


def default_out_dir(config: Dict[str, Any], config_path: Optional[Path]) -> Path:
    stem = config_path.stem if config_path is not None else config["model_name"]
    return Path("runs") / f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}"


def run_config(config: Dict[str, Any], out_dir: Optional[Path] = None, config_path: Optional[Path] = None,
               resume: bool = False, overwrite: bool = False, strict: bool = False) -> List[Path]:
    """Validate and run a config (all its seeds). One seed: OUT/results.json; several: OUT/seed_S/.

    An output folder that already holds a run is refused unless `resume` (go on from its last
    checkpoint; a finished run of the same config is left as it is) or `overwrite`. `strict`: unknown keys
    and ignored values are an error (see :func:`prepare`).
    """
    config = prepare(config, strict=strict)
    ddp = distributed.current()  # under torchrun, process 0 decides about the output folder for all
    out_dir = Path(out_dir) if out_dir is not None else ddp.from_writer(lambda: default_out_dir(config, config_path))
    seeds = config["seed"]
    paths = []
    for seed in seeds:
        target = out_dir if len(seeds) == 1 else out_dir / f"seed_{seed}"
        public = _public_config(config, seed)
        if ddp.from_writer(lambda: _finished_or_cleared(target, resume, overwrite, public)):
            paths.append(target / "results.json")
            continue
        paths.append(run_seed(config, seed, target, resume=resume))
    return paths


def _finished_or_cleared(target: Path, resume: bool, overwrite: bool, config: Dict[str, Any]) -> bool:
    """True when `target` holds a finished run of `config` to resume (nothing to do); else prepares it:
    ConfigError for a run there without --resume or --overwrite, or for a finished run of another config (the
    differing keys named), and with --overwrite its results and checkpoint removed."""
    existing = target / "results.json"
    if existing.exists() and not (resume or overwrite):
        raise ConfigError(f"{target} already holds a run; pass --resume to continue it, --overwrite to "
                          f"replace it, or choose another --out folder")
    if resume and existing.exists():
        done = json.loads(existing.read_text())
        if done.get("finished"):
            differing = _config_differences(done.get("config", {}), config)
            if differing:
                raise ConfigError(
                    f"{target} holds a finished run of a different config (keys {differing} differ); nothing "
                    f"would be resumed. Resume with the same config, pass --overwrite to rerun it with this one, "
                    f"or choose another --out folder")
            log.info("%s is finished; nothing to resume", target)
            return True
    if overwrite and not resume:
        for name in ("results.json", checkpoint.CHECKPOINT):
            (target / name).unlink(missing_ok=True)
    return False
