"""Config reading and validation, metrics (no PyCIL needed)."""

import re

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
     ("cam_update_interval", 0), ("randombbxblur_prob_incre", 1.5), ("phi_lr", 0),
     ("phi_lr_schedule", "cosine"), ("inner_grad_through_mask", "yes"), ("inner_grad_through_mask", 1)],
)
def test_cim_keys_out_of_range(key, value):
    cfg = _base(**{key: value})
    with pytest.raises(ConfigError, match=f'"{key}"') as err:
        validate_cim_keys(cfg)
    assert "(fix: " in str(err.value), str(err.value)  # every range error says the fix


@pytest.mark.parametrize("key,value", [
    ("memory_size", -100), ("memory_size", "2000"), ("init_cls", 0), ("increment", 2.5), ("seed", "x"),
    ("device", []), ("dataset", 3), ("strict", "yes"), ("fixed_memory", True),
])
def test_run_keys_out_of_range_say_the_fix(key, value):
    cfg = _base(**{key: value})
    if key == "fixed_memory":
        cfg["memory_per_class"] = -1
    with pytest.raises(ConfigError) as err:
        validate_run_keys(cfg)
    assert "(fix: " in str(err.value), str(err.value)


def test_inf_bounds_are_open():
    with pytest.raises(ConfigError, match=re.escape('"memory_size" must lie in [0, inf), got -100 (fix: e.g. '
                                                    '"memory_size": 2000')):
        validate_run_keys(_base(memory_size=-100))


def test_cim_defaults_are_the_papers():
    cfg = _base()
    validate_cim_keys(cfg)
    assert cfg["compress_ratio"] == 4.0 and cfg["mask_threshold"] == 0.6 and cfg["cim_mask"] == "cim"
    assert cfg["phi_lr_schedule"] == "host"  # φ follows the CIL schedule, as the official code
    assert cfg["inner_grad_through_mask"] is False  # the inner gradient takes the hybrid image as data (the paper)
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


def test_constant_overrides_keep_the_constants_types():
    import types

    from cim_plugin.pycil import check_constant_overrides

    module = types.ModuleType("models.fake")
    module.epochs, module.lrate, module.milestones, module.flag, module.mode = 10, 0.1, [5, 8], False, "a"
    ok = {"epochs": 3, "lrate": 1, "milestones": [1, 2.5], "flag": True, "mode": "b", "other": "x"}
    check_constant_overrides(ok, [module])  # an int for a float constant is fine; unrelated keys are ignored
    for key, value, expected in [("epochs", 3.0, "an integer"), ("epochs", True, "an integer"),
                                 ("lrate", False, "a number"), ("milestones", (1, 2), "a list of numbers"),
                                 ("milestones", [True], "a list of numbers"), ("flag", 1, "true or false"),
                                 ("mode", 1, "a string")]:
        with pytest.raises(ConfigError, match=f'"{key}" overrides.*{expected}.*got {re.escape(repr(value))}'):
            check_constant_overrides({key: value}, [module])


class _MemoryLearner:
    """Stands for a PyCIL learner that keeps exemplars (its source names build_rehearsal_memory)."""

    def build_rehearsal_memory(self, data_manager, per_class):
        pass


def _data_manager(classes=15, side=32):
    """The DataManager attributes the budget check reads: 32x32 uint8 images, CIFAR-like transforms."""
    import types

    import numpy as np
    from torchvision import transforms

    return types.SimpleNamespace(
        use_path=False, _train_data=np.zeros((3, side, side, 3), np.uint8), _class_order=list(range(classes)),
        _train_trsf=[], _test_trsf=[transforms.ToTensor()], _common_trsf=[transforms.Normalize((0.5,) * 3, (0.5,) * 3)])


@pytest.mark.parametrize("memory_size,cim,fits", [
    (15, False, True), (14, False, False),  # baseline: one full 32x32 image (3072 B) per class
    (5, True, True),  # CIM: 5 * 3072 // 15 = 1024 B per class >= 3*16*16 + 8 = 776 B (image at 1/4 resolution)
    (3, True, False),  # 614 B < 776 B: raise memory_size to ceil(15 * 776 / 3072) = 4
])
def test_budget_check_uses_the_cheapest_possible_exemplar(memory_size, cim, fits):
    from cim_plugin.pycil.runner import check_budget_fits

    config = _base(memory_size=memory_size, cim=cim)
    if fits:
        check_budget_fits(config, _MemoryLearner(), _data_manager())
        return
    need = 4 if cim else 15
    with pytest.raises(ConfigError, match=f'memory budget too small.*"memory_size" to at least {need}'):
        check_budget_fits(config, _MemoryLearner(), _data_manager())


def test_budget_check_skips_learners_without_memory():
    from cim_plugin.pycil.runner import check_budget_fits

    check_budget_fits(_base(memory_size=0), object(), _data_manager())


@pytest.mark.parametrize("memory_size,fits", [(15, True), (14, False)])
def test_budget_check_prices_a_full_mask_as_a_whole_image(memory_size, fits):
    """"cim_mask": "full" keeps whole images (boxes implicit): one exemplar per class needs a full image's
    3072 B, as the baseline does, not the 776 B of a low-resolution frame."""
    from cim_plugin.pycil.runner import check_budget_fits

    config = _base(memory_size=memory_size, cim=True, cim_mask="full")
    if fits:
        check_budget_fits(config, _MemoryLearner(), _data_manager())
        return
    with pytest.raises(ConfigError, match='smallest possible exemplar, the whole 32x32 image.*"memory_size" to at least 15'):
        check_budget_fits(config, _MemoryLearner(), _data_manager())


@pytest.mark.parametrize("mask", ["cim", "full"])
def test_budget_check_prices_jpeg_exemplars_by_their_encoded_bytes_and_the_shared_tables(mask):
    """With "exemplar_codec": "jpeg" the smallest memory_size the check accepts is the one where a class's
    share, less its part of the tables held once, holds one encoded exemplar: the memory itself then
    keeps one exemplar per class at that size and cannot at one less."""
    import torch

    from cim_plugin.method.memory import make_memory
    from cim_plugin.pycil.runner import check_budget_fits

    def fits(size):
        try:
            check_budget_fits(_base(memory_size=size, cim=True, cim_mask=mask, exemplar_codec="jpeg",
                                    jpeg_quality=75), _MemoryLearner(), _data_manager())
            return True
        except ConfigError as err:
            assert "as JPEG at quality 75" in str(err)
            return False

    smallest = next(size for size in range(1, 16) if fits(size))
    assert smallest < 5  # below the raw CIM minimum (test above): the codec's real bytes are used
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    box = torch.tensor([[0, 0, 32, 32] if mask == "full" else [0, 0, 0, 0]])
    for size, ok in ((smallest, True), (smallest - 1, False)):
        if size < 1:
            continue
        memory = make_memory(size * 3072, {"cim_mask": mask, "exemplar_codec": "jpeg", "jpeg_quality": 75})
        share = size * 3072 // 15 - -(-memory.shared_nbytes // 15)
        if ok:
            assert memory.select_class(image, torch.zeros(1, 4), box, 0, share) == 1
        else:
            with pytest.raises(ValueError, match="not even one exemplar fits"):
                memory.select_class(image, torch.zeros(1, 4), box, 0, share)
