"""PyCIL's closing lines built from results.json phases (cim_plugin/pycil/summary.py); the whole-run check against
PyCIL's main.py is tests/test_run_baseline.py::test_pycil_summary_lines_as_pycil_main_prints_them."""

import pytest

from cim_plugin.pycil import summary


def _phase(top1, top5, groups, nme=None, exemplars=20):
    return {"top1_cnn": top1, "top5_cnn": top5, "top1_nme": nme, "top5_nme": None if nme is None else 99.0,
            "grouped_cnn": groups, "grouped_nme": None if nme is None else groups,
            "exemplars": exemplars, "memory_bytes": exemplars * 3072, "memory_budget_bytes": 61440,
            "exemplars_per_class": {"min": 1, "mean": 2.0, "max": 3}}


def test_group_forgetting_pads_to_a_square_table_as_pycil():
    # 1 group ("00-09") over 3 phases: PyCIL's 3 x 3 table has two all-zero rows; the first 2 rows count.
    groups = [{"total": 50.0, "00-09": 50.0}, {"00-09": 30.0}, {"00-09": 20.0}]
    assert summary.group_forgetting(groups) == pytest.approx((50.0 - 20.0 + 0.0) / 2)
    # 2 groups over 2 phases: the first group counts; a group not yet seen counts 0 before
    assert summary.group_forgetting([{"00-09": 80.0}, {"00-09": 60.0, "10-19": 90.0}]) == pytest.approx(20.0)
    assert summary.group_forgetting([{"00-09": 80.0}]) is None
    # groups sorted by their first class id, not as strings ("100-109" after "90-99")
    many = [{f"{i:02d}-{i + 9:02d}": 10.0 for i in range(0, 110, 10)}] * 2
    many[1] = {**many[1], "100-109": 0.0}
    assert summary.group_forgetting(many) == pytest.approx(0.0)


def test_lines_without_nme_and_the_closing_lines():
    phases = [_phase(60.0, 100.0, {"total": 60.0, "00-09": 60.0}), _phase(40.0, 90.0, {"total": 40.0, "00-09": 40.0})]
    lines = summary.phase_lines(phases)
    assert lines == ["No NME accuracy.", "CNN: {'total': 40.0, '00-09': 40.0}", "CNN top1 curve: [60.0, 40.0]",
                     "CNN top5 curve: [100.0, 90.0]", "Average Accuracy (CNN): 50.0"]
    final = summary.final_lines({"phases": phases, "forgetting_cnn": 20.0, "cim": True})
    assert final == ["Forgetting (CNN): 20.0", "Forgetting over tasks (CNN, results.json forgetting_cnn): 20.0",
                     "Memory held: 20 exemplars (1-3 per class, mean 2.0), 61440 bytes of a 61440-byte budget (CIM)"]


def test_lines_with_nme():
    phases = [_phase(60.0, 100.0, {"00-09": 60.0}, nme=70.0), _phase(40.0, 90.0, {"00-09": 40.0}, nme=50.0)]
    lines = summary.phase_lines(phases)
    assert lines[:2] == ["CNN: {'00-09': 40.0}", "NME: {'00-09': 40.0}"]
    assert "NME top1 curve: [70.0, 50.0]" in lines and lines[-1] == "Average Accuracy (NME): 60.0"
    assert "Forgetting (NME): 20.0" in summary.final_lines({"phases": phases, "forgetting_cnn": None})
