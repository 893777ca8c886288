"""Config reading and validation, metrics (no PyCIL needed)."""

import pytest

from cim_plugin import metrics
from cim_plugin.config import (
    ConfigError,
    load_config,
    unknown_key_warnings,
    validate_cim_keys,
    validate_run_keys,
    with_defaults,
)
from cim_plugin.pycil import resolve_devices


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "dataset": "synthetic",\n  "init_cls": 2,,\n}\n')
    with pytest.raises(ConfigError, match=r"bad\.json:3:"):
        load_config(path)


def test_missing_file_and_non_object(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(tmp_path / "list.json")


def test_typo_warning_names_closest_key():
    warnings = unknown_key_warnings({"epoch": 3, "epochs": 1}, {"epochs", "init_epoch", "lrate"})
    assert len(warnings) == 1
    assert '"epoch"' in warnings[0] and 'did you mean "epochs"' in warnings[0]


def _base(**kw):
    cfg = with_defaults(
        {"dataset": "synthetic", "model_name": "icarl", "init_cls": 2, "increment": 2, "memory_size": 10,
         "convnet_type": "resnet32"}
    )
    cfg.update(kw)
    return cfg


def test_run_keys_validated():
    cfg = _base(seed=5)
    validate_run_keys(cfg)
    assert cfg["seed"] == [5]
    with pytest.raises(ConfigError, match="required"):
        validate_run_keys({"dataset": "synthetic"})
    with pytest.raises(ConfigError, match='"init_cls"'):
        validate_run_keys(_base(init_cls=0))
    with pytest.raises(ConfigError, match='"increment" must be an integer'):
        validate_run_keys(_base(increment="2"))


@pytest.mark.parametrize(
    "key,value",
    [("mask_threshold", 1.0), ("mask_threshold", 0.0), ("compress_ratio", -4), ("compress_ratio", 1.0),
     ("lr_ratio", -0.1), ("reg_coef", -1), ("meta_batch_size", 0), ("cim_mask", "box"), ("cim", "yes"),
     ("cam_update_interval", 0), ("randombbxblur_prob_incre", 1.5), ("phi_lr", 0)],
)
def test_cim_keys_out_of_range(key, value):
    cfg = _base(**{key: value})
    with pytest.raises(ConfigError, match=f'"{key}"'):
        validate_cim_keys(cfg)


def test_cim_defaults_are_the_papers():
    cfg = _base()
    validate_cim_keys(cfg)
    assert cfg["compress_ratio"] == 4.0 and cfg["mask_threshold"] == 0.6 and cfg["cim_mask"] == "cim"
    assert cfg["cim"] is False


def test_devices():
    import torch

    assert resolve_devices(["cpu"]) == [torch.device("cpu")]
    assert resolve_devices(["-1"]) == [torch.device("cpu")]
    assert resolve_devices([-1]) == [torch.device("cpu")]
    with pytest.raises(ConfigError, match="not understood"):
        resolve_devices(["gpu0"])
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="CUDA is not available"):
            assert resolve_devices(["0", "1"]) == [torch.device("cpu")]
    else:
        with pytest.raises(ConfigError, match="does not exist"):
            resolve_devices([str(torch.cuda.device_count())])


def test_metrics():
    import numpy as np

    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 3, 3])
    assert metrics.task_accuracies(y_pred, y_true, [2, 4]) == [75.0, 75.0]
    m = metrics.accuracy_matrix([[100.0], [80.0, 90.0], [60.0, 70.0, 95.0]])
    assert m[0] == [100.0, None, None]
    # task 0: best 100 -> 60 (40); task 1: best 90 -> 70 (20)
    assert metrics.forgetting(m) == pytest.approx(30.0)
    assert metrics.forgetting([[50.0]]) is None
    assert metrics.average_incremental_accuracy([50.0, 70.0]) == 60.0
