"""Shared test fixtures: PyCIL availability, tiny configs, subprocess helpers."""

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cim_plugin.pycil import SUBMODULE_FIX, pycil_available  # noqa: E402
from cim_plugin.pycil.host import pycil_dir  # noqa: E402

PYCIL_MISSING_REASON = (
    "PyCIL SUBMODULE MISSING: third_party/PyCIL is not checked out, so every test that runs PyCIL is "
    f"SKIPPED. Fix: `{SUBMODULE_FIX}` (see README)."
)
requires_pycil = pytest.mark.skipif(not pycil_available(), reason=PYCIL_MISSING_REASON)


# Test files whose tests run whole CIL experiments (PyCIL learners in subprocesses or in-process, the benchmark,
# torchrun): marked "slow". `pytest -m "not slow"` runs the rest (the method, configs, reports, docs) in a few
# minutes; CI runs everything.
SLOW_MODULES = {
    "test_backbones", "test_bench_command", "test_benchmark_join", "test_box_utility", "test_cam_interval",
    "test_cim_datasets", "test_cim_learners", "test_cim_run", "test_cli_errors", "test_demo", "test_der_p",
    "test_distributed", "test_folder_resolution", "test_gpu_hazards", "test_install", "test_lucir",
    "test_mask_growth", "test_official_behaviour", "test_old_class_look", "test_resume", "test_run_baseline",
    "test_shipped_configs", "test_summary",
}
# Single end-to-end tests in otherwise fast files.
SLOW_TESTS = {
    "test_icarl_with_jpeg_exemplars_stays_within_budget", "test_full_raw_holds_what_the_baseline_holds",
    "test_codec_augment_prob_end_to_end_trains_on_jpeg_coded_new_images_from_phase_0",
    "test_icarl_with_auto_quality_chooses_once_and_logs_the_scores",
    "test_averaged_meta_steps_keep_phi_identical_on_two_gloo_processes",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs whole CIL experiments (deselect with -m 'not slow')")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.module is not None and item.module.__name__ in SLOW_MODULES) or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


def pytest_report_header(config):
    if not pycil_available():
        return ["!" * 78, PYCIL_MISSING_REASON, "!" * 78]
    return ["PyCIL: " + str(pycil_dir())]


def pytest_sessionfinish(session, exitstatus):
    if not pycil_available():
        warnings.warn(PYCIL_MISSING_REASON)
        print("\n" + PYCIL_MISSING_REASON, file=sys.stderr)


def tiny_config(**overrides):
    """A PyCIL config small enough to run a whole CIL experiment on the CPU in seconds."""
    config = {
        "prefix": "test",
        "dataset": "synthetic",
        "synthetic_image_size": 32,
        "synthetic_num_classes": 15,
        "synthetic_train_per_class": 16,
        "synthetic_test_per_class": 8,
        "memory_size": 30,
        "memory_per_class": 2,
        "fixed_memory": False,
        "shuffle": True,
        "init_cls": 5,
        "increment": 5,
        "model_name": "icarl",
        "convnet_type": "resnet32",
        "device": ["cpu"],
        "seed": [1993],
        "init_epoch": 1,
        "epochs": 1,
        "init_milestones": [1],
        "milestones": [1],
        "batch_size": 16,
        "num_workers": 0,
    }
    config.update(overrides)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


def run_cli(args, cwd=None, timeout=600):
    """Run exps/run.py in a subprocess; return CompletedProcess (text)."""
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(REPO / "exps" / "run.py"), *map(str, args)],
        cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=env,
    )


FOSTER_KEYS = {
    "beta1": 0.96, "beta2": 0.97, "oofc": "ft", "is_teacher_wa": False, "is_student_wa": False,
    "lambda_okd": 1, "wa_value": 1, "init_epochs": 1, "init_lr": 0.1, "init_weight_decay": 5e-4,
    "boosting_epochs": 1, "compression_epochs": 1, "lr": 0.1, "weight_decay": 5e-4, "T": 2,
}


def tiny_learner_config(learner: str, **overrides):
    """tiny_config for iCaRL, DER or FOSTER (FOSTER reads its hyper-parameters from args)."""
    config = tiny_config(model_name=learner)
    if learner == "foster":
        config.update(FOSTER_KEYS)
        for key in ("init_epoch", "epochs", "init_milestones", "milestones"):
            config.pop(key)
    config.update(overrides)
    return config


def load_exps_script(name: str):
    """The module of ``exps/<name>.py`` (a script, not a package module), for testing its functions; ``name``
    may hold a sub-path, e.g. ``"analysis/box_utility"``."""
    spec = importlib.util.spec_from_file_location(Path(name).name, REPO / "exps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
