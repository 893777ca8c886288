"""A run killed mid-phase resumes from its last finished phase and ends with identical numbers."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import REPO, requires_pycil, run_cli, tiny_config, write_config

pytestmark = requires_pycil


def _numbers(results):
    timings = ("wall_s", "train_s", "seconds")  # measured times differ between any two runs
    return [{k: v for k, v in p.items() if k not in timings} for p in results["phases"]], results["accuracy_matrix_cnn"]


def test_kill_and_resume_gives_the_uninterrupted_numbers(tmp_path):
    cfg = write_config(tmp_path / "c.json", tiny_config(cim=True, cim_mask="cim", cam_update_interval=1,
                                                        init_epoch=2, epochs=2, memory_size=45))
    full = run_cli([cfg, "--out", tmp_path / "full"])
    assert full.returncode == 0, full.stderr[-3000:]

    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    proc = subprocess.Popen([sys.executable, str(REPO / "exps" / "run.py"), str(cfg), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    while time.time() < deadline:  # wait until phase 1 is finished and checkpointed, then kill in phase 2
        results = out / "results.json"
        if results.exists() and len(json.loads(results.read_text())["phases"]) >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = json.loads((out / "results.json").read_text())
    assert not partial["finished"] and len(partial["phases"]) == 2

    refused = run_cli([cfg, "--out", out])  # an existing run is never overwritten silently
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = run_cli([cfg, "--out", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert b["finished"]
    assert _numbers(a) == _numbers(b)


def test_resume_refuses_a_different_config(tmp_path):
    cfg = write_config(tmp_path / "c.json", tiny_config(synthetic_num_classes=5, init_cls=5))
    assert run_cli([cfg, "--out", tmp_path / "run"]).returncode == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    results["finished"] = False
    (tmp_path / "run" / "results.json").write_text(json.dumps(results))
    other = write_config(tmp_path / "d.json", tiny_config(synthetic_num_classes=5, init_cls=5, init_epoch=2))
    result = run_cli([other, "--out", tmp_path / "run", "--resume"])
    assert result.returncode == 2
    assert "init_epoch" in result.stderr
