"""CIM on PyCIL's learners that keep a memory: each one runs (see test_cim_datasets / test_lucir) or is
refused with the specific reason it cannot work."""

import pytest
from conftest import requires_pycil, tiny_config

from cim_plugin.pycil import learners
from cim_plugin.pycil.learners import REFUSED, SUPPORTED


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
@pytest.mark.parametrize("name", ["gem", "podnet", "rmm-icarl"])
def test_the_mixin_refuses_them_too(name):
    from cim_plugin.config import ConfigError
    from cim_plugin.pycil.host import learner_class
    from cim_plugin.pycil.mixin import cim_learner_class

    with pytest.raises(ConfigError, match="cannot run on"):
        cim_learner_class(learner_class(name), {"model_name": name})


def test_every_memory_learner_of_pycil_is_either_supported_or_refused():
    from cim_plugin.pycil.host import LEARNERS

    memory_learners = {"icarl", "der", "foster", "wa", "replay", "bic", "podnet", "coil", "memo", "gem",
                       "rmm-icarl", "rmm-foster", "beefiso", "der_p", "lucir"}
    assert memory_learners <= set(LEARNERS) | set(learners.PLUGIN_LEARNERS)
    assert memory_learners == set(SUPPORTED) | set(REFUSED)
    assert not set(SUPPORTED) & set(REFUSED)


def test_the_derived_tables_agree_with_the_registry():
    """Each learner's file is the one place its facts live: every table the plug-in reads is its registry's."""
    from cim_plugin.pycil.host import LEARNERS

    specs = learners.registered()
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) and set(names) == set(SUPPORTED) | set(REFUSED)
    assert SUPPORTED == tuple(s.name for s in specs if s.refused is None)
    assert REFUSED == {s.name: s.refused for s in specs if s.refused is not None}
    assert all(reason for reason in REFUSED.values())
    assert set(learners.INNER_LOSSES) == set(SUPPORTED) and all(map(callable, learners.INNER_LOSSES.values()))
    for name in SUPPORTED:
        assert learners.inner_loss_for(name) is learners.learner_spec(name).inner_loss
    assert set(learners.DDP_LEARNERS) <= set(SUPPORTED)
    assert set(learners.EXTRA_HOOKS) <= set(SUPPORTED) and set(learners.EPOCH_KEYS) <= set(SUPPORTED)
    assert set(learners.TRAIN_LOOPS) == {loop for s in specs for loop in s.train_loops}
    assert set(learners.PLUGIN_LEARNERS) <= set(SUPPORTED) and not set(learners.PLUGIN_LEARNERS) & set(LEARNERS)
    assert set(REFUSED) <= set(LEARNERS)  # a refused learner is one of PyCIL's
    for spec in specs:  # PyCIL's own learner, or the plug-in's, never both
        assert (spec.name in LEARNERS) != (spec.plugin_class is not None), spec.name


def test_a_spec_that_contradicts_itself_is_rejected():
    from cim_plugin.pycil.learners import LearnerSpec, ce_loss, register

    with pytest.raises(ValueError, match="no inner_loss"):
        LearnerSpec("new")  # supported, but no inner loss
    with pytest.raises(ValueError, match="refused learner"):
        LearnerSpec("new", refused="why", ddp=True)
    with pytest.raises(ValueError, match="lower case"):
        LearnerSpec("New", inner_loss=ce_loss)
    with pytest.raises(ValueError, match="registered twice"):
        register(LearnerSpec("icarl", inner_loss=ce_loss))
    assert learners.learner_spec("icarl").inner_loss.__name__ == "icarl_loss"


