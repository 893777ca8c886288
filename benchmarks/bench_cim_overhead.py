#!/usr/bin/env python
"""Wall-time overhead of CIM (meta steps, mask refreshes, compressed memory) per learner on the CPU.

Runs the same two-phase config with "cim": false and "cim": true (default CIM settings) for each learner
and prints the phase wall times and their ratio. The data mimic CIFAR-100's shape per class (500 training
images of each class, 32x32) on the synthetic dataset; epochs are few so the figure is quick to get.

    python benchmarks/bench_cim_overhead.py [--learners icarl der foster] [--epochs 3] [--size 32]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cim_plugin.runner import run_config  # noqa: E402

FOSTER = {"beta1": 0.96, "beta2": 0.97, "oofc": "ft", "is_teacher_wa": False, "is_student_wa": False,
          "lambda_okd": 1, "wa_value": 1, "init_lr": 0.1, "init_weight_decay": 5e-4, "lr": 0.1,
          "weight_decay": 5e-4, "T": 2}


def config(learner: str, epochs: int, size: int, per_class: int, cim: bool) -> dict:
    cfg = {
        "prefix": "bench", "dataset": "synthetic", "synthetic_image_size": size, "synthetic_num_classes": 20,
        "synthetic_train_per_class": per_class, "synthetic_test_per_class": 20, "memory_size": 200,
        "memory_per_class": 10, "fixed_memory": False, "shuffle": True, "init_cls": 10, "increment": 10,
        "model_name": learner, "convnet_type": "resnet32", "device": ["cpu"], "seed": [1993],
        "batch_size": 128, "num_workers": 0, "cim": cim,
    }
    if learner == "foster":
        cfg.update(FOSTER, init_epochs=epochs, boosting_epochs=epochs, compression_epochs=epochs)
    else:
        cfg.update(init_epoch=epochs, epochs=epochs, init_milestones=[epochs], milestones=[epochs])
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learners", nargs="+", default=["icarl", "der", "foster"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--per-class", type=int, default=500)
    args = p.parse_args()
    rows = []
    for learner in args.learners:
        walls = {}
        for cim in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                (path,) = run_config(config(learner, args.epochs, args.size, args.per_class, cim), Path(tmp) / "run")
                total = time.perf_counter() - start
                phases = [p["wall_s"] for p in json.loads(path.read_text())["phases"]]
            walls[cim] = (phases, total)
        base, cim = walls[False][0], walls[True][0]
        rows.append((learner, base, cim))
    print(f"\nCIM overhead, {args.epochs} epochs per phase, synthetic {args.size}x{args.size}, "
          f"{args.per_class} train images per class, 10 classes per phase, default CIM settings")
    print(f"{'learner':8s} {'phase':>5s} {'baseline s':>11s} {'CIM s':>8s} {'ratio':>6s}")
    for learner, base, cim in rows:
        for i, (b, c) in enumerate(zip(base, cim)):
            print(f"{learner:8s} {i:5d} {b:11.1f} {c:8.1f} {c / b:6.2f}")
        print(f"{learner:8s} {'all':>5s} {sum(base):11.1f} {sum(cim):8.1f} {sum(cim) / sum(base):6.2f}")


if __name__ == "__main__":
    main()
