"""CIM on PyCIL's learners that keep a memory: each one runs (see test_cim_datasets / test_lucir) or is
refused with the specific reason it cannot work."""

import pytest

from conftest import requires_pycil, tiny_config

from cim_plugin.pycil.support import REFUSED, SUPPORTED


@requires_pycil
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_learners_say_why_before_training(name):
    """prepare() refuses the config (before the learner is imported: COIL needs the POT package)."""
    from cim_plugin.config import ConfigError
    from cim_plugin.pycil.runner import prepare

    with pytest.raises(ConfigError) as err:
        prepare(tiny_config(model_name=name, cim=True))
    message = str(err.value)
    assert REFUSED[name] in message and "supported: " in message


@requires_pycil
@pytest.mark.parametrize("name", ["memo", "podnet", "rmm-icarl"])
def test_the_mixin_refuses_them_too(name):
    from cim_plugin.config import ConfigError
    from cim_plugin.pycil.host import learner_class
    from cim_plugin.pycil.mixin import cim_learner_class

    with pytest.raises(ConfigError, match="cannot run on"):
        cim_learner_class(learner_class(name), {"model_name": name})


def test_every_memory_learner_of_pycil_is_either_supported_or_refused():
    from cim_plugin.pycil.host import LEARNERS, PLUGIN_LEARNERS

    memory_learners = {"icarl", "der", "foster", "wa", "replay", "bic", "podnet", "coil", "memo", "gem",
                       "rmm-icarl", "rmm-foster", "beefiso", "der_p", "lucir"}
    assert memory_learners <= set(LEARNERS) | set(PLUGIN_LEARNERS)
    assert memory_learners == set(SUPPORTED) | set(REFUSED)
    assert not set(SUPPORTED) & set(REFUSED)


@requires_pycil
def test_bic_runs_with_cim_and_splits_the_compressed_memory(tmp_path, monkeypatch):
    """BiC + CIM, 2 phases: bytes held <= budget; BiC's own stage-1 loss is the inner loss in both phases;
    meta steps and box refreshes follow stage 1's epochs only (not its accuracy passes, not stage 2);
    the bias-correction set holds `val_samples_per_class` decoded exemplars of every old class and the
    training set the rest of the memory, each exemplar in exactly one of them."""
    import json

    import numpy as np
    import torch

    from cim_plugin.method.cim import CIM
    from cim_plugin.pycil import data as pycil_data
    from cim_plugin.pycil.runner import prepare, run_seed

    seen = {"loss": [], "epochs": [], "split": []}
    orig_loss, orig_epoch, orig_split = CIM._inner_loss, CIM.before_epoch, pycil_data.DataManagerProxy.get_dataset_with_split

    def loss_spy(self, out, y, x):
        seen["loss"].append((self.task, self.inner_loss.func.__name__))
        return orig_loss(self, out, y, x)

    def epoch_spy(self, network, **kw):
        seen["epochs"].append((self.task, self.epoch))
        return orig_epoch(self, network, **kw)

    def split_spy(self, indices, source, mode, appendent=None, val_samples_per_class=0):
        train, val = orig_split(self, indices, source, mode, appendent, val_samples_per_class)
        seen["split"].append((train, val, val_samples_per_class, len(appendent) if appendent is not None else 0))
        return train, val

    monkeypatch.setattr(CIM, "_inner_loss", loss_spy)
    monkeypatch.setattr(CIM, "before_epoch", epoch_spy)
    monkeypatch.setattr(pycil_data.DataManagerProxy, "get_dataset_with_split", split_spy)
    config = prepare(tiny_config(model_name="bic", cim=True, epochs=2, milestones=[1], cam_update_interval=1,
                                 synthetic_num_classes=10, memory_size=100,  # BiC holds out int(0.1 * 100 / 5) = 2 per old class
                                 num_meta_iters_per_cls=0.4))
    torch.set_num_threads(1)
    results = json.loads(run_seed(config, 1993, tmp_path).read_text())
    assert results["finished"] and [p["classes"] for p in results["phases"]] == [5, 10]
    for phase in results["phases"]:
        assert 0 < phase["memory_bytes"] <= phase["memory_budget_bytes"] and phase["meta_steps"] > 0
    assert {t for t, _ in seen["loss"]} == {0, 1} and {n for _, n in seen["loss"]} == {"bic_loss"}
    assert seen["epochs"] == [(0, 0), (0, 1), (1, 0), (1, 1)]  # 2 stage-1 epochs a phase, nothing else

    (train, val, per_class, held), = seen["split"]
    memory_train, memory_val = train.datasets[1], val.datasets[1]
    assert len(memory_train) + len(memory_val) == held
    assert sorted(np.concatenate([memory_train.indices, memory_val.indices]).tolist()) == list(range(held))
    counts = np.bincount(memory_val.labels, minlength=5)
    assert per_class >= 1 and (counts == per_class).all()
    assert len(memory_train) > 0 and set(memory_train.labels.tolist()) == set(range(5))