def test_importing_the_registry_does_not_import_pycil():
    import subprocess
    import sys

    code = ("import sys, cim_plugin.pycil, cim_plugin.pycil.learners; "
            "print(sorted(m for m in ('models', 'utils', 'convs', 'trainer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@requires_pycil
@pytest.mark.parametrize("name", SUPPORTED)
def test_each_supported_learner_has_the_train_loops_it_declares(name):
    """A declared loop that the class lacks would never capture the optimiser (a typo, or PyCIL renamed it)."""
    from cim_plugin.pycil.host import learner_class
    from cim_plugin.pycil.mixin import cim_learner_class, keeps_memory

    base = learner_class(name)
    spec = learners.learner_spec(name)
    assert keeps_memory(base)
    assert all(callable(getattr(base, loop, None)) for loop in spec.train_loops), spec.train_loops
    cls = cim_learner_class(base, {"model_name": name})
    assert cls.__mro__[1:len(spec.extra_hooks) + 1] == spec.extra_hooks
    assert all(loop in vars(cls) for loop in spec.train_loops)


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
        # BiC trains in _run (both stages): the training time holds the meta steps made inside its epochs (the
        # last round, after training, is in "meta_steps" too and timed apart as "meta_after_training")
        s = phase["seconds"]
        assert s["meta_after_training"] > 0
        assert s["meta_steps"] - s["meta_after_training"] + s["box_refresh"] < phase["train_s"] < phase["wall_s"]
    assert {t for t, _ in seen["loss"]} == {0, 1} and {n for _, n in seen["loss"]} == {"bic_loss"}
    assert seen["epochs"] == [(0, 0), (0, 1), (1, 0), (1, 1)]  # 2 stage-1 epochs a phase, nothing else

    (train, val, per_class, held), = seen["split"]
    memory_train, memory_val = train.datasets[1], val.datasets[1]
    assert len(memory_train) + len(memory_val) == held
    assert sorted(np.concatenate([memory_train.indices, memory_val.indices]).tolist()) == list(range(held))
    counts = np.bincount(memory_val.labels, minlength=5)
    assert per_class >= 1 and (counts == per_class).all()
    assert len(memory_train) > 0 and set(memory_train.labels.tolist()) == set(range(5))


MEMO_KEYS = dict(model_name="memo", convnet_type="memo_resnet32", train_base=True, train_adaptive=False,
                 debug=False, skip=False, scheduler="steplr", t_max=None, init_weight_decay=5e-4, init_lr=0.1,
                 init_lr_decay=0.1, lrate=0.1, weight_decay=2e-4, lrate_decay=0.1, alpha_aux=1.0)


@requires_pycil
def test_memo_runs_with_cim_on_its_adaptive_extractors(tmp_path, monkeypatch):
    """MEMO + CIM, 2 phases: bytes held <= budget; MEMO's own loss (CE + alpha_aux aux CE) is the inner loss;
    the CAM reads each adaptive extractor's last feature map; the new extractor's PAUs start as a copy of the
    previous extractor's (after the PAUs of the shared generalized blocks, left as they were)."""
    import json

    import torch

    from cim_plugin.method.cim import CIM
    from cim_plugin.pycil.network import FmapView
    from cim_plugin.pycil.runner import prepare, run_seed

    seen = {"loss": [], "branch": []}
    orig_loss, orig_branch = CIM._inner_loss, CIM._ensure_branch

    def loss_spy(self, out, y, x):
        seen["loss"].append((self.task, self.inner_loss.func.__name__))
        return orig_loss(self, out, y, x)

    def branch_spy(self, network, x):
        first = self.phi_optimizer is None
        before = None if self.branch is None else [p.detach().clone() for p in self.branch.parameters()]
        branch = orig_branch(self, network, x)
        if first:
            view = FmapView(network)
            with torch.no_grad():
                out = view(x[:2])
            seen["branch"].append(dict(task=self.task, sites=branch.num_sites, shared=view.shared_sites(x[:2]),
                                       n_fmaps=len(out["fmaps"]), fmap=tuple(out["fmaps"][-1].shape),
                                       before=before, after=[p.detach().clone() for p in branch.parameters()]))
        return branch

    monkeypatch.setattr(CIM, "_inner_loss", loss_spy)
    monkeypatch.setattr(CIM, "_ensure_branch", branch_spy)
    config = prepare(tiny_config(cim=True, synthetic_num_classes=10, init_epoch=2, epochs=2, init_milestones=[1],
                                 milestones=[1], cam_update_interval=1, num_meta_iters_per_cls=0.4, **MEMO_KEYS))
    torch.set_num_threads(1)
    results = json.loads(run_seed(config, 1993, tmp_path).read_text())
    assert results["finished"] and [p["classes"] for p in results["phases"]] == [5, 10]
    for phase in results["phases"]:
        assert 0 < phase["memory_bytes"] <= phase["memory_budget_bytes"] and phase["meta_steps"] > 0
    assert {t for t, _ in seen["loss"]} == {0, 1} and {n for _, n in seen["loss"]} == {"memo_loss"}

    first, second = seen["branch"]
    assert first["n_fmaps"] == 1 and second["n_fmaps"] == 2 and second["fmap"][1:] == (64, 8, 8)
    shared = first["shared"]
    per = first["sites"] - shared
    assert shared > 0 and per > 0 and second["shared"] == shared and second["sites"] == shared + 2 * per
    before, after = second["before"], second["after"]
    n = len(before) // first["sites"]  # parameters per PAU
    assert all(torch.equal(a, b) for a, b in zip(before, after[: len(before)]))  # existing PAUs untouched
    old_block = after[n * shared: n * (shared + per)]
    new_block = after[n * (shared + per):]
    assert len(new_block) == len(old_block) and all(torch.equal(a, b) for a, b in zip(old_block, new_block))
