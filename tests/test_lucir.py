"""LUCIR as a plug-in learner ("model_name": "lucir"): each loss term against a hand computation, the
cosine classifier and imprinting, the backbone without its last ReLU, the old classifier part frozen
under less-forget, and runs end to end with and without CIM (LUCIR's loss as CIM's inner loss)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, requires_pycil, tiny_config

from cim_plugin.pycil.learners.lucir.losses import (
    cosine_scores,
    less_forget_lambda,
    less_forget_loss,
    lucir_loss,
    margin_ranking_loss,
)


def test_less_forget_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    old = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # cos = 1/sqrt(2) and -1: mean of (1 - cos)
    expected = ((1 - 1 / math.sqrt(2)) + 2.0) / 2
    assert less_forget_loss(f, old).item() == pytest.approx(expected)
    assert less_forget_lambda(5.0, 50, 10) == pytest.approx(5.0 * math.sqrt(5.0))
    assert less_forget_lambda(5.0, 50, 10, adapt=False) == 5.0


def test_margin_ranking_by_hand():
    # 3 old classes, 3 new; rows: old sample (y=1), new sample (y=4, ignored), old sample (y=0)
    scores = torch.tensor([[0.1, 0.6, 0.0, 0.5, 0.9, 0.2],
                           [0.0, 0.0, 0.0, 0.3, 0.9, 0.1],
                           [0.8, 0.0, 0.0, 0.1, 0.2, 0.0]])
    y = torch.tensor([1, 4, 0])
    # row 0: true 0.6, hard negatives 0.9, 0.5 -> max(0, .5-.6+.9)=.8, max(0, .5-.6+.5)=.4
    # row 2: true 0.8, hard negatives 0.2, 0.1 -> max(0, .5-.8+.2)=0, max(0, .5-.8+.1)=0
    assert margin_ranking_loss(scores, y, old_classes=3, margin=0.5, k=2).item() == pytest.approx((0.8 + 0.4) / 4)
    assert margin_ranking_loss(scores, torch.tensor([4, 4, 5]), old_classes=3).item() == 0.0


def test_whole_loss_adds_the_terms():
    g = torch.Generator().manual_seed(0)
    feats, old = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    weight = torch.randn(5, 4, generator=g)
    scores = cosine_scores(feats, weight)
    logits = 3.0 * scores
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    total = lucir_loss(logits, scores, feats, y, old_features=old, old_classes=3, lam=2.0, margin=0.5, k=2,
                       mr_weight=0.7)
    expected = (F.cross_entropy(logits, y) + 2.0 * less_forget_loss(feats, old)
                + 0.7 * margin_ranking_loss(scores, y, 3, 0.5, 2))
    assert total.item() == pytest.approx(expected.item())
    first = lucir_loss(logits, scores, feats, y, old_features=None, old_classes=0, lam=2.0, margin=0.5, k=2,
                       mr_weight=0.7)
    assert first.item() == pytest.approx(F.cross_entropy(logits, y).item())


def test_imprinted_weights_point_at_the_class_mean():
    from cim_plugin.pycil.learners.lucir.learner import imprint_weights

    g = torch.Generator().manual_seed(1)
    feats = torch.randn(10, 4, generator=g)
    labels = torch.tensor([5] * 4 + [6] * 6)
    old = torch.randn(3, 4, generator=g)
    w = imprint_weights(feats, labels, [5, 6], old)
    for row, c in zip(w, (5, 6)):
        mean = F.normalize(feats[labels == c], dim=1).mean(0)
        assert torch.allclose(F.normalize(row, dim=0), F.normalize(mean, dim=0), atol=1e-6)
        assert row.norm().item() == pytest.approx(old.norm(dim=1).mean().item(), rel=1e-5)


@requires_pycil
@pytest.mark.parametrize("convnet", ["resnet32", "resnet18"])
def test_backbone_ends_without_relu_and_classifier_is_scaled_cosine(convnet):
    from cim_plugin.pycil.learners.lucir.learner import LUCIR

    torch.manual_seed(0)
    learner = LUCIR(tiny_config(model_name="lucir", convnet_type=convnet, dataset="cifar100"))
    net = learner._network
    net.update_fc(5, 0)
    net.fc.sigma.data.fill_(4.0)
    net.eval()
    x = torch.randn(8, 3, 32, 32)
    out = net(x)
    assert (out["features"] < 0).any(), "features after a ReLU could not be negative"
    expected = 4.0 * cosine_scores(out["features"], net.fc.weight)
    assert torch.allclose(out["logits"], expected, atol=1e-5)
    # the swapped block computes the original block's output before its ReLU
    block = [m for m in net.convnet.modules() if type(m).__name__.endswith("NoReLU")]
    assert len(block) == 1
    original = type(block[0]).__mro__[1]
    inp = torch.randn(2, *_block_input_shape(net, block[0]))
    with torch.no_grad():
        new, ref = block[0](inp.clone()), original.forward(block[0], inp.clone())
    assert (new < 0).any() and torch.allclose(F.relu(new), ref, atol=1e-6)


def _block_input_shape(net, block):
    seen = {}
    handle = block.register_forward_pre_hook(lambda m, inp: seen.update(shape=inp[0].shape[1:]))
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 32))
    handle.remove()
    return seen["shape"]


@requires_pycil
def test_unknown_backbone_is_refused():
    from cim_plugin.config import ConfigError
    from cim_plugin.pycil.learners.lucir.learner import remove_last_relu

    with pytest.raises(ConfigError, match="last ReLU"):
        remove_last_relu(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU()), "conv2")


def _run(tmp_path, **extra):
    from cim_plugin.pycil.runner import prepare, run_seed

    config = prepare(tiny_config(model_name="lucir", synthetic_num_classes=10, init_epoch=2, epochs=2,
                                 init_milestones=[1], milestones=[1], **extra))
    seen = {"fc": [], "learner": None}

    def on_phase(learner, data_manager, results):
        fc = learner._network.fc
        weight = torch.cat([fc.fc1.weight, fc.fc2.weight]) if hasattr(fc, "fc1") else fc.weight
        seen["fc"].append(weight.detach().clone())
        seen["learner"] = learner

    torch.set_num_threads(1)
    path = run_seed(config, config["seed"][0], tmp_path, on_phase=on_phase)
    return json.loads(path.read_text()), seen


@requires_pycil
def test_lucir_runs_and_keeps_the_old_classifier_part(tmp_path):
    results, seen = _run(tmp_path)
    assert [p["classes"] for p in results["phases"]] == [5, 10]
    assert all(p["top1_nme"] is not None and p["memory_bytes"] <= p["memory_budget_bytes"] for p in results["phases"])
    # under less-forget the old part (phase 0's classifier) is not trained in phase 1
    assert torch.equal(seen["fc"][1][:5], seen["fc"][0])
    assert not torch.equal(seen["fc"][1][5:], torch.zeros_like(seen["fc"][1][5:]))


@requires_pycil
def test_lucir_with_cim_uses_lucirs_loss_as_inner_loss(tmp_path, monkeypatch):
    from cim_plugin.pycil.learners.lucir import learner as lucir

    calls = []
    original = lucir.LUCIR.lucir_loss

    def spy(self, out, y, x):
        calls.append((self._cur_task, torch.is_grad_enabled()))
        return original(self, out, y, x)

    monkeypatch.setattr(lucir.LUCIR, "lucir_loss", spy)
    results, seen = _run(tmp_path, cim=True, cam_update_interval=1, meta_batch_size=4, lucir_cbf=True, cbf_epochs=1)
    learner = seen["learner"]
    assert results["cim"] and all(p["memory_bytes"] <= p["memory_budget_bytes"] for p in results["phases"])
    assert results["phases"][-1]["exemplars"] > 30, "compressed exemplars: more than the 30 full images that fit"
    assert learner._cim.meta_log, "no meta step ran"
    phase1 = sum(1 for task, _ in calls if task == 1)
    training = 2 * len(learner.train_loader)  # 2 epochs of phase 1
    assert phase1 == training + len(learner._cim.meta_log), "each inner step of phase 1 calls LUCIR's loss"


def test_lucir_configs_are_the_papers_protocol():
    for name, cim in (("lucir.json", False), ("lucir_cim.json", True)):
        config = json.loads((REPO / "exps" / name).read_text())
        assert config["model_name"] == "lucir" and config.get("cim", False) == cim
        assert (config["init_cls"], config["increment"], config["memory_per_class"]) == (50, 10, 20)
        assert (config["lambda_base"], config["mr_margin"], config["mr_k"]) == (5.0, 0.5, 2)


@requires_pycil
def test_a_lucir_key_of_the_wrong_type_is_refused_by_name():
    from cim_plugin.config import ConfigError
    from cim_plugin.pycil.runner import prepare

    with pytest.raises(ConfigError, match='"mr_k" overrides the constant mr_k of the plug-in\'s '
                                          'cim_plugin.pycil.learners.lucir.learner'):
        prepare(tiny_config(model_name="lucir", mr_k="two"))
