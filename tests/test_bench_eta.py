"""The benchmark's time-left estimate: per kind of run, in flight counted, shared over the jobs."""

import json

import pytest

from cim_plugin.bench import execute, plan
from cim_plugin.bench.eta import eta_seconds, eta_text


def test_runs_left_are_estimated_from_finished_runs_of_their_kind():
    finished = [(("icarl", "baseline"), 100.0), (("icarl", "cim"), 200.0), (("icarl", "cim"), 220.0)]
    # same kind: its mean; a config not seen yet: the mean of its variant; two jobs share the work
    left = [(("icarl", "cim"), 0.0), (("der", "baseline"), 0.0), (("der", "cim"), 0.0)]
    assert eta_seconds(finished, left, jobs=2) == pytest.approx((210 + 100 + 210) / 2)
    # a run in flight counts what it has left, never less than nothing
    assert eta_seconds(finished, [(("icarl", "cim"), 60.0), (("icarl", "baseline"), 500.0)]) == pytest.approx(150)
    # a variant never seen falls back on every finished run
    assert eta_seconds(finished, [(("der", "cim-cam"), 0.0)]) == pytest.approx(520 / 3)
    assert eta_seconds([], left, jobs=2) is None  # nothing finished: no estimate


def test_eta_text():
    assert eta_text(None) == "" and eta_text(0.0) == ""
    assert eta_text(42) == " | about 42 s left"
    assert eta_text(30 * 60) == " | about 30 min left"
    assert eta_text(3 * 3600) == " | about 3.0 h left"


def test_each_closing_line_says_how_long_the_benchmark_has_left(tmp_path, monkeypatch):
    """Four runs, one at a time, each 'taking' 10 s of a fake clock, the first finished before (skipped on
    resume, counted with its recorded wall time): after each run the estimate is the runs still to go, 10 s
    each; the last line has nothing left to estimate."""
    clock = [0.0]
    monkeypatch.setattr(execute.time, "perf_counter", lambda: clock[0])
    specs = [plan.RunSpec("c", "baseline" if k % 2 == 0 else "cim", k // 2, {"seed": [k // 2]},
                                tmp_path / f"run_{k}") for k in range(4)]
    specs[0].dir.mkdir()
    (specs[0].dir / "results.json").write_text(json.dumps({"finished": True, "phases": [], "wall_s": 10.0}))

    def runner(spec, resume):
        clock[0] += 10.0
        (spec.dir / "results.json").write_text(json.dumps({"finished": True, "phases": [], "wall_s": 10.0}))
        return 0

    lines = []
    assert execute.execute_runs(specs, True, runner, lines.append) == []
    done = [ln for ln in lines if "done in" in ln]
    assert done[0].endswith("about 20 s left")  # run_1 (cim) done: run_2 and run_3 left, 10 s each
    assert done[1].endswith("about 10 s left")
    assert done[2].endswith("10 s")  # the last run: the headline's wall time, no estimate after it
    assert "left" not in done[2]
