"""exps/analysis/mask_growth.py: every meta step of a CIM run logged, with φ's learning rate held and the inner loss
replaced."""

import json
import os
import subprocess
import sys

from conftest import REPO, requires_pycil, tiny_learner_config


@requires_pycil
def test_mask_growth_logs_every_meta_step_and_holds_phi_lr(tmp_path):
    config = tiny_learner_config("foster", synthetic_num_classes=10, init_epochs=2, boosting_epochs=2,
                                 cam_update_interval=1, meta_batch_size=4, phi_lr=0.003)
    path = tmp_path / "foster_tiny.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "exps" / "analysis" / "mask_growth.py"), str(path),
                           "--seed", "1993", "--out", str(out), "--phi-lr", "constant", "--inner-loss", "ce"],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = json.loads((out / "meta_steps.json").read_text())
    steps = log["steps"]
    assert (log["phi_lr"], log["inner_loss"]) == ("constant", "ce")
    assert {s["phase"] for s in steps} == {0, 1}
    assert {s["phi_lr"] for s in steps} == {0.003}  # held through FOSTER's cosine ...
    assert len({s["inner_lr"] for s in steps if s["phase"] == 1}) == 2  # ... which still sets the inner step
    results = json.loads((out / "results.json").read_text())
    assert [p["meta_steps"] for p in results["phases"]] == [sum(s["phase"] == k for s in steps) for k in (0, 1)]
    assert all(0 < s["mask_mean"] < 1 for s in steps)
    assert "phase | meta steps" in proc.stdout and "avg inc acc CNN" in proc.stdout
