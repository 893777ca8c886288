"""Bad input through exps/run.py: one clear message and exit code 2, never a deep stack trace."""

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr

import pytest
import torch
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
    _assert_clear(_run(tmp_path, model_name="icarll"), "icarll", "'icarl'", "'der'", "'foster'",
                  'did you mean "icarl"?')


@requires_pycil
def test_unknown_dataset_lists_valid_names(tmp_path):
    _assert_clear(_run(tmp_path, dataset="cifar1000"), "cifar1000", "'synthetic'", "'cifar100'",
                  'did you mean "cifar100"?')


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

    buf = io.StringIO()
    with redirect_stderr(buf):
        prepare(tiny_config(epoch=3))
    assert 'did you mean "epochs"' in buf.getvalue()
    assert buf.getvalue().count('"epoch"') == 1, buf.getvalue()  # once (it was printed twice: print + logging)


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


def _prepare(config, strict=False):
    """prepare() in-process: (the args, what it printed to stderr)."""
    from cim_plugin.pycil.runner import prepare

    buf = io.StringIO()
    with redirect_stderr(buf):
        args = prepare(config, strict=strict)
    return args, buf.getvalue()


@requires_pycil
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback is for machines without CUDA")
def test_gpu_ids_on_a_cpu_machine_warn_once():
    """PyCIL's configs name four GPUs: on a CPU machine one clean line says so (it was four, each with its
    source line); run.log gets the warnings too (tests/test_resume.py, finished run)."""
    args, err = _prepare(tiny_config(device=["0", "1", "2", "3"]))
    assert args["_devices"] == [torch.device("cpu")]
    lines = [line for line in err.splitlines() if "CUDA" in line]
    assert lines == ["warning: \"device\" ['0', '1', '2', '3'] requested but CUDA is not available on this machine: "
                     "running on the CPU (set \"device\": [\"cpu\"] to say so)"], err
    assert "warnings.warn" not in err and "UserWarning" not in err


@requires_pycil
@pytest.mark.parametrize("key,value,hint", [
    ("cim_mask", "cams", '"cam"'), ("exemplar_codec", "jpg", '"jpeg"'), ("phi_lr_schedule", "constnt", '"constant"'),
])
def test_cim_values_suggest_the_closest(key, value, hint):
    from cim_plugin.config import ConfigError

    with pytest.raises(ConfigError, match=f"did you mean {hint}") as err:
        _prepare(tiny_config(cim=True, **{key: value}))
    assert "fix:" in str(err.value)


@requires_pycil
def test_cim_key_typo_suggests_the_cim_key():
    _, err = _prepare(tiny_config(cim=True, compres_ratio=2.0, cam_update_intervall=3))
    assert 'did you mean "compress_ratio"' in err and 'did you mean "cam_update_interval"' in err


@requires_pycil
def test_memory_size_out_of_range_says_the_fix(tmp_path):
    _assert_clear(_run(tmp_path, memory_size=-100), '"memory_size" must lie in [0, inf), got -100',
                  '(fix: e.g. "memory_size": 2000')


@requires_pycil
def test_strict_makes_config_warnings_an_error_before_training():
    """--strict (run_config/prepare strict=True) or "strict": true: every unknown key and ignored value in one
    ConfigError; without it they are warnings and the run goes on."""
    from cim_plugin.config import ConfigError

    config = tiny_config(epoch=3, compress_ratio=2.0)  # a typo, and a CIM key without "cim": true
    _, err = _prepare(dict(config))
    assert 'did you mean "epochs"' in err and "compress_ratio" not in err  # a CIM variant's keys: no warning
    for strict, extra in ((True, {}), (False, {"strict": True})):
        with pytest.raises(ConfigError) as raised:
            _prepare(dict(config, **extra), strict=strict)
        message = str(raised.value)
        assert "strict mode" in message and "2 config problem(s)" in message
        assert '"epoch"' in message and 'did you mean "epochs"' in message
        assert "['compress_ratio']" in message and '"cim" is not true' in message
    _prepare(tiny_config(strict=True))  # a clean config runs strict
    with pytest.raises(ConfigError, match='"strict" must be true or false'):
        _prepare(tiny_config(strict="yes"))


@requires_pycil
def test_ignored_values_warn_and_stop_a_strict_run():
    from cim_plugin.config import ConfigError

    config = tiny_config(cim=True, jpeg_quality=50, dataset="imagenet100", data_root="/nowhere")
    _, err = _prepare(dict(config))
    assert 'config key "synthetic_image_size" is read by dataset(s) [\'synthetic\'] only' in err
    assert "jpeg_quality" not in err  # a JPEG variant's key: reported under strict only
    with pytest.raises(ConfigError, match="synthetic_image_size") as raised:
        _prepare(dict(config), strict=True)
    assert '"jpeg_quality" is set but "exemplar_codec" is \'raw\'' in str(raised.value)


@requires_pycil
def test_strict_flag_on_the_command_line(tmp_path):
    cfg = write_config(tmp_path / "c.json", tiny_config(epoch=3))
    result = run_cli([cfg, "--out", tmp_path / "out", "--strict"], timeout=120)
    _assert_clear(result, "strict mode", '"epoch"', 'did you mean "epochs"')
    assert "Learning on" not in result.stdout and not (tmp_path / "out" / "results.json").exists()
