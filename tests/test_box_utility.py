"""exps/analysis/box_utility.py: a finished CIM run's final network on test images compressed with the learned box, the
same-size centred and random boxes, no box, and clean; plus where the stored boxes sit."""

import json
import subprocess
import sys

import torch
from conftest import REPO, load_exps_script, requires_pycil, run_cli, tiny_config, write_config


def _script():
    return load_exps_script("analysis/box_utility")


def test_centre_offset_is_zero_at_the_centre_and_one_at_the_edge():
    offset = _script().centre_offset
    boxes = torch.tensor([[8, 8, 24, 24], [0, 0, 0, 0], [16, 0, 32, 32]])
    assert offset(boxes, 32, 32).tolist() == [0.0, 1.0, 0.5]


@requires_pycil
def test_box_utility_on_a_finished_cim_run(tmp_path):
    """The clean top-1 is the run's own last-phase top-1 on the same images (all test images of the known
    classes here), every variant is a percentage, and the stored boxes' numbers come from exemplars.pt."""
    config = tiny_config(model_name="icarl", init_epoch=3, epochs=2, init_lr=0.05, lrate=0.05,
                         cim=True, cam_update_interval=1, meta_batch_size=4, synthetic_num_classes=10)
    out = tmp_path / "run"
    result = run_cli([write_config(tmp_path / "c.json", config), "--out", out], timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report_path = tmp_path / "box.json"
    done = subprocess.run([sys.executable, str(REPO / "exps" / "analysis" / "box_utility.py"), str(out), "--json",
                           str(report_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (report,) = json.loads(report_path.read_text())
    results = json.loads((out / "results.json").read_text())
    assert report["images"] == 10 * 8 and report["classes"] == 10
    assert abs(report["top1_clean"] - results["phases"][-1]["top1_cnn"]) < 1e-6
    for key in ("top1_learned", "top1_centre", "top1_random", "top1_none"):
        assert 0.0 <= report[key] <= 100.0
    assert report["stored_exemplars"] == results["phases"][-1]["exemplars"]
    assert 0.0 < report["stored_box_fraction"] <= 1.0 and 0.0 <= report["stored_centre_offset"] <= 1.0
    assert "| run |" in done.stdout


def test_box_utility_refuses_a_baseline_run(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"cim": False, "config": {}}))
    done = subprocess.run([sys.executable, str(REPO / "exps" / "analysis" / "box_utility.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "is not a CIM run" in done.stderr
