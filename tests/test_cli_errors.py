"""Bad input through exps/run.py: one clear message and exit code 2, never a deep stack trace."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, requires_pycil, run_cli, tiny_config, write_config


def _run(tmp_path, **overrides):
    cfg = write_config(tmp_path / "c.json", tiny_config(**overrides))
    return run_cli([cfg, "--out", tmp_path / "out"], timeout=120)


def _assert_clear(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_missing_submodule_prints_the_git_command(tmp_path):
    env = dict(os.environ, CIM_PYCIL_DIR=str(tmp_path / "empty"))
    cfg = write_config(tmp_path / "c.json", tiny_config())
    result = subprocess.run([sys.executable, str(REPO / "exps" / "run.py"), str(cfg)], capture_output=True,
                            text=True, env=env, timeout=120)
    _assert_clear(result, "git submodule update --init third_party/PyCIL")


def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"dataset": "synthetic",\n "model_name": icarl}\n')
    _assert_clear(run_cli([path]), "bad.json:2:", "malformed JSON")


@requires_pycil
def test_unknown_model_lists_valid_names(tmp_path):
    _assert_clear(_run(tmp_path, model_name="icarll"), "icarll", "'icarl'", "'der'", "'foster'")


@requires_pycil
def test_unknown_dataset_lists_valid_names(tmp_path):
    _assert_clear(_run(tmp_path, dataset="cifar1000"), "cifar1000", "'synthetic'", "'cifar100'")


@requires_pycil
def test_init_cls_larger_than_dataset(tmp_path):
    _assert_clear(_run(tmp_path, init_cls=50), '"init_cls" is 50', "only 15 classes")


@requires_pycil
def test_device_that_cannot_be_parsed(tmp_path):
    _assert_clear(_run(tmp_path, device=["gpu0"]), "gpu0", '"cpu"')


@requires_pycil
def test_data_root_with_wrong_layout(tmp_path):
    (tmp_path / "imnet").mkdir()
    _assert_clear(_run(tmp_path, dataset="imagenet100", data_root=str(tmp_path / "imnet")), "train")


@requires_pycil
def test_out_of_range_cim_key(tmp_path):
    _assert_clear(_run(tmp_path, cim=True, mask_threshold=1.5), '"mask_threshold"')


@requires_pycil
def test_typo_key_warns_with_closest_valid_key(tmp_path):
    """A key nothing reads warns (naming the closest valid key) but does not stop the run."""
    sys.path.insert(0, str(REPO))
    from cim_plugin.pycil.runner import prepare

    import io
    from contextlib import redirect_stderr

    buf = io.StringIO()
    with redirect_stderr(buf):
        prepare(tiny_config(epoch=3))
    assert 'did you mean "epochs"' in buf.getvalue()



@requires_pycil
@pytest.mark.parametrize("key,value,expected", [
    ("epochs", "ten", "an integer"), ("epochs", 2.5, "an integer"), ("epochs", True, "an integer"),
    ("milestones", 5, "a list of numbers"), ("milestones", [1, "2"], "a list of numbers"),
    ("lrate", "0.1", "a number"),
])
def test_module_constant_of_the_wrong_type(tmp_path, key, value, expected):
    """A JSON key overriding a PyCIL module constant must have the constant's type (checked before running)."""
    result = _run(tmp_path, **{key: value})
    _assert_clear(result, f'"{key}"', expected, f"got {value!r}")
    assert "Learning on" not in result.stdout


@requires_pycil
def test_unknown_convnet_lists_valid_names(tmp_path):
    _assert_clear(_run(tmp_path, convnet_type="resnet23"), '"convnet_type"', "resnet23", "'resnet32'", "'resnet18'",
                  "'cosine_resnet32'")


@requires_pycil
@pytest.mark.parametrize("cim", [False, True])
def test_budget_too_small_for_one_exemplar_stops_before_training(tmp_path, cim):
    """memory_size 1 for 10 classes: neither a full image (baseline) nor the cheapest CIM exemplar (the
    image at 1/r resolution, 3*16*16 + 8 bytes for 32x32 at r = 4) fits in a class's 307 bytes."""
    result = _run(tmp_path, memory_size=1, synthetic_num_classes=10, cim=cim, cim_mask="cam")
    detail = "costs 776 bytes" if cim else "memory_size // classes = 0 exemplars per class"
    _assert_clear(result, "memory budget too small", "smallest possible exemplar", detail,
                  '"memory_size" to at least')
    assert "Learning on" not in result.stdout  # stopped before phase 0 trained


@requires_pycil
@pytest.mark.parametrize("cim", [False, True])
def test_bic_with_no_exemplar_to_hold_out_stops_before_training(tmp_path, cim):
    """BiC holds out int(0.1 * memory_size / known) exemplars per old class: memory_size 30 with 10 known
    classes in the last phase gives 0, an empty validation set PyCIL cannot train on; the run stops before
    phase 0 with the memory_size that would do (100)."""
    cfg = write_config(tmp_path / "bic.json", tiny_config(model_name="bic", cim=cim, memory_size=30))
    result = run_cli([cfg, "--out", tmp_path / "out"], timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'raise "memory_size" to at least 100' in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "results.json").exists()
