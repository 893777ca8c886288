#!/usr/bin/env python
"""Wall-time overhead of CIM (meta steps, box refreshes, compressed memory) per learner, CIFAR-shaped.

For each learner the same two-phase run (10 + 10 classes of 500 training images, 32x32, batch 128,
resnet32, the learner's PyCIL hyper-parameters) is made with "cim": false and with "cim": true at the
default CIM settings. Every phase records where its time went (results.json: `train_s`, and for CIM
`seconds` / `calls` of the meta steps, box refreshes and memory build), and the script prints:

1. the measured phase wall times and their ratio for the short schedule it ran;
2. the per-epoch costs those runs give: a training epoch (baseline / CIM), one epoch's meta steps, one
   box refresh;
3. the projection to the learner's real PyCIL schedule (iCaRL and DER: 200 initial, 170 incremental
   epochs; FOSTER: 200 initial, 170 boosting + 130 compression epochs): meta steps before every epoch but
   the first and once before the memory is built, a box refresh every `cam_update_interval` (40) epochs,
   the memory build and evaluation once; no CIM work in FOSTER's compression epochs (as in the official
   code). The issue's target is on this figure: meta steps + box refreshes <= 25 % of the baseline phase.

The short runs use `cam_update_interval` = 1 (and nothing else changed) so that every epoch after the
first refreshes the boxes and the refresh is measured; compression augmentation is then on from the
second epoch, which the per-epoch training figure includes.

    python benchmarks/bench_cim_overhead.py [--learners icarl der foster] [--epochs 2] [--per-class 500]
        [--json docs/overhead/overhead.json] [--plot docs/overhead/overhead.png]
    python benchmarks/bench_cim_overhead.py --from-json docs/overhead/overhead.json --plot out.png
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cim_plugin.config import CIM_DEFAULTS  # noqa: E402
from cim_plugin.pycil.runner import run_config  # noqa: E402

FOSTER = {"beta1": 0.96, "beta2": 0.97, "oofc": "ft", "is_teacher_wa": False, "is_student_wa": False,
          "lambda_okd": 1, "wa_value": 1, "init_lr": 0.1, "init_weight_decay": 5e-4, "lr": 0.1,
          "weight_decay": 5e-4, "T": 2}

# Epoch loops per phase in PyCIL's own schedules (models/icarl.py, models/der.py, exps/foster.json):
# (initial phase, incremental phase); FOSTER's incremental phase runs boosting then compression epochs.
PYCIL_SCHEDULE = {"icarl": (200, 170), "der": (200, 170), "foster": (200, 170 + 130)}
# Of those, the epochs with CIM's meta steps and refreshes (not FOSTER's compression epochs).
CIM_EPOCHS = {"icarl": (200, 170), "der": (200, 170), "foster": (200, 170)}


def config(learner: str, epochs: int, size: int, per_class: int, cim: bool) -> dict:
    cfg = {
        "prefix": "bench", "dataset": "synthetic", "synthetic_image_size": size, "synthetic_num_classes": 20,
        "synthetic_train_per_class": per_class, "synthetic_test_per_class": 20, "memory_size": 200,
        "memory_per_class": 10, "fixed_memory": False, "shuffle": True, "init_cls": 10, "increment": 10,
        "model_name": learner, "convnet_type": "resnet32", "device": ["cpu"], "seed": [1993],
        "batch_size": 128, "num_workers": 0, "cim": cim,
    }
    if cim:
        cfg["cam_update_interval"] = 1  # measure a refresh in a short run (the projection uses the default)
    if learner == "foster":
        cfg.update(FOSTER, init_epochs=epochs, boosting_epochs=epochs, compression_epochs=epochs)
    else:
        cfg.update(init_epoch=epochs, epochs=epochs, init_milestones=[epochs], milestones=[epochs])
    return cfg


def epoch_loops(learner: str, phase: int, epochs: int) -> int:
    """Epoch loops the short run made in `phase` (FOSTER's incremental phases boost, then compress)."""
    return 2 * epochs if learner == "foster" and phase > 0 else epochs


def project(base: dict, cim: dict, loops: int, target_loops: int, interval: int,
            target_cim_loops: Optional[int] = None) -> dict:
    """Phase costs (s) at `target_loops` epoch loops, `target_cim_loops` of them (default: all) with CIM's
    meta steps and refreshes, from the measured phase records of one short run."""
    hooked = target_loops if target_cim_loops is None else target_cim_loops
    sec, calls = cim["seconds"], cim["calls"]
    meta_call = sec["meta_steps"] / max(1, calls["meta_steps"])
    refresh = sec["box_refresh"] / max(1, calls["box_refresh"])
    meta_in_train = meta_call * max(0, calls["meta_steps"] - 1)  # the last call follows _train
    epoch_base = base["train_s"] / loops
    epoch_cim = (cim["train_s"] - meta_in_train - sec["box_refresh"]) / loops
    other_base = base["wall_s"] - base["train_s"]  # memory build, evaluation
    other_cim = cim["wall_s"] - cim["train_s"] - meta_call  # memory build (CIM's), evaluation
    meta = meta_call * hooked  # before every hooked epoch but the first, and once before the memory build
    refreshes = refresh * ((hooked - 1) // interval)
    base_phase = epoch_base * target_loops + other_base
    cim_phase = epoch_cim * target_loops + meta + refreshes + other_cim
    return {"cim_loops": hooked, "epoch_base": epoch_base, "epoch_cim": epoch_cim, "meta_epoch": meta_call, "refresh": refresh,
            "memory_build": sec["memory_build"], "base_phase": base_phase, "cim_phase": cim_phase,
            "meta_refresh_share": (meta + refreshes) / base_phase}


def phase_parts(row: dict, interval: int) -> tuple:
    """(baseline parts, CIM parts): seconds per segment of one projected phase, from a row of the JSON."""
    target = row["target_loops"]
    hooked = row.get("cim_loops", target)
    base_epochs = row["epoch_base"] * target
    cim_epochs = row["epoch_cim"] * target
    meta = row["meta_epoch"] * hooked
    refreshes = row["refresh"] * ((hooked - 1) // interval)
    base = {"training epochs": base_epochs, "meta steps": 0.0, "box refreshes": 0.0,
            "memory build + evaluation": row["base_phase"] - base_epochs}
    cim = {"training epochs": cim_epochs, "meta steps": meta, "box refreshes": refreshes,
           "memory build + evaluation": row["cim_phase"] - cim_epochs - meta - refreshes}
    return base, cim


def plot(rows: list, path: Path, interval: int) -> Path:
    from cim_plugin.bench.figures import plot_time_breakdown  # matplotlib (the optional "plots" extra): only to draw

    bars = []
    for r in rows:
        base, cim = phase_parts(r, interval)
        name = f"{r['learner']} phase {r['phase']} ({r['target_loops']} ep)"
        bars.append({"label": f"{name} baseline", "parts": base})
        bars.append({"label": f"{name} CIM", "parts": cim,
                     "note": f"meta + refresh {100 * r['meta_refresh_share']:.1f} %, "
                             f"total x{r['cim_phase'] / r['base_phase']:.2f}"})
    return plot_time_breakdown(
        bars, path, title="Where a phase's time goes, projected to PyCIL's schedule (CPU, resnet32, 32x32)",
        note="measured parts from 2-epoch runs (benchmarks/bench_cim_overhead.py); default CIM settings")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learners", nargs="+", default=["icarl", "der", "foster"], choices=sorted(PYCIL_SCHEDULE))
    p.add_argument("--epochs", type=int, default=2, help="epochs per loop of the short runs (>= 2)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--plot", type=Path, help="also draw the projected time breakdown to this PNG")
    p.add_argument("--from-json", type=Path, help="redraw --plot from a JSON written earlier, without running")
    args = p.parse_args()
    interval = int(CIM_DEFAULTS["cam_update_interval"])
    if args.from_json:
        if not args.plot:
            p.error("--from-json only redraws the figure: give --plot PATH")
        print(plot(json.loads(args.from_json.read_text()), args.plot, interval))
        return
    if args.epochs < 2:
        p.error("--epochs must be >= 2: the first epoch has no meta step and no box refresh")
    rows = []
    for learner in args.learners:
        phases = {}
        for cim in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                (path,) = run_config(config(learner, args.epochs, args.size, args.per_class, cim), Path(tmp) / "run")
                print(f"{learner} cim={cim}: {time.perf_counter() - start:.0f} s", flush=True)
                phases[cim] = json.loads(path.read_text())["phases"]
        for i, (b, c) in enumerate(zip(phases[False], phases[True])):
            loops = epoch_loops(learner, i, args.epochs)
            target = PYCIL_SCHEDULE[learner][min(i, 1)]
            rows.append({"learner": learner, "phase": i, "loops": loops, "target_loops": target,
                         "base_wall": b["wall_s"], "cim_wall": c["wall_s"],
                         "base_exemplars": b["exemplars"], "cim_exemplars": c["exemplars"],
                         **project(b, c, loops, target, interval, CIM_EPOCHS[learner][min(i, 1)])})

    print(f"\nCIM overhead on the CPU: synthetic {args.size}x{args.size}, {args.per_class} train images per class, "
          f"10 classes per phase, batch 128, resnet32, default CIM settings")
    print(f"\n1. measured, {args.epochs} epochs per loop (cam_update_interval 1)")
    print(f"{'learner':8s} {'phase':>5s} {'baseline s':>11s} {'CIM s':>8s} {'ratio':>6s} {'exemplars':>10s}")
    for r in rows:
        print(f"{r['learner']:8s} {r['phase']:5d} {r['base_wall']:11.1f} {r['cim_wall']:8.1f} "
              f"{r['cim_wall'] / r['base_wall']:6.2f} {r['base_exemplars']:>4d}->{r['cim_exemplars']:<5d}")
    print("\n2. per-epoch costs (s)")
    print(f"{'learner':8s} {'phase':>5s} {'epoch base':>11s} {'epoch CIM':>10s} {'meta/epoch':>11s} "
          f"{'refresh':>8s} {'mem build':>10s}")
    for r in rows:
        print(f"{r['learner']:8s} {r['phase']:5d} {r['epoch_base']:11.2f} {r['epoch_cim']:10.2f} "
              f"{r['meta_epoch']:11.2f} {r['refresh']:8.2f} {r['memory_build']:10.2f}")
    print(f"\n3. projected to PyCIL's schedule (refresh every {interval} epochs); target: meta + refresh <= 25 %")
    print(f"{'learner':8s} {'phase':>5s} {'epochs':>6s} {'baseline s':>11s} {'CIM s':>9s} {'ratio':>6s} "
          f"{'meta+refresh':>13s}")
    for r in rows:
        print(f"{r['learner']:8s} {r['phase']:5d} {r['target_loops']:6d} {r['base_phase']:11.0f} "
              f"{r['cim_phase']:9.0f} {r['cim_phase'] / r['base_phase']:6.2f} {100 * r['meta_refresh_share']:12.1f}%")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.plot:
        print(plot(rows, args.plot, interval))


if __name__ == "__main__":
    main()
