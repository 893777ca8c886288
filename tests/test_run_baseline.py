"""exps/run.py without "cim": PyCIL's numbers, reproducible, with a complete results.json."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, requires_pycil, run_cli, tiny_config, write_config

pytestmark = requires_pycil


def _pycil_curves(stdout: str):
    """The last 'CNN top1 curve' / 'NME top1 curve' lines PyCIL's trainer logs."""
    cnn = re.findall(r"CNN top1 curve: (\[.*?\])", stdout)
    nme = re.findall(r"NME top1 curve: (\[.*?\])", stdout)
    return _floats(cnn[-1]), _floats(nme[-1])


def _floats(text: str):
    """'[np.float64(40.0), 35.5]' (numpy 2 reprs) -> [40.0, 35.5]."""
    return [float(v) for v in re.findall(r"(-?\d+(?:\.\d*)?(?:e-?\d+)?)\)?(?=,|\])", text)]


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baseline")
    cfg = write_config(tmp / "tiny.json", tiny_config())
    first = run_cli([cfg, "--out", tmp / "a"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(["--config", cfg, "--out", tmp / "b"])
    assert second.returncode == 0, second.stderr[-3000:]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pycil = subprocess.run(
        [sys.executable, str(REPO / "tests" / "pycil_main_shim.py"), str(cfg)],
        cwd=tmp, capture_output=True, text=True, timeout=600, env=env,
    )
    assert pycil.returncode == 0, pycil.stderr[-3000:]
    a = json.loads((tmp / "a" / "results.json").read_text())
    b = json.loads((tmp / "b" / "results.json").read_text())
    return a, b, pycil.stdout + pycil.stderr, first.stdout, (tmp / "a" / "run.log").read_text()


def test_identical_to_pycil_main(baseline_runs):
    ours, _, pycil_out, _, _ = baseline_runs
    cnn, nme = _pycil_curves(pycil_out)
    assert [p["top1_cnn"] for p in ours["phases"]] == cnn
    assert [p["top1_nme"] for p in ours["phases"]] == nme


PYCIL_LINES = ("CNN top1 curve", "CNN top5 curve", "NME top1 curve", "NME top5 curve", "Average Accuracy (CNN)",
               "Average Accuracy (NME)", "Forgetting (CNN)", "Forgetting (NME)")


def _last_line_values(text: str, name: str):
    """The numbers of the last line '<name>: ...' in ``text`` (PyCIL prints some twice: print and log)."""
    found = re.findall(re.escape(name) + r": (.*)", text)
    assert found, f"no '{name}:' line in:\n{text[-3000:]}"
    return _floats(found[-1] if found[-1].startswith("[") else f"[{found[-1].strip()}]")


def test_pycil_summary_lines_as_pycil_main_prints_them(baseline_runs):
    """A PyCIL user's log parser finds PyCIL's own closing lines, with PyCIL's numbers, on the console and in
    run.log; then the plug-in's forgetting over tasks and the memory held."""
    ours, _, pycil_out, stdout, run_log = baseline_runs
    for text in (stdout, run_log):
        for name in PYCIL_LINES:
            assert _last_line_values(text, name) == pytest.approx(_last_line_values(pycil_out, name)), name
        grouped = re.findall(r"=> CNN: (\{.*\})", text)[-1]
        assert grouped == re.findall(r"=> CNN: (\{.*\})", pycil_out)[-1].replace("np.float64(", "").replace(")", "")
        assert _last_line_values(text, "Forgetting over tasks (CNN, results.json forgetting_cnn)") == \
            pytest.approx([ours["forgetting_cnn"]])
        last = ours["phases"][-1]
        assert f"Memory held: {last['exemplars']} exemplars" in text
        assert f"{last['memory_bytes']} bytes of a {last['memory_budget_bytes']}-byte budget (baseline)" in text
    assert stdout.rindex("Memory held") < stdout.rindex("results:")


def test_reproducible(baseline_runs):
    a, b, _, _, _ = baseline_runs
    strip = lambda r: [{k: v for k, v in p.items() if k not in ("wall_s", "train_s")} for p in r["phases"]]  # noqa: E731
    assert strip(a) == strip(b)
    assert a["accuracy_matrix_cnn"] == b["accuracy_matrix_cnn"]


def test_results_schema(baseline_runs):
    results, _, _, stdout, _ = baseline_runs
    assert "results:" in stdout
    import torch

    host = results["platform"]  # what decides whether a rerun can agree bit for bit
    assert host["torch"] == torch.__version__ and host["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(host["threads"], int) and host["threads"] >= 1 and host["cpu"]
    assert results["finished"] is True
    assert results["config"]["model_name"] == "icarl"
    phases = results["phases"]
    assert [p["phase"] for p in phases] == [0, 1, 2]
    assert [p["classes"] for p in phases] == [5, 10, 15]
    for p in phases:
        for key in ("top1_cnn", "top5_cnn", "top1_nme", "exemplars", "memory_bytes", "memory_budget_bytes", "wall_s"):
            assert key in p, key
        # baseline: exemplars x bytes of one 32x32x3 uint8 image, within the budget of 30 images
        assert p["memory_bytes"] == p["exemplars"] * 32 * 32 * 3
        assert p["memory_budget_bytes"] == 30 * 32 * 32 * 3
        assert p["memory_bytes"] <= p["memory_budget_bytes"]
    assert phases[-1]["exemplars"] == 30  # iCaRL: 30 // 15 classes = 2 each
    m = results["accuracy_matrix_cnn"]
    assert len(m) == 3 and all(len(row) == 3 for row in m) and m[0][1] is None
    top1 = [p["top1_cnn"] for p in phases]
    assert results["avg_incremental_accuracy_cnn"] == pytest.approx(sum(top1) / 3)
    assert results["forgetting_cnn"] is not None


def test_train_timer_counts_training_loops_once_when_nested(monkeypatch):
    """_train and _run (BiC trains in _run; PODNet's _train calls its _run) are both timed, the outer call only."""
    from cim_plugin.pycil import runner

    ticks = iter(range(100))
    monkeypatch.setattr(runner.time, "perf_counter", lambda: float(next(ticks)))

    class Learner:
        def _train(self):
            return self._run() + 1

        def _run(self):
            return 1

    learner = Learner()
    timer = runner._TrainTimer(learner)
    assert learner._train() == 2 and timer.seconds == 2.0  # ticks: outer start 0, inner start 1, outer end 2
    assert learner._run() == 1 and timer.seconds == 3.0  # a _run on its own (BiC): ticks 3, 4
