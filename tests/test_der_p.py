"""The der_p learner: settings validation, and end-to-end runs on the synthetic dataset."""

import json

import pytest
import torch
from conftest import requires_pycil, run_cli, tiny_config, write_config

from cim_plugin.config import ConfigError

pytestmark = requires_pycil

# Two phases of two classes: the smallest run that exercises expansion, aux loss and re-training.
SMALL = dict(model_name="der_p", synthetic_num_classes=4, init_cls=2, increment=2, memory_size=8,
             synthetic_train_per_class=16, synthetic_test_per_class=4, init_epoch=2, epochs=2,
             sparsity_weight=5.0, ft_epochs=2)


@pytest.fixture
def der_p():
    from cim_plugin.pycil import import_pycil

    import_pycil()
    import cim_plugin.pycil.learners.der_p.learner as module

    return module


@pytest.mark.parametrize("key, value, message", [
    ("sparsity_weight", -0.1, '"sparsity_weight" must be a finite number >= 0'),
    ("sparsity_weight", float("nan"), '"sparsity_weight"'),
    ("s_max", 1.0, '"s_max" must be a finite number > 1'),
    ("s_max", 0.5, '"s_max"'),
    ("classifier_retrain", "weightalign", '"classifier_retrain" must be one of'),
    ("ft_epochs", 1.5, '"ft_epochs" must be an integer'),
])
def test_bad_settings_name_the_key(der_p, monkeypatch, key, value, message):
    monkeypatch.setattr(der_p, key, value)
    with pytest.raises(ConfigError, match=message):
        der_p.settings()


def test_defaults_are_valid(der_p):
    cfg = der_p.settings()
    assert cfg["s_max"] == 400.0 and cfg["classifier_retrain"] == "balanced" and cfg["sparsity_weight"] >= 0


def test_unmaskable_convnet_is_refused(der_p):
    args = tiny_config(model_name="der_p", convnet_type="memo_resnet32")
    with pytest.raises(ConfigError, match='"convnet_type" \'memo_resnet32\' cannot be masked'):
        der_p.check_maskable(args)
    with pytest.raises(ConfigError, match='"convnet_type" \'vgg\''):
        der_p.check_maskable(dict(args, convnet_type="vgg"))
    der_p.check_maskable(dict(args, convnet_type="resnet32"))  # no error


def test_cli_rejects_negative_sparsity_weight(tmp_path):
    path = write_config(tmp_path / "bad.json", tiny_config(**dict(SMALL, sparsity_weight=-1)))
    proc = run_cli([path, "--out", tmp_path / "out"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert '"sparsity_weight" must be a finite number >= 0' in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def _run(tmp_path, **overrides):
    """Run the learner in-process through the runner; return (results, learners' reports, learner)."""
    from cim_plugin.pycil.runner import prepare, run_seed

    config = prepare(tiny_config(**dict(SMALL, **overrides)))
    seen = {}

    def on_phase(learner, data_manager, results):
        seen.setdefault("reports", []).append(json.loads(json.dumps(learner.der_p_report)))
        seen["learner"] = learner

    torch.set_num_threads(1)
    path = run_seed(config, config["seed"][0], tmp_path, on_phase=on_phase)
    return json.loads(path.read_text()), seen["reports"], seen["learner"]


def _check_pruned_network(results, reports, learner):
    from cim_plugin.pycil.learners.der_p.pruning import PrunedConvBN, count_parameters

    assert results["finished"] and len(results["phases"]) == 2
    last = reports[-1]
    assert len(last["extractor_params_before"]) == len(last["extractor_params_after"]) == 2
    assert all(a <= b for a, b in zip(last["extractor_params_after"], last["extractor_params_before"]))
    assert sum(last["extractor_params_after"]) < sum(last["extractor_params_before"])  # pruning removed weights
    net = learner._network
    assert last["total_params"] == count_parameters(net)
    assert [count_parameters(c) for c in net.convnets] == last["extractor_params_after"]
    assert all(any(isinstance(m, PrunedConvBN) for m in c.modules()) for c in net.convnets)
    assert not any(hasattr(c, "channel_masks") for c in net.convnets)
    assert 0 < last["flops"] and reports[0]["flops"] < last["flops"]
    # the DER network still classifies all 4 classes with the pruned extractors
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, 4) and torch.isfinite(out["logits"]).all()


def test_end_to_end_prunes_and_reports(tmp_path):
    results, reports, learner = _run(tmp_path)
    _check_pruned_network(results, reports, learner)
    assert 0 <= results["avg_incremental_accuracy_cnn"] <= 100


def test_end_to_end_weight_align_and_cim(tmp_path):
    """classifier_retrain "weight_align", and the CIM plug-in wrapped around der_p."""
    from cim_plugin.pycil.mixin import CIMMixin

    results, reports, learner = _run(tmp_path, classifier_retrain="weight_align", cim=True)
    assert isinstance(learner, CIMMixin) and results["cim"]
    _check_pruned_network(results, reports, learner)
