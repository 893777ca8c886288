"""The overhead benchmark's projection from a short run to PyCIL's schedule (pure arithmetic)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_cim_overhead import epoch_loops, phase_parts, plot, project  # noqa: E402


def test_projection_counts_meta_steps_refreshes_and_fixed_costs():
    # Short run: 2 epoch loops. Baseline: 10 s per epoch + 5 s memory/eval. CIM: 11 s per epoch of training,
    # meta steps 2 s per call (1 call inside _train, 1 before the memory), 1 refresh of 3 s, memory build 4 s.
    base = {"wall_s": 25.0, "train_s": 20.0}
    cim = {"wall_s": 22.0 + 2.0 + 3.0 + 2.0 + 6.0, "train_s": 22.0 + 2.0 + 3.0,
           "seconds": {"meta_steps": 4.0, "box_refresh": 3.0, "memory_build": 4.0},
           "calls": {"meta_steps": 2, "box_refresh": 1, "memory_build": 1}}
    r = project(base, cim, loops=2, target_loops=170, interval=40)
    assert r["epoch_base"] == pytest.approx(10.0) and r["epoch_cim"] == pytest.approx(11.0)
    assert r["meta_epoch"] == pytest.approx(2.0) and r["refresh"] == pytest.approx(3.0)
    assert r["base_phase"] == pytest.approx(170 * 10 + 5)
    meta, refresh = 170 * 2.0, 4 * 3.0  # meta before epochs 1..169 and once more; refreshes at 40, 80, 120, 160
    assert r["cim_phase"] == pytest.approx(170 * 11 + meta + refresh + 6.0)
    assert r["meta_refresh_share"] == pytest.approx((meta + refresh) / (170 * 10 + 5))


def test_foster_incremental_phases_boost_then_compress():
    assert epoch_loops("foster", 0, 3) == 3 and epoch_loops("foster", 1, 3) == 6 and epoch_loops("der", 1, 3) == 3


def test_time_breakdown_parts_add_up_and_plot(tmp_path):
    base = {"wall_s": 25.0, "train_s": 20.0}
    cim = {"wall_s": 35.0, "train_s": 27.0, "seconds": {"meta_steps": 4.0, "box_refresh": 3.0, "memory_build": 4.0},
           "calls": {"meta_steps": 2, "box_refresh": 1, "memory_build": 1}}
    row = {"learner": "icarl", "phase": 1, "target_loops": 170, **project(base, cim, 2, 170, 40)}
    b, c = phase_parts(row, 40)
    assert sum(b.values()) == pytest.approx(row["base_phase"]) and sum(c.values()) == pytest.approx(row["cim_phase"])
    assert c["meta steps"] == pytest.approx(340.0) and c["box refreshes"] == pytest.approx(12.0)
    assert b["meta steps"] == 0 and c["memory build + evaluation"] == pytest.approx(6.0)
    out = plot([row], tmp_path / "t.png", 40)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_breakdown_rejects_bars_without_parts(tmp_path):
    from cim_plugin.bench.figures import plot_time_breakdown

    with pytest.raises(ValueError, match="parts"):
        plot_time_breakdown([{"label": "x"}], tmp_path / "t.png")
