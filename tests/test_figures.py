"""The benchmark's accuracy curves put their x ticks where the phases end, as a CIL paper draws them."""

import numpy as np
import pytest

from cim_plugin.bench import figures, report
from cim_plugin.bench import panels as bench_panels


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


def _kept_figures(monkeypatch):
    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)  # keep the figure to read its axes
    return kept


@pytest.mark.parametrize("counts, note", [([1], "one seed"), ([3, 3], "mean ± std over 3 seeds"),
                                          ([2, 3], "mean ± std over 2–3 seeds"), ([None], "mean ± std over seeds")])
def test_seeds_note_says_what_the_numbers_are(counts, note):
    assert figures.seeds_note(counts) == note


@pytest.mark.parametrize("seeds, note", [(1, "(one seed)"), (3, "(mean ± std over 3 seeds)")])
def test_curves_title_says_how_many_seeds(tmp_path, monkeypatch, seeds, note):
    kept = _kept_figures(monkeypatch)
    line = {"x": [5, 10], "mean": [80.0, 60.0], "std": [np.nan, np.nan] if seeds == 1 else [1.0, 2.0], "seeds": seeds}
    figures.plot_curves([{"title": "icarl", "lines": [dict(line, label="baseline")]}], tmp_path / "c.png", dpi=40)
    assert kept[0]._suptitle.get_text().endswith(note)


def test_plot_old_new_draws_old_and_new_per_variant(tmp_path, monkeypatch):
    kept = _kept_figures(monkeypatch)
    x = [5, 10, 15]
    line = {"x": x, "old_mean": [np.nan, 40.0, 30.0], "old_std": [np.nan] * 3, "new_mean": [90.0, 85.0, 80.0],
            "new_std": [np.nan] * 3, "seeds": 1}
    panels = [{"title": "icarl (x, synthetic)", "lines": [dict(line, label="baseline"), dict(line, label="cim")]}]
    out = figures.plot_old_new(panels, tmp_path / "old_new.png", dpi=40)
    assert out.read_bytes().startswith(b"\x89PNG")
    ax = kept[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline, old", "baseline, new", "cim, old",
                                                                  "cim, new"]
    assert list(ax.get_xticks()) == [5.0, 10.0, 15.0]
    assert list(ax.lines[1].get_ydata()) == [90.0, 85.0, 80.0]
    assert kept[0]._suptitle.get_text() == "Top-1 on old vs new classes per phase (one seed)"


def test_plot_accuracy_matrix_writes_the_cells_and_masks_the_upper_triangle(tmp_path, monkeypatch):
    kept = _kept_figures(monkeypatch)
    matrix = np.array([[90.0, np.nan, np.nan], [50.0, 88.0, np.nan], [30.0, 45.0, 86.0]])
    panels = [{"title": "cim: icarl", "matrix": matrix, "seeds": 3, "tasks": ["0–4", "5–9", "10–14"]}]
    out = figures.plot_accuracy_matrix(panels, tmp_path / "accuracy_matrix.png", dpi=40)
    assert out.read_bytes().startswith(b"\x89PNG")
    ax = kept[0].axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(["90", "50", "88", "30", "45", "86"])  # 6 cells, no NaN
    assert ax.get_images()[0].get_array().mask[0, 2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0–4", "5–9", "10–14"]
    assert "mean over 3 seeds" in ax.get_title()
    with pytest.raises(ValueError, match="square"):
        figures.plot_accuracy_matrix([{"title": "bad", "matrix": np.zeros((2, 3))}], tmp_path / "bad.png")


def _run_results(cim, seed, matrix):
    ends = [5 * (i + 1) for i in range(len(matrix))]
    return {"learner": "icarl", "dataset": "synthetic", "seed": seed, "cim": cim, "finished": True,
            "phases": [{"phase": i, "classes": c, "top1_cnn": 50.0} for i, c in enumerate(ends)],
            "accuracy_matrix_cnn": matrix}


def test_write_run_figures_and_report_panels(tmp_path):
    matrix = [[80.0, None], [40.0, 70.0]]
    written = report.write_run_figures(tmp_path, _run_results(True, 1, matrix))
    assert sorted(written) == ["accuracy_matrix.png", "old_new.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written.values())
    groups = {("icarl_x", "cim"): {1: _run_results(True, 1, matrix), 2: _run_results(True, 2, [[60.0, None],
                                                                                                [20.0, 90.0]])}}
    (panel,) = bench_panels.old_new_panels(groups, list(groups))
    (line,) = panel["lines"]
    assert line["seeds"] == 2 and line["x"] == [5, 10]
    assert np.isnan(line["old_mean"][0]) and line["old_mean"][1] == pytest.approx(30.0)
    assert line["new_mean"] == pytest.approx([70.0, 80.0])
    (mpanel,) = bench_panels.matrix_panels(groups, list(groups))
    assert mpanel["seeds"] == 2 and mpanel["tasks"] == ["0–4", "5–9"]
    np.testing.assert_allclose(mpanel["matrix"], [[70.0, np.nan], [30.0, 80.0]])
    # runs written before the accuracy matrix was stored: no panel, no figure
    assert bench_panels.matrix_panels({("a", "cim"): {1: {"phases": [{"classes": 5}]}}}, [("a", "cim")]) == []
