"""The benchmark's accuracy curves put their x ticks where the phases end, as a CIL paper draws them."""

import numpy as np
import pytest

from cim_plugin.bench import figures


def test_phase_ticks_are_the_classes_seen_after_each_phase():
    assert figures.phase_ticks([[5, 10, 15]]) == [5.0, 10.0, 15.0]
    # two variants of one panel with different schedules share one axis: the union of their phases
    assert figures.phase_ticks([np.array([10, 20]), [10, 15, 20]]) == [10.0, 15.0, 20.0]
    # too many phases to label each one: the caller falls back to evenly spaced ticks
    assert figures.phase_ticks([list(range(5, 105, 5))]) == []


@pytest.mark.parametrize("n_phases, expect_phase_ticks", [(3, True), (20, False)])
def test_plot_curves_draws_the_phase_ticks(tmp_path, monkeypatch, n_phases, expect_phase_ticks):
    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)  # keep the figure to read its axes
    x = np.arange(1, n_phases + 1) * 5
    line = {"x": x, "mean": np.linspace(80, 30, n_phases), "std": np.full(n_phases, 2.0)}
    panels = [{"title": "icarl", "lines": [dict(line, label="baseline"), dict(line, label="cim")]}]
    out = figures.plot_curves(panels, tmp_path / "curves.png", dpi=40)
    assert out.is_file() and out.stat().st_size > 0
    ticks = list(kept[0].axes[0].get_xticks())
    if expect_phase_ticks:
        assert ticks == [5.0, 10.0, 15.0]
    else:
        assert len(ticks) < n_phases  # MaxNLocator's few integer ticks, not one per phase
