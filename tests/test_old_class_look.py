"""exps/analysis/old_class_look.py: final networks on old classes clean, in the stored look, and on their own memory."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_exps_script, requires_pycil, tiny_config, write_config


def _script():
    return load_exps_script("analysis/old_class_look")


def test_grow_boxes_reaches_the_area_keeps_the_object_and_stays_inside():
    grow = _script().grow_boxes
    boxes = torch.tensor([[10, 12, 14, 16],   # 4x4 in the middle of 32x32
                          [0, 0, 4, 8],       # at a corner: grown, then shifted back inside
                          [28, 26, 32, 32],   # at the far corner
                          [0, 0, 32, 20]])    # already larger than a quarter: kept
    grown = grow(boxes, 32, 32, 0.25)
    area = (grown[:, 2] - grown[:, 0]) * (grown[:, 3] - grown[:, 1])
    assert (area >= 0.25 * 32 * 32 * 0.9).all()  # rounding of the sides only
    assert (grown[:, :2] >= 0).all() and (grown[:, 2:] <= 32).all()
    assert (grown[:, :2] <= boxes[:, :2]).all() and (grown[:, 2:] >= boxes[:, 2:]).all()
    assert grown[3].tolist() == [0, 0, 32, 20]
    w, h = grown[1, 2] - grown[1, 0], grown[1, 3] - grown[1, 1]
    assert abs(float(h) / float(w) - 2.0) < 0.2  # each side by the same factor


@requires_pycil
def test_old_class_look_matches_the_runs_own_accuracy_and_reads_both_memories(tmp_path):
    """On a finished DER baseline + CIM benchmark: its clean-image numbers are each run's own last-phase top-1
    (same network, transform and class order), old among old is at least old top-1, the memory rows come
    from the CIM memory (decoded and clean originals) and from the baseline's stored images, and
    --backbones gives one number per backbone (one per phase), clean and in the stored look."""
    cfg = write_config(tmp_path / "tiny.json", tiny_config(model_name="der", init_epoch=6, epochs=3, init_lr=0.02, lrate=0.02,
                                                           init_milestones=[5], milestones=[2],
                                                           cam_update_interval=1, meta_batch_size=4))
    out = tmp_path / "bench"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    bench = subprocess.run([sys.executable, str(REPO / "exps" / "benchmark.py"), str(cfg), "--out", str(out),
                            "--seeds", "1993"], capture_output=True, text=True, cwd=REPO, timeout=900, env=env)
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    look = subprocess.run([sys.executable, str(REPO / "exps" / "analysis" / "old_class_look.py"), str(out),
                           "--backbones"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert look.returncode == 0, look.stderr[-2000:]
    per_run, means = look.stdout.split("mean over seeds")
    header, *lines = [line for line in per_run.splitlines() if line.strip()]
    columns = [c.strip() for c in header.split("|")]
    rows = {r[1]: dict(zip(columns, r)) for r in ([c.strip() for c in line.split("|")] for line in lines)}
    assert set(rows) == {"baseline", "cim"}
    for variant, row in rows.items():
        run = json.loads((out / "tiny" / variant / "seed_1993" / "results.json").read_text())
        last = run["accuracy_matrix_cnn"][-1]  # per task: 5 classes of 8 test images each
        assert float(row["clean old"]) == pytest.approx(sum(last[:-1]) / (len(last) - 1), abs=0.1)
        assert float(row["clean new"]) == pytest.approx(last[-1], abs=0.1)
        assert float(row["clean new"]) > 0  # a network that learnt something, so a wrong transform would show
        assert 0 <= float(row["stored look old"]) <= 100 and 0 <= float(row["memory clean originals"]) <= 100
        assert float(row["old among old"]) >= float(row["clean old"])  # the same images, fewer classes to lose to
        for column in ("backbones NCM old (oldest first)", "backbones NCM old, stored look (oldest first)"):
            per_backbone = row[column].split(" / ")
            assert len(per_backbone) == len(last) and all(0 <= float(v) <= 100 for v in per_backbone)
    assert math.isnan(float(rows["baseline"]["memory decoded"]))
    assert 0 <= float(rows["cim"]["memory decoded"]) <= 100
    assert "tiny | cim | 1 |" in means and "tiny | baseline | 1 |" in means
