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


def test_resume_of_a_finished_run_with_another_config_is_an_error(tmp_path):
    """A finished run resumed with a different config stops naming the keys (it exited 0 silently); the same
    config, or one differing only in "device" or "strict", has nothing to resume and exits 0."""
    config = tiny_config(synthetic_num_classes=5, init_cls=5, note="a key nothing reads")
    cfg = write_config(tmp_path / "c.json", config)
    first = run_cli([cfg, "--out", tmp_path / "run"])
    assert first.returncode == 0, first.stderr[-2000:]
    warning = 'config key "note" is not read'  # once on the console (stderr), once in run.log
    assert first.stderr.count(warning) == 1 and warning not in first.stdout
    assert (tmp_path / "run" / "run.log").read_text().count(warning) == 1
    before = (tmp_path / "run" / "results.json").read_text()
    other = write_config(tmp_path / "d.json", dict(config, init_epoch=2, batch_size=8))
    result = run_cli([other, "--out", tmp_path / "run", "--resume"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert "finished run of a different config" in result.stderr
    assert "['batch_size', 'init_epoch']" in result.stderr and "--overwrite" in result.stderr
    same = write_config(tmp_path / "e.json", dict(config, device=["-1"], strict=False))
    for path in (cfg, same):
        again = run_cli([path, "--out", tmp_path / "run", "--resume"])
        assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "run" / "results.json").read_text() == before
