"""The GPU check (run through ``benchmarks/gpu_check.sh``): every CUDA path of the plug-in once, one line each.

Checks, each a subprocess of the real commands, printed as ``ok|FAIL  <seconds>  <name>  <detail>``:

- the CUDA-only tests (and the device hazard tests) of the test suite;
- tiny end-to-end runs of iCaRL, DER and FOSTER on ``cuda``: baseline, CIM with the raw codec, CIM with JPEG;
- DataParallel over every GPU present (skipped with one GPU: PyCIL wraps only for several devices);
- torchrun with nccl, one process per GPU present (one is enough to exercise nccl);
- a CIM (JPEG) run stopped after phase 0 and resumed on the GPU (its numbers against the uninterrupted run's;
  on CUDA they may differ in the last digits: bilinear ``interpolate``'s backward is non-deterministic there);
- throughput: training images per second of one epoch, and meta-step images per second of one round.

Output folders go under ``$GPU_CHECK_OUT`` (default a temporary folder); the exit status is the number of failed
checks (0: all passed). Without CUDA it prints one line and exits 2 (the shell script checks that first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = dict(os.environ, PYTHONHASHSEED="0")
ENV.pop("WORLD_SIZE", None)
FOSTER_KEYS = {"beta1": 0.96, "beta2": 0.97, "oofc": "ft", "is_teacher_wa": False, "is_student_wa": False,
               "lambda_okd": 1, "wa_value": 1, "init_epochs": 1, "init_lr": 0.1, "init_weight_decay": 5e-4,
               "boosting_epochs": 1, "compression_epochs": 1, "lr": 0.1, "weight_decay": 5e-4, "T": 2}
CUDA_TESTS = ["tests/test_gpu_hazards.py", "tests/test_jpeg.py", "tests/test_codec.py", "tests/test_pau.py",
              "tests/test_config.py"]


def tiny(learner: str = "icarl", devices=("0",), **overrides) -> dict:
    """3 phases of 5 synthetic classes at 32 px, one epoch each: seconds on a GPU."""
    config = {"prefix": "gpu_check", "dataset": "synthetic", "synthetic_image_size": 32,
              "synthetic_num_classes": 15, "synthetic_train_per_class": 16, "synthetic_test_per_class": 8,
              "memory_size": 30, "memory_per_class": 2, "fixed_memory": False, "shuffle": True, "init_cls": 5,
              "increment": 5, "model_name": learner, "convnet_type": "resnet32", "device": list(devices),
              "seed": [1993], "init_epoch": 1, "epochs": 1, "init_milestones": [1], "milestones": [1],
              "batch_size": 16, "num_workers": 2}
    if learner == "foster":
        config.update(FOSTER_KEYS)
        for key in ("init_epoch", "epochs", "init_milestones", "milestones"):
            config.pop(key)
    config.update(overrides)
    return config


CIM_RAW = {"cim": True, "cim_mask": "cim", "cam_update_interval": 1}
CIM_JPEG = {**CIM_RAW, "exemplar_codec": "jpeg", "jpeg_quality": 75}


class Checks:
    def __init__(self, work: Path):
        self.work, self.failed, self.count = work, 0, 0

    def run(self, name: str, fn: Callable[[Path], Optional[str]]) -> None:
        """Run one check in its own folder; print its line (the failure's last output lines in <folder>/log)."""
        folder = self.work / name.replace(" ", "_").replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            detail, ok = fn(folder) or "", True
        except Exception as err:  # noqa: BLE001 - a failed check is reported, the others still run
            detail, ok = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}", False
        self.count += 1
        self.failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'}  {time.perf_counter() - start:6.1f} s  {name}  {detail}", flush=True)


def _sh(command: List[str], folder: Path, timeout: int = 300, env: Optional[dict] = None) -> str:
    """Run a command in the repository; RuntimeError naming its log when it fails."""
    log = folder / "log"
    with open(log, "a") as handle:
        proc = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
                              env=env or ENV, text=True)
    if proc.returncode:
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"exit {proc.returncode} ({log}): {tail[0][:200]}")
    return log.read_text()


def _run(config: dict, folder: Path, extra: Tuple[str, ...] = ()) -> dict:
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    _sh([PY, "exps/run.py", str(path), "--out", str(folder / "out"), *extra], folder)
    return json.loads((folder / "out" / "results.json").read_text())


def _where(results: dict) -> str:
    p = results.get("processes", {})
    return (f"avg acc {results['avg_incremental_accuracy_cnn']:.1f}, world {p.get('world_size')}, "
            f"backend {p.get('backend')}, devices {p.get('devices')}, gpus {results['platform'].get('gpus')}")


def cuda_tests(folder: Path) -> str:
    text = _sh([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "device or cuda or gpu or worker or tf32",
                *CUDA_TESTS], folder, timeout=400)
    return text.strip().splitlines()[-1]


def end_to_end(learner: str, cim: dict) -> Callable[[Path], str]:
    def check(folder: Path) -> str:
        results = _run(tiny(learner, **cim), folder)
        if not results["finished"] or not results["device"][0].startswith("cuda"):
            raise RuntimeError(f"unfinished or not on a GPU: {results['device']}")
        decoder = results["phases"][-1].get("jpeg_decoder")
        return _where(results) + (f", jpeg decoder {decoder}" if decoder else "")
    return check


