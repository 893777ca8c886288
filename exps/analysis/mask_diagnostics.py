"""Where do the learned CIM masks look? CAM diagnostics of a finished CIM run on a dataset with true boxes.

    OMP_NUM_THREADS=1 .venv/bin/python exps/analysis/mask_diagnostics.py RUN_DIR [--images 400] [--json out.json]

RUN_DIR is an `exps/run.py` output folder of a `"cim": true` run (checkpoint.pt, predictions.npz, the
config in results.json) on a dataset with true boxes (synthetic, tinyimagenet). For the test images of
the classes the last phase knows, it compares the CAMs of several mask sources:

- `cil`: the CIL network (ReLU) -- what `"cim_mask": "cam"` stores;
- `branch`: the trained CIM branch (the learned PAUs) -- what `"cim_mask": "cim"` stores;
- `branch_init`: the branch with every PAU at its initial ReLU fit (what meta steps start from);
- `branch_zero0`: the trained branch with each PAU shifted by -PAU(0), so that it maps 0 to 0;

and prints, per source and CAM normalisation (`minmax`: per-image min-max, the paper's; `relu`: negative
values to 0, then divided by the max), the IoU of the τ-box with the true box next to the same-size random
and centred references, the fraction of CAM mass on the border ring (one feature-map cell wide) against
the ring's area fraction, the share of images whose CAM peak lies in the true box, the box area fraction,
and PAU(0) of the branch's units.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cim_plugin.bench import box_ious  # noqa: E402
from cim_plugin.datasets import build_idata  # noqa: E402
from cim_plugin.method.masks.boxes import cam_to_boxes  # noqa: E402
from cim_plugin.method.masks.cam import raw_cam  # noqa: E402
from cim_plugin.method.masks.cim_branch import CIMBranch  # noqa: E402
from cim_plugin.method.masks.pau import PAU  # noqa: E402
from cim_plugin.pycil import (
    checkpoint,  # noqa: E402
    import_pycil,  # noqa: E402
)
from cim_plugin.pycil.network import FmapView  # noqa: E402


def normalise(cam: torch.Tensor, how: str) -> torch.Tensor:
    """float (B, H, W) raw CAM -> [0, 1]: "minmax" per image, or "relu" (clamp at 0, divide by the max)."""
    flat = cam.flatten(1)
    if how == "minmax":
        lo = flat.amin(1)
    else:
        lo = torch.zeros_like(flat[:, 0])
        flat = flat.clamp_min(0)
    hi = flat.amax(1)
    out = (flat - lo[:, None]) / (hi - lo).clamp_min(1e-12)[:, None]
    return out.clamp(0, 1).view_as(cam)


def ring_mask(H: int, W: int, width: int) -> torch.Tensor:
    """bool (H, W): True on the outer ring `width` pixels wide."""
    m = torch.ones(H, W, dtype=torch.bool)
    m[width:H - width, width:W - width] = False
    return m


def cam_stats(cam: torch.Tensor, true: torch.Tensor, threshold: float, ring_width: int) -> Dict[str, float]:
    """Numbers of one CAM source: cam float (B, H, W) in [0, 1] at image size, true boxes int64 (B, 4)."""
    B, H, W = cam.shape
    boxes = cam_to_boxes(cam, threshold)
    ref = box_ious(boxes, true, (H, W))
    ring = ring_mask(H, W, ring_width)
    mass = cam.flatten(1).sum(1).clamp_min(1e-12)
    peak = cam.flatten(1).argmax(1)
    py, px = peak // W, peak % W
    inside = (px >= true[:, 0]) & (px < true[:, 2]) & (py >= true[:, 1]) & (py < true[:, 3])
    low = cam.flatten(1).argmin(1)
    ly, lx = low // W, low % W
    low_inside = (lx >= true[:, 0]) & (lx < true[:, 2]) & (ly >= true[:, 1]) & (ly < true[:, 3])
    return {"min_in_box": float(low_inside.float().mean()),"iou": ref.iou, "random_iou": ref.random_iou, "center_iou": ref.center_iou,
            "box_fraction": ref.box_fraction, "true_fraction": ref.true_fraction,
            "border_mass": float((cam[:, ring].sum(1) / mass).mean()), "ring_area": float(ring.float().mean()),
            "peak_in_box": float(inside.float().mean())}


def shifted_branch(branch: CIMBranch) -> CIMBranch:
    """A copy of `branch` whose every PAU is P(x)/Q(x) - P(0) (so it maps 0 to 0; Q(0) = 1)."""
    out = CIMBranch(branch.num_sites)
    out.load_state_dict(branch.state_dict())
    with torch.no_grad():
        for pau in out.paus:
            pau.numerator[0] = 0.0
    return out


class LeftClampedBranch(CIMBranch):
    """A CIM branch whose PAUs see ``max(x, floor)``: left of ``floor`` each unit is constant (ReLU-like)."""

    def __init__(self, branch: CIMBranch, floor: float) -> None:
        super().__init__(branch.num_sites)
        self.load_state_dict(branch.state_dict())
        self.floor = floor

    def _activation(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return self.paus[k](x.clamp_min(self.floor))


def preactivation_tails(view: FmapView, x: torch.Tensor, bounds=(-3.0, -6.0)) -> Dict[str, list]:
    """Share of the inputs of each ReLU site (call order) below each bound, from the plain network."""
    from cim_plugin.method.masks.cim_branch import _ReluMode

    shares = {str(b): [] for b in bounds}

    def record(k, t):
        for b in bounds:
            shares[str(b)].append(round(float((t < b).float().mean()), 4))
        return torch.relu(t)

    with torch.no_grad(), _ReluMode(record):
        view(x)
    return shares


def load_run(run_dir: Path):
    """(network, branch, idata, class_order, config) of a finished CIM run."""
    import_pycil()
    results = json.loads((run_dir / "results.json").read_text())
    config = results["config"]
    state = checkpoint.load(run_dir / checkpoint.CHECKPOINT)["learner"]
    pred = np.load(run_dir / "predictions.npz")
    idata = build_idata(config["dataset"], config)
    idata.download_data()
    return state["_network"].eval(), getattr(state.get("_cim"), "branch", state.get("_cim_branch")), idata, np.asarray(pred["class_order"]), config


def test_inputs(idata, class_order: np.ndarray, known: int, n: int, seed: int = 0):
    """Up to n test images of the known classes: (x normalised float (B, 3, H, W), incremental labels, true boxes)."""
    inv = {int(c): k for k, c in enumerate(class_order)}
    targets = np.asarray(idata.test_targets)
    keep = np.flatnonzero(np.isin(targets, class_order[:known]))
    keep = np.random.default_rng(seed).permutation(keep)[:n]
    images = torch.from_numpy(np.asarray(idata.test_data)[keep]).permute(0, 3, 1, 2).float() / 255.0
    norm = idata.common_trsf[-1]
    x = (images - torch.tensor(norm.mean).view(1, 3, 1, 1)) / torch.tensor(norm.std).view(1, 3, 1, 1)
    y = torch.tensor([inv[int(t)] for t in targets[keep]])
    return x, y, torch.as_tensor(np.asarray(idata.test_boxes)[keep]).long()


def raw_cams(view: FmapView, x: torch.Tensor, y: torch.Tensor, runner: Callable) -> torch.Tensor:
    """Raw CAM (B, H, W) at image size of the net run by `runner(view, x)` (plain or through a branch)."""
    import torch.nn.functional as F

    with torch.no_grad():
        out = runner(view, x)
        cam = raw_cam(out["fmaps"], out["weight"], y)
        return F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def stored_exemplar_stats(run_dir: Path, idata, threshold: float, ring_width: int) -> Dict[str, float]:
    """The run's memory (exemplars.pt): stored boxes vs true boxes, and the stored CAMs' numbers."""
    import torch.nn.functional as F

    ex = torch.load(run_dir / "exemplars.pt", map_location="cpu", weights_only=False)
    src = torch.as_tensor(ex["source_index"]).long()
    true_all = torch.as_tensor(np.asarray(idata.train_boxes)).long()
    H, W = idata.image_size
    ref = box_ious(torch.as_tensor(ex["boxes"]).long(), true_all[src], (H, W))
    out = {"exemplars": len(src), **{f"stored_{k}": v for k, v in ref._asdict().items()}}
    if ex.get("cams") is not None and len(ex["cams"]):
        cam = ex["cams"].float()
        if tuple(cam.shape[1:]) != (H, W):
            cam = F.interpolate(cam[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        s = cam_stats(cam, true_all[src[torch.as_tensor(ex["cam_index"]).long()]], threshold, ring_width)
        out.update({f"cams_{k}": v for k, v in s.items()})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    net, branch, idata, order, config = load_run(args.run_dir)
    known = int(net.fc.weight.shape[0]) if hasattr(net.fc, "weight") else len(order)
    x, y, true = test_inputs(idata, order, known, args.images)
    view = FmapView(net)
    fmap_cells = raw_cams(view, x[:1], y[:1], lambda v, t: v(t)).shape  # (1, H, W) already upsampled
    ring_width = max(1, x.shape[-1] // view(x[:1])["fmaps"][0].shape[-1])
    sources = {"cil": lambda v, t: v(t)}
    if branch is not None:
        sources["branch"] = lambda v, t: branch(v, t)
        fresh = CIMBranch(branch.num_sites)
        sources["branch_init"] = lambda v, t: fresh(v, t)
        zero0 = shifted_branch(branch)
        sources["branch_zero0"] = lambda v, t: zero0(v, t)
        clamped = LeftClampedBranch(branch, -3.0)
        sources["branch_left3"] = lambda v, t: clamped(v, t)
        fresh_clamped = LeftClampedBranch(fresh, -3.0)
        sources["init_left3"] = lambda v, t: fresh_clamped(v, t)
    threshold = float(config.get("mask_threshold", 0.6))
    report = {"run": str(args.run_dir), "images": len(x), "cam_size": list(fmap_cells[1:]),
              "ring_width_px": ring_width, "sources": {}}
    for name, runner in sources.items():
        cam = raw_cams(view, x, y, runner)
        report["sources"][name] = {
            "negative_share": float((cam < 0).float().mean()),
            **{how: cam_stats(normalise(cam, how), true, threshold, ring_width) for how in ("minmax", "relu")}}
    report["preact_below"] = preactivation_tails(view, x[:64])
    if (args.run_dir / "exemplars.pt").is_file():
        report["stored"] = stored_exemplar_stats(args.run_dir, idata, threshold, ring_width)
        print("stored exemplars:", json.dumps(report["stored"]))
    if branch is not None:
        zero = torch.zeros(1)
        p0 = torch.stack([pau(zero)[0] for pau in branch.paus]).detach()
        report["pau0"] = {"init": float(PAU()(zero)[0]), "trained_mean": float(p0.mean()),
                          "trained_min": float(p0.min()), "trained_max": float(p0.max())}
    print(json.dumps(report, indent=1))
    header = f"{'source':14s} {'norm':6s} {'IoU':>6s} {'rand':>6s} {'centre':>6s} {'border':>6s} {'ring':>5s} " \
             f"{'peak∈box':>8s} {'min∈box':>7s} {'box':>5s} {'true':>5s} {'neg':>5s}"
    print(header)
    for name, rep in report["sources"].items():
        for how in ("minmax", "relu"):
            s = rep[how]
            print(f"{name:14s} {how:6s} {s['iou']:6.3f} {s['random_iou']:6.3f} {s['center_iou']:6.3f} "
                  f"{s['border_mass']:6.3f} {s['ring_area']:5.2f} {s['peak_in_box']:8.3f} {s['min_in_box']:7.3f} "
                  f"{s['box_fraction']:5.2f} "
                  f"{s['true_fraction']:5.2f} {rep['negative_share']:5.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
