"""Do a benchmark's final networks key on the look of replayed exemplars (the codec's signature)?

For every JPEG variant run of a finished benchmark on the synthetic dataset, evaluates the last phase's
network (checkpoint.pt) on the whole test set three times: clean, as MRDC stores an image (whole image
JPEG at the run's quality), and as CIM+JPEG stores the background (1/r of the pixels through JPEG,
upsampled). Prints top-1 on old classes (earlier phases), on new classes (last phase) and the share of
old-class images called a new class.

    .venv/bin/python exps/analysis/codec_signature.py runs/bench_codec64_m15/icarl_synthetic64_m15
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "third_party" / "PyCIL")]  # the pickled network needs PyCIL's modules

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cim_plugin.bench import sizes  # noqa: E402
from cim_plugin.method.codec.jpeg import decode_streams, encode_streams  # noqa: E402
from cim_plugin.method.codec.raw import downsample, upsample  # noqa: E402


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) through JPEG and back."""
    return torch.stack(decode_streams(encode_streams(list(x), quality)))


def lowres_jpeg(x: torch.Tensor, quality: int, ratio: float) -> torch.Tensor:
    """The CIM+JPEG background: 1/ratio of the pixels, through JPEG, upsampled to (H, W)."""
    return upsample(jpeg(downsample(x, ratio), quality), tuple(x.shape[-2:]))


def evaluate(run: Path) -> dict:
    result = json.loads((run / "results.json").read_text())
    config = result["config"]
    idata = sizes.load_dataset(config)
    order = np.asarray(np.load(run / "predictions.npz")["class_order"])
    y = torch.as_tensor(np.argsort(order)[np.asarray(idata.test_targets)])
    x = torch.as_tensor(np.asarray(idata.test_data)).permute(0, 3, 1, 2).contiguous()
    net = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["learner"]["_network"].eval()
    norm = idata.common_trsf[0]
    mean, std = torch.tensor(norm.mean)[:, None, None], torch.tensor(norm.std)[:, None, None]
    quality, ratio = int(config.get("jpeg_quality", 75)), float(config.get("compress_ratio", 4.0))
    n_old = int(result["phases"][-1]["classes"]) - int(config["increment"])  # classes before the last phase
    old = y < n_old
    out = {}
    for name, xs in (("clean", x), ("whole-image JPEG", jpeg(x, quality)),
                     ("low-res JPEG", lowres_jpeg(x, quality, ratio))):
        with torch.no_grad():
            t = (xs.float() / 255 - mean) / std
            pred = torch.cat([net(t[i:i + 256])["logits"].argmax(1) for i in range(0, len(t), 256)])
        out[name] = {"old_top1": float((pred[old] == y[old]).float().mean() * 100),
                     "new_top1": float((pred[~old] == y[~old]).float().mean() * 100),
                     "old_called_new": float((pred[old] >= n_old).float().mean() * 100)}
    return out


def main() -> None:
    torch.set_num_threads(1)
    folder = Path(sys.argv[1])
    print("variant seed | test images as | old top-1 | new top-1 | old called new (%)")
    for run in sorted(folder.glob("*jpeg/seed_*")):
        for name, r in evaluate(run).items():
            print(f"{run.parent.name} {run.name[5:]} | {name} | {r['old_top1']:.1f} | {r['new_top1']:.1f} | "
                  f"{r['old_called_new']:.1f}", flush=True)


if __name__ == "__main__":
    main()
