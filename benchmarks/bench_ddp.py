"""Training throughput of one epoch under torchrun: 1 process vs 2 processes on the CPU, one thread each.

Runs the real command twice on the same config (the synthetic dataset, one phase of ``--classes``
classes, one epoch, iCaRL by default): ``python exps/run.py CONFIG`` (one process, the ordinary path)
and ``python -m torch.distributed.run --nproc_per_node=2 --standalone exps/run.py CONFIG`` (gloo, DDP),
both with OMP_NUM_THREADS=1. The figure is the epoch's training images divided by ``train_s`` of
results.json (seconds inside the learner's ``_train``; iCaRL also evaluates a 1-image-per-class test set
after the first epoch, which is counted). The global batch is ``--batch-size`` in both runs (each of
the 2 processes takes half of it). ``--cim`` adds CIM (its phase-0 work: box refreshes, the memory build
is outside ``_train``).

Run: ``python benchmarks/bench_ddp.py`` (a few minutes on 2 cores). Not a timed test: the figures depend
on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def config(args) -> dict:
    cfg = {
        "prefix": "bench", "dataset": "synthetic", "synthetic_image_size": args.image_size,
        "synthetic_num_classes": args.classes, "synthetic_train_per_class": args.images_per_class,
        "synthetic_test_per_class": 1, "memory_size": 2 * args.classes, "memory_per_class": 2,
        "fixed_memory": False, "shuffle": True, "init_cls": args.classes, "increment": args.classes,
        "model_name": args.learner, "convnet_type": args.convnet, "device": ["cpu"], "seed": [1993],
        "batch_size": args.batch_size, "num_workers": 0,
    }
    if args.learner == "foster":
        cfg.update(init_epochs=1, init_lr=0.1, init_weight_decay=5e-4, boosting_epochs=1, compression_epochs=1,
                   lr=0.1, weight_decay=5e-4, beta1=0.96, beta2=0.97, oofc="ft", is_teacher_wa=False,
                   is_student_wa=False, lambda_okd=1, wa_value=1, T=2)
    else:
        cfg.update(init_epoch=1, init_milestones=[1])
    if args.cim:
        cfg.update(cim=True, cim_mask="cim")
    return cfg


def run(processes: int, cfg_path: Path, out: Path) -> float:
    """Images per second of the epoch with ``processes`` processes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                                           "--standalone"]
    command = [sys.executable, *launcher, str(REPO / "exps" / "run.py"), str(cfg_path), "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    phase = json.loads((out / "results.json").read_text())["phases"][0]
    return phase["train_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--learner", default="icarl", choices=("icarl", "der", "foster", "wa", "replay"))
    p.add_argument("--convnet", default="resnet32")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--images-per-class", type=int, default=200)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cim", action="store_true")
    args = p.parse_args(argv)
    images = args.classes * args.images_per_class
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "bench.json"
        cfg_path.write_text(json.dumps(config(args)))
        seconds = {n: run(n, cfg_path, Path(tmp) / f"p{n}") for n in (1, 2)}
    print(f"{args.learner}{' + CIM' if args.cim else ''}, {args.convnet}, {images} images of "
          f"{args.image_size}x{args.image_size}, global batch {args.batch_size}, one epoch, CPU, 1 thread per process")
    print(f"{'processes':>9} | {'train_s':>8} | {'images/s':>8} | speed-up")
    for n, s in seconds.items():
        print(f"{n:>9} | {s:>8.2f} | {images / s:>8.1f} | {seconds[1] / s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
