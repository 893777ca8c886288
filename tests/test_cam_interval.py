"""A cam_update_interval of at least the phase's epochs is scaled to the schedule (40 of 170 epochs), with a warning.

Without the scaling, a short schedule with the official interval (40) never refreshes the boxes and never
starts the compression augmentation, silently (issue 33).
"""

import json
import logging

import pytest
from conftest import requires_pycil, run_cli, tiny_learner_config, write_config

from cim_plugin.method.cim import CIM
from cim_plugin.method.schedule import scaled_cam_interval


@pytest.mark.parametrize("interval,epochs,expected", [
    (40, 170, 40), (3, 8, 3), (40, None, 40),  # below the epoch count (or unknown): as configured
    (40, 5, 1), (40, 2, 1), (40, 1, 1),  # round(epochs * 40 / 170), at least 1
    (40, 40, 9), (170, 170, 40), (100, 60, 14),
])
def test_scaled_interval_keeps_the_official_ratio(interval, epochs, expected):
    assert scaled_cam_interval(interval, epochs) == expected


def test_cim_warns_once_per_schedule_and_refreshes(caplog):
    cim = CIM({"cam_update_interval": 40})
    with caplog.at_level(logging.WARNING, logger="cim_plugin"):
        cim.start_phase(0, 0, 2, 10, epochs=5)
        cim.start_phase(1, 2, 4, 10, epochs=5)
        assert cim.cam_interval == 1
        cim.start_phase(2, 4, 6, 10, epochs=100)
        assert cim.cam_interval == 40
        cim.start_phase(3, 6, 8, 10)  # epochs unknown (a host that does not say): as configured
        assert cim.cam_interval == 40
    scaled = [r.getMessage() for r in caplog.records if "cam_update_interval" in r.getMessage()]
    assert len(scaled) == 1, scaled
    assert "cam_update_interval 40" in scaled[0] and "5 epochs" in scaled[0] and "using 1 instead" in scaled[0]


@requires_pycil
@pytest.mark.parametrize("learner", ["icarl", "foster"])
def test_short_schedule_refreshes_boxes_in_a_run(tmp_path, learner):
    """The official 40 with 2 epochs a phase: interval 1, so the boxes are refreshed before the second epoch of
    every phase (iCaRL: init_epoch/epochs; FOSTER: init_epochs/boosting_epochs), and run.log says so once."""
    common = dict(cim=True, cim_mask="cam", cam_update_interval=40, synthetic_num_classes=10,
                  synthetic_train_per_class=8, synthetic_test_per_class=4, memory_size=20)
    if learner == "foster":
        common.update(init_epochs=2, boosting_epochs=2, compression_epochs=1)
    else:
        common.update(init_epoch=2, epochs=2, init_milestones=[2], milestones=[2])
    cfg = write_config(tmp_path / "c.json", tiny_learner_config(learner, **common))
    result = run_cli([cfg, "--out", tmp_path / "out"])
    assert result.returncode == 0, result.stderr[-3000:]
    phases = json.loads((tmp_path / "out" / "results.json").read_text())["phases"]
    assert [p["cam_update_interval"] for p in phases] == [1, 1]
    assert [p["calls"]["box_refresh"] for p in phases] == [1, 1]
    log = (tmp_path / "out" / "run.log").read_text()
    assert log.count("cam_update_interval 40 is not below this phase's 2 epochs") == 1, log[-3000:]
    assert "using 1 instead" in log