def data_parallel(gpus: int) -> Callable[[Path], str]:
    def check(folder: Path) -> str:
        if gpus < 2:
            return "skipped: one GPU (PyCIL's DataParallel wraps only for several devices)"
        results = _run(tiny("der", devices=[str(i) for i in range(gpus)], **CIM_RAW), folder)
        return _where(results)
    return check


def torchrun(gpus: int) -> Callable[[Path], str]:
    def check(folder: Path) -> str:
        path = folder / "config.json"
        path.write_text(json.dumps(tiny("icarl", batch_size=16 * gpus, **CIM_RAW)))
        _sh([PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "exps/run.py",
             str(path), "--out", str(folder / "out")], folder, env={**ENV, "TMPDIR": str(folder)})
        results = json.loads((folder / "out" / "results.json").read_text())
        if results["processes"]["backend"] != "nccl" or results["processes"]["world_size"] != gpus:
            raise RuntimeError(f"expected {gpus} nccl process(es), results.json says {results['processes']}")
        return _where(results)
    return check


def resume(folder: Path) -> str:
    """Phase 0 in a process that stops after it (the checkpoint is written), then ``--resume`` on the CLI."""
    config = tiny("icarl", **CIM_JPEG)
    full = _run(config, folder / "full")
    stopped = folder / "stopped"
    stopped.mkdir()
    (stopped / "config.json").write_text(json.dumps(config))
    script = ("import json, sys; sys.path.insert(0, '.')\n"
              "from pathlib import Path\n"
              "from cim_plugin.pycil.runner import prepare, run_seed\n"
              "class Stop(Exception): pass\n"
              "def stop(*a): raise Stop\n"
              f"config = prepare(json.loads(Path({str(stopped / 'config.json')!r}).read_text()))\n"
              f"try: run_seed(config, 1993, Path({str(stopped / 'out')!r}), on_phase=stop)\n"
              "except Stop: pass\n")
    _sh([PY, "-c", script], stopped)
    _sh([PY, "exps/run.py", str(stopped / "config.json"), "--out", str(stopped / "out"), "--resume"], stopped)
    resumed = json.loads((stopped / "out" / "results.json").read_text())
    if not resumed["finished"]:
        raise RuntimeError("the resumed run did not finish")
    a, b = full["accuracy_matrix_cnn"], resumed["accuracy_matrix_cnn"]
    same = "the uninterrupted run's numbers" if a == b else (
        f"avg acc {resumed['avg_incremental_accuracy_cnn']:.2f} vs {full['avg_incremental_accuracy_cnn']:.2f} "
        "uninterrupted (CUDA's non-deterministic kernels)")
    return f"finished on {resumed['device']}, {same}"


def throughput(folder: Path) -> str:
    """One phase of 10 classes x 200 images at 64 px, resnet18, 2 epochs, CIM on: images/s of the second epoch's
    training (train_s of a 1-epoch and a 2-epoch run, differenced: startup and the memory build cancel) and of
    the meta steps (their images: the inner and the outer batch of each step)."""
    base = dict(synthetic_image_size=64, synthetic_num_classes=10, synthetic_train_per_class=200,
                synthetic_test_per_class=10, init_cls=10, increment=10, convnet_type="resnet18", batch_size=128,
                memory_size=100, **CIM_RAW)
    one = _run(tiny("icarl", init_epoch=1, init_milestones=[1], **base), folder / "one")["phases"][0]
    two = _run(tiny("icarl", init_epoch=2, init_milestones=[2], **base), folder / "two")["phases"][0]
    epoch_s = max(two["train_s"] - one["train_s"], 1e-6)
    meta_s = two["seconds"]["meta_steps"]
    meta_images = two["meta_steps"] * 2 * 16  # meta_batch_size 16, inner + outer batch
    return (f"one epoch {2000 / epoch_s:.0f} images/s (2000 images, {epoch_s:.2f} s); meta steps "
            f"{meta_images / max(meta_s, 1e-6):.0f} images/s ({two['meta_steps']} steps, {meta_s:.2f} s)")


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); run it on a "
              "machine with a GPU", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    work = Path(os.environ.get("GPU_CHECK_OUT") or tempfile.mkdtemp(prefix="gpu_check_"))
    print(f"gpu_check: {gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, output in {work}",
          flush=True)
    checks = Checks(work)
    checks.run("CUDA-only and device tests", cuda_tests)
    for learner in ("icarl", "der", "foster"):
        for label, cim in (("baseline", {}), ("CIM raw", CIM_RAW), ("CIM jpeg", CIM_JPEG)):
            checks.run(f"{learner} {label} on cuda", end_to_end(learner, cim))
    checks.run(f"DataParallel over {gpus} GPU(s)", data_parallel(gpus))
    checks.run(f"torchrun nccl x {gpus}", torchrun(gpus))
    checks.run("resume of a CIM jpeg run on the GPU", resume)
    checks.run("throughput", throughput)
    print(f"gpu_check: {checks.count - checks.failed} of {checks.count} checks passed", flush=True)
    return checks.failed


if __name__ == "__main__":
    sys.exit(main())
