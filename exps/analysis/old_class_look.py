"""How a benchmark's final networks see their old classes: clean, in the stored look, and on the memory itself.

For every finished run of one or more benchmark folders on a dataset with true object boxes (synthetic,
Tiny-ImageNet), the last phase's network (checkpoint.pt) is evaluated on

* the test set **clean**: top-1 on the old classes (earlier phases), on the new ones (last phase), and
  the share of old-class images called a new class;
* the test set **in the stored look**: each image compressed as CIM stores an exemplar (raw codec), the
  true object box grown about its centre to ``--box-area`` of the image kept at full resolution and the
  rest at 1/``compress_ratio`` of the pixels. If a network told old from new classes by the look of the
  replayed exemplars, its old classes would score higher here than clean;
* the same clean test images with each group's own logits only: **old among old** (top-1 of old-class
  images over the old classes' logits) and **new among new**: how well the network tells old classes
  apart, with the recency bias (old images called new) taken out;
* with ``--backbones``, for networks with one backbone per phase (DER's ``convnets``): each backbone's
  features alone, old-class test images by the nearest mean of the old classes' clean training images
  (cosine, L2-normalised features), which asks what each backbone's representation knows of the old
  classes whatever the classifier does with it; and the same with the training and test images both in
  the stored look (their true boxes grown as above), which asks whether what a backbone learnt of the old
  classes from compressed exemplars holds in the look it learnt them in but does not carry to clean images;
* the run's **own memory** after the last phase, old classes only: top-1 on the stored exemplars as they
  are replayed (decoded; CIM runs) and on the clean training images they were made from (every run).
  How well a network fits the exemplars it replayed, against how well that carries to the test set.

Prints one row per run, then the mean over seeds of each (config, variant):

    .venv/bin/python exps/analysis/old_class_look.py runs/bench10 [runs/m120 ...]
"""

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "third_party" / "PyCIL")]  # the pickled network needs PyCIL's modules

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cim_plugin.bench import sizes  # noqa: E402
from cim_plugin.method.codec.raw import compress  # noqa: E402
from cim_plugin.method.memory import load_memory  # noqa: E402

COLUMNS = ("clean old", "clean new", "clean old called new", "old among old", "new among new", "stored look old",
           "stored look new", "stored look old called new", "memory decoded", "memory clean originals")
BACKBONES = "backbones NCM old (oldest first)"
BACKBONES_STORED = "backbones NCM old, stored look (oldest first)"


def grow_boxes(boxes: torch.Tensor, H: int, W: int, fraction: float) -> torch.Tensor:
    """Boxes (N, 4) int64 x0, y0, x1, y1 (exclusive ends) grown about their centres, each side by the same
    factor, to at least ``fraction`` of the H x W image, shifted back inside it. A box already that large
    is kept. Returns int64 (N, 4)."""
    b = boxes.double()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    scale = (fraction * H * W / (w * h).clamp(min=1)).sqrt().clamp(min=1)
    nw, nh = (w * scale).round().clamp(1, W), (h * scale).round().clamp(1, H)
    x0 = ((b[:, 0] + b[:, 2] - nw) / 2).round().clamp(0, None)
    y0 = ((b[:, 1] + b[:, 3] - nh) / 2).round().clamp(0, None)
    x0, y0 = torch.minimum(x0, W - nw), torch.minimum(y0, H - nh)
    return torch.stack([x0, y0, x0 + nw, y0 + nh], 1).long()


