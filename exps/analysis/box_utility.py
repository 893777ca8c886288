#!/usr/bin/env python
"""Do CIM's boxes keep what the network needs on photos without true boxes? A finished CIM run's final network
classifies its test images compressed as its memory would store them, with the learned box and with boxes of
the same size placed at the centre and at random.

    OMP_NUM_THREADS=2 .venv/bin/python exps/analysis/box_utility.py RUN_DIR [RUN_DIR ...] [--images 1000] \
        [--json out.json]

RUN_DIR is an `exps/run.py` folder of a finished `"cim": true` run (checkpoint.pt, predictions.npz,
results.json) on an in-memory dataset (a folder dataset with "resolution", synthetic, CIFAR). For up to
``--images`` test images of the classes the last phase knows it prints the final network's top-1 on

- `clean`: the images as they are;
- `learned`: compressed with the box of the CIM branch's CAM of the true class at the run's threshold, the
  box the memory stores (inside at full resolution, the rest at 1/r);
- `centre` / `random`: the same box sizes at the image centre / at a uniformly random place (3 draws);
- `none`: the whole image at 1/r (no box);

and the mean box area fraction, and, from the run's stored exemplars (exemplars.pt), their box areas and how far
box centres sit from the image centre (in half-sides: 0 centred, 1 at the edge) next to the same-size random
placement. `learned` above `centre` means the boxes find the discriminative part of a photo; `learned` equal
to `centre` means the box is no better than a fixed central crop of the same size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cim_plugin.datasets import build_idata  # noqa: E402
from cim_plugin.method.codec.raw import compress  # noqa: E402
from cim_plugin.method.masks.boxes import (  # noqa: E402
    box_area_fraction,
    cam_to_boxes,
    same_size_center_boxes,
    same_size_random_boxes,
)
from cim_plugin.method.masks.cam import cam_from_feature_maps  # noqa: E402
from cim_plugin.pycil import checkpoint, import_pycil  # noqa: E402
from cim_plugin.pycil.network import FmapView  # noqa: E402


def centre_offset(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """float (B,): distance of each box centre from the image centre, per axis in half-sides, max over axes."""
    b = boxes.double()
    cx = ((b[:, 0] + b[:, 2]) / 2 - W / 2) / (W / 2)
    cy = ((b[:, 1] + b[:, 3]) / 2 - H / 2) / (H / 2)
    return torch.maximum(cx.abs(), cy.abs())


def load_run(run_dir: Path):
    """(final network, CIM branch, in-memory dataset, class order, config) of a finished CIM run."""
    import_pycil()
    results = json.loads((run_dir / "results.json").read_text())
    if not results.get("cim"):
        raise SystemExit(f"error: {run_dir} is not a CIM run (results.json has cim false)")
    config = results["config"]
    state = checkpoint.load(run_dir / checkpoint.CHECKPOINT)["learner"]
    idata = build_idata(config["dataset"], config)
    if idata is None:
        raise SystemExit(f"error: {run_dir}: dataset {config['dataset']!r} is PyCIL's own; use a plug-in dataset")
    idata.download_data()
    if idata.use_path:
        raise SystemExit(f"error: {run_dir}: the dataset is read from files; rerun with \"resolution\"")
    order = np.asarray(np.load(run_dir / "predictions.npz")["class_order"])
    branch = getattr(state.get("_cim"), "branch", state.get("_cim_branch"))
    return state["_network"].eval(), branch, idata, order, config


def evaluate(run_dir: Path, n_images: int, batch: int = 100) -> Dict[str, float]:
    net, branch, idata, order, config = load_run(run_dir)
    view = FmapView(net)
    known = int(view(torch.zeros(1, 3, *idata.image_size))["logits"].shape[1])
    inv = {int(c): k for k, c in enumerate(order)}
    targets = np.asarray(idata.test_targets)
    keep = np.flatnonzero(np.isin(targets, order[:known]))
    keep = np.random.default_rng(0).permutation(keep)[:n_images]
    images = torch.from_numpy(np.asarray(idata.test_data)[keep]).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([inv[int(t)] for t in targets[keep]])
    norm = idata.common_trsf[-1]
    mean, std = torch.tensor(norm.mean).view(1, 3, 1, 1), torch.tensor(norm.std).view(1, 3, 1, 1)
    ratio, tau = float(config.get("compress_ratio", 4.0)), float(config.get("mask_threshold", 0.6))
    H, W = idata.image_size
    gen = torch.Generator().manual_seed(0)
    correct = {k: 0 for k in ("clean", "learned", "centre", "random", "none")}
    areas, offsets = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            img, y = images[start:start + batch], labels[start:start + batch]
            x = (img.float() / 255 - mean) / std
            out = branch(view, x) if branch is not None else view(x)
            cam = cam_from_feature_maps(out["fmaps"], out["weight"], y, out_size=(H, W))
            boxes = cam_to_boxes(cam, tau)
            areas.append(box_area_fraction(boxes, H, W))
            offsets.append(centre_offset(boxes, H, W))
            variants = {"clean": [img], "learned": [compress(img, boxes, ratio)],
                        "centre": [compress(img, same_size_center_boxes(boxes, H, W), ratio)],
                        "random": [compress(img, b, ratio) for b in same_size_random_boxes(boxes, H, W, 3, gen)],
                        "none": [compress(img, torch.zeros_like(boxes), ratio)]}
            for name, versions in variants.items():
                for v in versions:
                    pred = view((v.float() / 255 - mean) / std)["logits"].argmax(1)
                    correct[name] += int((pred == y).sum()) / len(versions)
    report = {"run": str(run_dir), "images": len(images), "classes": known,
              **{f"top1_{k}": round(100.0 * v / len(images), 2) for k, v in correct.items()},
              "test_box_fraction": round(float(torch.cat(areas).mean()), 3),
              "test_centre_offset": round(float(torch.cat(offsets).mean()), 3)}
    ex_path = run_dir / "exemplars.pt"
    if ex_path.is_file():
        ex = torch.load(ex_path, map_location="cpu", weights_only=False)
        stored = torch.as_tensor(ex["boxes"]).long()
        rand = same_size_random_boxes(stored, H, W, 5, torch.Generator().manual_seed(1)).view(-1, 4)
        report.update({"stored_exemplars": len(stored),
                       "stored_box_fraction": round(float(box_area_fraction(stored, H, W).mean()), 3),
                       "stored_centre_offset": round(float(centre_offset(stored, H, W).mean()), 3),
                       "random_centre_offset": round(float(centre_offset(rand, H, W).mean()), 3)})
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="exps/analysis/box_utility.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    reports = [evaluate(d, args.images) for d in args.run_dirs]
    cols = ["images", "top1_clean", "top1_learned", "top1_centre", "top1_random", "top1_none", "test_box_fraction",
            "stored_box_fraction", "stored_centre_offset", "random_centre_offset"]
    print("| run | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in reports:
        print(f"| {r['run']} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
