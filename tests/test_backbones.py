"""Every ``convnet_type`` that PyCIL's shipped configs (third_party/PyCIL/exps/*.json) name runs a tiny run on the
plug-in's synthetic dataset at 32 px and at 64 px, with the learner of a shipped config naming it (its own keys
kept), or is refused before training with a message that says why and what to do.

64 px is the synthetic dataset's default: CIFAR resnets (resnet32, cosine_resnet32, MEMO's memo_resnet32) need the
plug-in's global average pool there, resnet18 variants its CIFAR stem for a dataset PyCIL does not know."""

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, requires_pycil, tiny_config

pytestmark = requires_pycil

SHIPPED = REPO / "third_party" / "PyCIL" / "exps"

# convnet_type -> the shipped config whose learner runs it here (the fastest of those naming it), and what
# happens at 64 px when that learner cannot run there ("refused: <text the message holds>").
CASES = {
    "resnet32": ("icarl.json", None, "runs"),
    "cosine_resnet32": ("podnet.json", None, "runs"),  # simplecil, coil, aper_finetune call .cuda()
    "memo_resnet32": ("memo.json", None, "runs"),
    "resnet18_cbam": ("pass.json", None, "refused: needs 32x32 images"),
    # the only shipped learner on resnet18_rep (SSRE) cannot be built on the pinned PyCIL: refused at any size,
    # and the backbone itself is shown to run under iCaRL
    "resnet18_rep": ("ssre.json", "icarl", "runs"),
}
REFUSED_LEARNERS = {"ssre": "cannot be built"}


def shipped_convnets():
    names = set()
    for path in SHIPPED.glob("*.json"):
        name = json.loads(path.read_text()).get("convnet_type")
        if name:
            names.add(name)
    return names


def tiny_from_shipped(path: Path, size: int, model_name=None) -> dict:
    """The shipped config with its learner's own keys, shrunk to a seconds-long run on synthetic data."""
    shipped = json.loads(path.read_text())
    config = {**shipped, **tiny_config(
        model_name=model_name or shipped["model_name"], convnet_type=shipped["convnet_type"],
        synthetic_image_size=size, synthetic_num_classes=10, synthetic_train_per_class=8,
        synthetic_test_per_class=4, memory_size=20, ft_epochs=1)}  # ft_epochs: PODNet's fine-tuning (20)
    if "ft_epochs" not in shipped and shipped["model_name"] != "podnet":
        config.pop("ft_epochs")
    return config


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these runs are tiny, and the suite often shares the CPU (as run_cli's OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_shipped_convnet_type_has_a_case():
    assert shipped_convnets() == set(CASES), "a PyCIL config names a convnet_type this test does not cover"


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("convnet", sorted(CASES))
def test_convnet_runs_or_is_refused_clearly(convnet, size, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # PASS saves <name>_<init>_<inc>_<task>.pkl checkpoints in the working folder
    from cim_plugin.config import ConfigError
    from cim_plugin.pycil.runner import run_config

    config_name, other_learner, at_64 = CASES[convnet]
    config = tiny_from_shipped(SHIPPED / config_name, size)
    learner = config["model_name"]
    if learner in REFUSED_LEARNERS:
        with pytest.raises(ConfigError, match=REFUSED_LEARNERS[learner]) as err:
            run_config(dict(config), out_dir=tmp_path / "refused")
        assert "choose another" in str(err.value)
        config = tiny_from_shipped(SHIPPED / config_name, size, model_name=other_learner)
    expect = "runs" if size == 32 else at_64
    if expect.startswith("refused: "):
        with pytest.raises(ConfigError, match=expect[len("refused: "):]) as err:
            run_config(dict(config), out_dir=tmp_path / "run")
        assert '"synthetic_image_size": 32' in str(err.value)  # the fix
        return
    (path,) = run_config(dict(config), out_dir=tmp_path / "run")
    results = json.loads(path.read_text())
    assert results["finished"] and len(results["phases"]) == 2
    assert results["config"]["convnet_type"] == convnet


def test_memo_with_cim_at_64px(tmp_path, monkeypatch):
    """The issue's case: PyCIL's memo.json on the synthetic dataset at 64 px with "cim": true (MEMO's adaptive
    blocks pooled globally), its run folder with the two figures."""
    from cim_plugin.pycil.runner import HAVE_MATPLOTLIB, run_config

    monkeypatch.chdir(tmp_path)
    (path,) = run_config({**tiny_from_shipped(SHIPPED / "memo.json", 64), "cim": True}, out_dir=tmp_path / "run")
    results = json.loads(path.read_text())
    assert results["finished"] and results["cim"]
    if HAVE_MATPLOTLIB:
        assert (path.parent / "old_new.png").is_file() and (path.parent / "accuracy_matrix.png").is_file()