class Evaluator:
    """Top-1 of a network on uint8 images, through the dataset's own normalisation."""

    def __init__(self, net, idata):
        self.net = net.eval()
        norm = idata.common_trsf[0]
        self.mean = torch.tensor(norm.mean)[:, None, None]
        self.std = torch.tensor(norm.std)[:, None, None]

    def _batches(self, x: torch.Tensor):
        for i in range(0, len(x), 256):
            yield ((x[i:i + 256].float() / 255) - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> logits (N, classes seen)."""
        with torch.no_grad():
            return torch.cat([self.net(t)["logits"] for t in self._batches(x)])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> predicted class (N,)."""
        return self.logits(x).argmax(1)

    def backbone_features(self, x: torch.Tensor):
        """uint8 (N, 3, H, W) -> [L2-normalised features (N, D) of each backbone], oldest first."""
        with torch.no_grad():
            return [F.normalize(torch.cat([convnet(t)["features"] for t in self._batches(x)]), dim=1)
                    for convnet in self.net.convnets]


def nearest_mean_top1(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                      classes: int) -> float:
    """Top-1 (%) of test features (N, D) by cosine to the normalised mean of each class's train features."""
    means = F.normalize(torch.stack([train_f[train_y == c].mean(0) for c in range(classes)]), dim=1)
    return _pct((test_f @ means.T).argmax(1) == test_y)


def _pct(hit: torch.Tensor) -> float:
    return float(hit.float().mean() * 100) if len(hit) else float("nan")


def evaluate(run: Path, idata, box_area: float, backbones: bool = False) -> dict:
    """The COLUMNS of one run (percent; NaN where a run has no such number)."""
    result = json.loads((run / "results.json").read_text())
    config = result["config"]
    remap = np.argsort(np.asarray(np.load(run / "predictions.npz")["class_order"]))
    learner = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["learner"]
    ev = Evaluator(learner["_network"], idata)
    seen = int(result["phases"][-1]["classes"])
    n_old = seen - int(config["increment"])
    y = torch.as_tensor(remap[np.asarray(idata.test_targets)])
    shown = y < seen  # a run stopped before its last phase has not met the later classes yet
    y = y[shown]
    x = torch.as_tensor(np.asarray(idata.test_data)).permute(0, 3, 1, 2)[shown].contiguous()
    H, W = x.shape[-2:]
    boxes = grow_boxes(torch.as_tensor(np.asarray(idata.test_boxes))[shown], H, W, box_area)
    old = y < n_old
    ratio = float(config.get("compress_ratio", 4.0))
    stored_x = compress(x, boxes, ratio)
    out = {}
    for name, xs in (("clean", x), ("stored look", stored_x)):
        logits = ev.logits(xs)
        p = logits.argmax(1)
        if name == "clean":
            out["old among old"] = _pct(logits[old, :n_old].argmax(1) == y[old])
            out["new among new"] = _pct(logits[~old, n_old:].argmax(1) + n_old == y[~old])
        out[f"{name} old"], out[f"{name} new"] = _pct(p[old] == y[old]), _pct(p[~old] == y[~old])
        out[f"{name} old called new"] = _pct(p[old] >= n_old)
    train = torch.as_tensor(np.asarray(idata.train_data)).permute(0, 3, 1, 2)
    if backbones and hasattr(ev.net, "convnets"):
        train_y = torch.as_tensor(remap[np.asarray(idata.train_targets)])
        train_old = train_y < n_old
        train_x = train[train_old].contiguous()
        train_boxes = grow_boxes(torch.as_tensor(np.asarray(idata.train_boxes))[train_old], H, W, box_area)
        for column, train_xs, test_xs in ((BACKBONES, train_x, x[old]),
                                          (BACKBONES_STORED, compress(train_x, train_boxes, ratio), stored_x[old])):
            features = zip(ev.backbone_features(train_xs), ev.backbone_features(test_xs))
            out[column] = [nearest_mean_top1(train_f, train_y[train_old], test_f, y[old], n_old)
                           for train_f, test_f in features]
    out["memory decoded"] = float("nan")
    if (run / "memory.pt").exists() and (run / "exemplars.pt").exists():
        memory = load_memory(run / "memory.pt")
        labels = memory.labels
        keep = (labels < n_old).nonzero().squeeze(1)
        source = torch.load(run / "exemplars.pt", weights_only=False)["source_index"][keep]
        decoded = torch.cat([memory.decode(keep[i:i + 512]) for i in range(0, len(keep), 512)])
        out["memory decoded"] = _pct(ev.predict(decoded) == labels[keep])
        out["memory clean originals"] = _pct(ev.predict(train[source].contiguous()) == labels[keep])
    else:  # a PyCIL baseline keeps its exemplars as images in the learner
        images = torch.as_tensor(np.asarray(learner["_data_memory"])).permute(0, 3, 1, 2).contiguous()
        labels = torch.as_tensor(np.asarray(learner["_targets_memory"])).long()
        keep = labels < n_old
        out["memory clean originals"] = _pct(ev.predict(images[keep]) == labels[keep])
    return out


def _cell(values) -> str:
    """The mean over runs of one column: a number, or per backbone ("a / b / c") when each run has a list."""
    if isinstance(values[0], list):
        if len({len(v) for v in values}) > 1:
            return "—"
        return " / ".join(f"{statistics.fmean(v[k] for v in values):.1f}" for k in range(len(values[0])))
    return f"{statistics.fmean(values):.1f}"


def finished_runs(folder: Path):
    """(config, variant, seed, run dir) of every finished run under a benchmark folder."""
    for res in sorted(folder.glob("*/*/seed_*/results.json")):
        run = res.parent
        if json.loads(res.read_text()).get("finished") and (run / "checkpoint.pt").exists():
            yield run.parent.parent.name, run.parent.name, int(run.name[5:]), run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="finished benchmark folders")
    parser.add_argument("--backbones", action="store_true",
                        help="also each backbone's features alone (networks with one backbone per phase, e.g. DER)")
    parser.add_argument("--box-area", type=float, default=0.25,
                        help="fraction of the image the stored look keeps at full resolution (default 0.25, "
                             "about the learned boxes' mean area on the synthetic benchmark)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    datasets, rows = {}, defaultdict(list)
    columns = COLUMNS + ((BACKBONES, BACKBONES_STORED) if args.backbones else ())
    print("config | variant | seed | " + " | ".join(columns))
    for folder in args.folders:
        for config_name, variant, seed, run in finished_runs(folder):
            config = json.loads((run / "results.json").read_text())["config"]
            key = sizes.dataset_key(config)
            if key not in datasets:
                datasets[key] = sizes.load_dataset(config)
            idata = datasets[key]
            if idata is None or getattr(idata, "test_boxes", None) is None:
                print(f"{run}: skipped, its dataset has no true object boxes", file=sys.stderr)
                continue
            r = evaluate(run, idata, args.box_area, args.backbones)
            rows[(config_name, variant)].append(r)
            print(f"{config_name} | {variant} | {seed} | " + " | ".join(_cell([r.get(c, math.nan)]) for c in columns),
                  flush=True)
    print("\nmean over seeds\nconfig | variant | seeds | " + " | ".join(columns))
    for (config_name, variant), rs in rows.items():
        print(f"{config_name} | {variant} | {len(rs)} | " + " | ".join(_cell([r.get(c, math.nan) for r in rs])
                                                                     for c in columns))


if __name__ == "__main__":
    main()
