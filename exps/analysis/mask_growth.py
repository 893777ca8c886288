"""How does the learned mask's kept fraction move over a run, and what moves it? A diagnostic run.

    OMP_NUM_THREADS=1 .venv/bin/python exps/analysis/mask_growth.py CONFIG.json --seed 1993 --out DIR \
        [--inner-loss host|ce] [--phi-lr follow|constant]

Runs CONFIG with ``"cim": true`` (mask mode "cim") through ``exps/run.py``'s runner and records every meta
step's statistics (phase, epoch, kept fraction ``mask_mean`` = mean(c), outer CE, inner loss, inner step
size, φ's learning rate, φ's gradient norm) to ``DIR/meta_steps.json``; prints the kept fraction per phase
(mean over its meta steps, first and last epoch) beside the stored box area after the phase.

Two switches replace one part of the meta step, to find which part sets the masks' size:

- ``--inner-loss ce``: the inner step trains on plain CE over the network's logits instead of the learner's
  own loss (e.g. FOSTER's logit-adjusted CE + new-extractor CE + KD);
- ``--phi-lr constant``: φ's Adam keeps ``phi_lr`` instead of following the CIL optimiser's schedule
  (FOSTER anneals with a cosine, iCaRL and DER drop 10× at a milestone).

With neither switch the run is the plug-in's own: the same numbers as ``exps/run.py`` with ``"cim": true``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import cim_plugin.method.cim as cim_module  # noqa: E402
from cim_plugin.config import load_config  # noqa: E402
from cim_plugin.pycil.runner import run_config  # noqa: E402


def instrument(records: list, inner_loss: str, phi_lr: str) -> None:
    """Patches CIM (this process only) to log each meta step and apply the chosen replacements."""
    original_step, original_steps = cim_module.meta_step, cim_module.CIM._meta_steps
    where = {}

    def meta_steps(self, network, dataset, lr_now):
        where.update(task=self.task, epoch=self.epoch, cim=self)
        return original_steps(self, network, dataset, lr_now)

    def meta_step(**kw):
        cim = where["cim"]
        if phi_lr == "constant":
            for group in kw["phi_optimizer"].param_groups:
                group["lr"] = cim.config["phi_lr"]
        stats = original_step(**kw)
        records.append({"phase": where["task"], "epoch": where["epoch"],
                        "phi_lr": kw["phi_optimizer"].param_groups[0]["lr"], **stats})
        return stats

    cim_module.meta_step = meta_step
    cim_module.CIM._meta_steps = meta_steps
    if inner_loss == "ce":
        cim_module.CIM._inner_loss = lambda self, out, y, x: F.cross_entropy(self.logits_fn(out), y)


def summary(records: list, results: dict) -> str:
    lines = ["phase | meta steps | kept fraction mean (first epoch, last epoch) | φ lr first..last | "
             "inner lr first..last | stored box area after the phase"]
    for phase in sorted({r["phase"] for r in records}):
        rows = [r for r in records if r["phase"] == phase]
        first, last = min(r["epoch"] for r in rows), max(r["epoch"] for r in rows)
        mean = lambda rs: sum(r["mask_mean"] for r in rs) / len(rs)  # noqa: E731
        area = next((p["mean_box_fraction"] for p in results["phases"] if p["phase"] == phase), float("nan"))
        lines.append(f"{phase} | {len(rows)} | {mean(rows):.3f} ({mean([r for r in rows if r['epoch'] == first]):.3f}, "
                     f"{mean([r for r in rows if r['epoch'] == last]):.3f}) | {rows[0]['phi_lr']:.4g}..{rows[-1]['phi_lr']:.4g}"
                     f" | {rows[0]['inner_lr']:.4g}..{rows[-1]['inner_lr']:.4g} | {area:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--inner-loss", choices=("host", "ce"), default="host")
    p.add_argument("--phi-lr", choices=("follow", "constant"), default="follow")
    args = p.parse_args(argv)
    config = {**load_config(args.config), "cim": True, "cim_mask": "cim", "seed": [args.seed]}
    records: list = []
    instrument(records, args.inner_loss, args.phi_lr)
    run_config(config, out_dir=args.out, config_path=args.config, overwrite=True)
    results = json.loads((args.out / "results.json").read_text())
    (args.out / "meta_steps.json").write_text(json.dumps(
        {"inner_loss": args.inner_loss, "phi_lr": args.phi_lr, "seed": args.seed, "steps": records}, indent=1))
    print(summary(records, results))
    print(f"avg inc acc CNN {results['avg_incremental_accuracy_cnn']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
