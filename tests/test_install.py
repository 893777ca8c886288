"""Installing into an environment the user already has: the package installed with pip (not run from the clone)
finds PyCIL through CIM_PYCIL_DIR, a CIM_PYCIL_DIR pointing at another PyCIL checkout is the one imported, and a
wrong one stops with an error that names the variable and the fix."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, requires_pycil, tiny_config, write_config

SUBMODULE = REPO / "third_party" / "PyCIL"
WHERE = ("import cim_plugin, sys; from cim_plugin.pycil.host import import_pycil, learner_class; "
         "trainer = import_pycil(); learner_class('icarl'); "
         "print(cim_plugin.__file__); print(trainer.__file__); print(sys.modules['models.icarl'].__file__)")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CIM_PYCIL_DIR", "PYTHONPATH")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def pycil_elsewhere(tmp_path_factory):
    """A PyCIL checkout outside the repository (a copy of the submodule's files)."""
    target = tmp_path_factory.mktemp("elsewhere") / "PyCIL"
    shutil.copytree(SUBMODULE, target, ignore=shutil.ignore_patterns(".git", "__pycache__", "data", "logs"))
    return target


def test_wrong_pycil_dir_is_a_clear_error(tmp_path):
    cfg = write_config(tmp_path / "c.json", tiny_config())
    wrong = tmp_path / "not_pycil"
    wrong.mkdir()
    result = subprocess.run([sys.executable, str(REPO / "exps" / "run.py"), str(cfg)], capture_output=True,
                            text=True, env=_env(CIM_PYCIL_DIR=str(wrong)), timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"CIM_PYCIL_DIR={wrong} holds no PyCIL checkout" in result.stderr
    assert "git clone https://github.com/G-U-N/PyCIL.git" in result.stderr and "unset" in result.stderr


@requires_pycil
def test_pycil_dir_elsewhere_is_honoured(pycil_elsewhere, tmp_path):
    result = subprocess.run([sys.executable, "-c", WHERE], capture_output=True, text=True, timeout=120,
                            env=_env(CIM_PYCIL_DIR=str(pycil_elsewhere), PYTHONPATH=str(REPO)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    _, trainer_file, icarl_file = result.stdout.split()
    assert Path(trainer_file) == pycil_elsewhere / "trainer.py"
    assert Path(icarl_file) == pycil_elsewhere / "models" / "icarl.py"
    # and a whole run works with it
    cfg = write_config(tmp_path / "c.json", tiny_config(synthetic_num_classes=10, synthetic_train_per_class=8,
                                                        synthetic_test_per_class=4))
    run = subprocess.run([sys.executable, str(REPO / "exps" / "run.py"), str(cfg), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=_env(CIM_PYCIL_DIR=str(pycil_elsewhere), PYTHONPATH=str(REPO)))
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").is_file()


@requires_pycil
def test_pip_installed_package_finds_pycil_by_env(pycil_elsewhere, tmp_path):
    """``pip install .`` (not editable: no submodule beside the installed package) into a folder of its own,
    offline, with the environment's setuptools; then the installed copy runs from another folder."""
    source = tmp_path / "src"
    shutil.copytree(REPO / "cim_plugin", source / "cim_plugin", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--target", str(site), "--quiet", str(source)], capture_output=True, text=True, timeout=300,
                         env=_env(PIP_CONSTRAINT="", PIP_FIND_LINKS=""))
    if pip.returncode != 0 and "setuptools" in pip.stderr and "No module named" in pip.stderr:
        pytest.skip("setuptools is not installed in this environment (needed to build without network)")
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert list(site.glob("cim_plugin-*.dist-info"))

    found = subprocess.run([sys.executable, "-c", WHERE], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                           env=_env(CIM_PYCIL_DIR=str(pycil_elsewhere), PYTHONPATH=str(site)))
    assert found.returncode == 0, found.stderr[-2000:]
    package, trainer_file, _ = found.stdout.split()
    assert Path(package).parent == site / "cim_plugin"
    assert Path(trainer_file) == pycil_elsewhere / "trainer.py"

    missing = subprocess.run([sys.executable, "-c", WHERE], capture_output=True, text=True, timeout=120,
                             cwd=tmp_path, env=_env(PYTHONPATH=str(site)))
    assert missing.returncode != 0
    assert "set CIM_PYCIL_DIR to a PyCIL clone" in missing.stderr
