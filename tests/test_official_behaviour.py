"""CIM's bilevel step and memory as the official code does them.

Unit tests pin the pieces (inner loss of each learner against a hand computation, fast weights without
the classifier heads, PAU block copy); in-process runs of iCaRL, DER and FOSTER with spies check that the
mixin really uses them: the learner's inner loss in each phase, train-val meta batches holding memory
items through the train transform, the CIL optimiser's current lr, a fresh φ optimiser per phase with the
CIL weight decay, a new backbone's PAUs copied from the previous one, herding on decoded candidates.
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import requires_pycil, tiny_learner_config

from cim_plugin.method.masks.bilevel import meta_step
from cim_plugin.method.masks.cim_branch import CIMBranch
from cim_plugin.pycil import learners


# ----------------------------------------------------------------------------- inner losses, by hand
def _hand_kd(pred, soft, T):
    p = torch.softmax(soft / T, 1)
    return -(p * torch.log_softmax(pred / T, 1)).sum(1).mean()


def _fake(cur_task, known, total, old_logits=None, **extra):
    old = None if old_logits is None else (lambda x: {"logits": old_logits})
    return SimpleNamespace(_cur_task=cur_task, _known_classes=known, _total_classes=total, _old_network=old,
                           args={"T": 2}, **extra)


def test_phase_zero_inner_loss_is_plain_ce_for_every_learner():
    g = torch.Generator().manual_seed(0)
    logits, y, x = torch.randn(6, 4, generator=g), torch.randint(0, 4, (6,), generator=g), torch.zeros(6, 3, 4, 4)
    out = {"logits": logits, "aux_logits": torch.randn(6, 5, generator=g), "fe_logits": torch.randn(6, 4),
           "old_logits": torch.randn(6, 2)}
    ce = F.cross_entropy(logits, y)
    for name in ("icarl", "wa", "der", "der_p", "foster", "replay"):
        learner = _fake(0, 0, 4, old_logits=torch.randn(6, 2), per_cls_weights=torch.ones(4), lambda_okd=1.0)
        assert torch.allclose(learners.inner_loss_for(name)(learner, out, y, x), ce), name


def test_incremental_inner_loss_is_each_learners_own():
    g = torch.Generator().manual_seed(1)
    known, total, B = 3, 5, 8
    logits = torch.randn(B, total, generator=g)
    y = torch.randint(0, total, (B,), generator=g)
    x = torch.zeros(B, 3, 4, 4)
    old = torch.randn(B, known, generator=g)
    ce = F.cross_entropy(logits, y)
    kd = _hand_kd(logits[:, :known], old, 2.0)

    icarl = learners.inner_loss_for("icarl")(_fake(1, known, total, old), {"logits": logits}, y, x)
    assert torch.allclose(icarl, ce + kd)

    lam = known / total
    wa = learners.inner_loss_for("wa")(_fake(1, known, total, old), {"logits": logits}, y, x)
    assert torch.allclose(wa, (1 - lam) * ce + lam * kd)

    aux = torch.randn(B, total - known + 1, generator=g)
    aux_y = torch.tensor([0 if int(t) < known else int(t) - known + 1 for t in y])
    der = learners.inner_loss_for("der")(_fake(1, known, total), {"logits": logits, "aux_logits": aux}, y, x)
    assert torch.allclose(der, ce + F.cross_entropy(aux, aux_y))

    w = torch.rand(total, generator=g) + 0.5
    fe = torch.randn(B, total, generator=g)
    learner = _fake(1, known, total, per_cls_weights=w, lambda_okd=0.7)
    foster = learners.inner_loss_for("foster")(
        learner, {"logits": logits, "fe_logits": fe, "old_logits": old}, y, x)
    expected = F.cross_entropy(logits / w, y) + F.cross_entropy(fe, y) + 0.7 * kd
    assert torch.allclose(foster, expected)


# ----------------------------------------------------------------------------- fast weights
class _HeadNet(nn.Module):
    """conv -> relu -> pool -> fc / aux_fc; records whether the heads it sees are θ's own Parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.aux_fc = nn.Linear(4, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append((isinstance(self.fc.weight, nn.Parameter), isinstance(self.aux_fc.weight, nn.Parameter),
                          isinstance(self.conv.weight, nn.Parameter)))
        f = F.relu(self.conv(x))
        feat = f.mean((2, 3))
        return {"logits": self.fc(feat), "aux_logits": self.aux_fc(feat), "fmaps": [f]}


def test_inner_step_leaves_the_classifier_heads_as_they_are():
    import functools

    from cim_plugin.method.masks.bilevel import cam_mask_fn
    from cim_plugin.method.network import is_fast_weight

    torch.manual_seed(0)
    net = _HeadNet()
    branch = CIMBranch()
    x = torch.randn(4, 3, 8, 8)
    branch.ensure_sites(net, x)
    opt = torch.optim.Adam(branch.parameters(), lr=0.01)
    net.seen.clear()
    stats = meta_step(network=net, branch=branch, phi_optimizer=opt, x_inner=x, y_inner=torch.tensor([0, 1, 2, 0]),
                      x_inner_degraded=x * 0.5, x_outer=torch.randn(4, 3, 8, 8), y_outer=torch.tensor([1, 2, 0, 1]),
                      mask_fn=functools.partial(cam_mask_fn, weight=lambda n: n.fc.weight),
                      logits_fn=lambda out: out["logits"], fast_weight_filter=is_fast_weight,
                      lr=0.1, lr_ratio=0.1, div_coef=0.2, reg_coef=0.1, max_phi_grad_norm=1.0)
    outer_view = net.seen[-1]  # the forward with θ⁺
    assert outer_view[0] and outer_view[1], "fc / aux_fc were replaced by fast weights"
    assert not outer_view[2], "the conv should run with its fast (updated) weight"
    assert stats["fast_weights"] == 2 and stats["inner_lr"] == pytest.approx(0.01)
    assert [is_fast_weight(n) for n in ("convnets.0.conv.weight", "fc.weight", "aux_fc.bias", "oldfc.weight",
                                        "fe_fc.weight")] == [True, False, False, False, False]


def test_copy_block_copies_one_backbones_paus_onto_another():
    from cim_plugin.method.network import copy_block

    branch = CIMBranch(6)
    with torch.no_grad():
        for k, pau in enumerate(branch.paus):
            for p in pau.parameters():
                p.add_(k)
    copy_block(branch, 3, src=0, dst=1)
    for k in range(3):
        for a, b in zip(branch.paus[k].parameters(), branch.paus[3 + k].parameters()):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------- the mixin, end to end
def _spy_run(tmp_path, monkeypatch, learner, **extra):
    """Run `learner` + CIM (2 phases, 3 epochs, lr milestone after 2) in-process; return what the spies saw."""
    from cim_plugin.method.cim import CIM
    from cim_plugin.pycil.mixin import CIMMixin
    from cim_plugin.pycil.runner import prepare, run_seed

    common = dict(cim=True, cim_mask="cim", synthetic_num_classes=10, synthetic_train_per_class=12,
                  synthetic_test_per_class=4, memory_size=40, cam_update_interval=1, meta_batch_size=4)
    if learner == "foster":
        common.update(init_epochs=3, boosting_epochs=3, compression_epochs=1)
    elif learner == "bic":  # BiC holds out int(0.1 * memory_size / 5) exemplars per old class: at least 1
        common.update(epochs=3, milestones=[2], memory_size=60)
    else:
        common.update(init_epoch=3, epochs=3, init_milestones=[2], milestones=[2])
    config = prepare(tiny_learner_config(learner, **common, **extra))
    seen = {"loss": [], "batch": [], "branch": [], "herd": [], "learner": None, "cil_wd": {}}

    orig_epoch = CIMMixin._cim_on_epoch

    def epoch_spy(self):  # the CIL optimiser of the phase, as PyCIL's loop hands it to the learner
        if self._cim_cil_optimizer is not None:
            seen["cil_wd"][self._cur_task] = self._cim_cil_optimizer.param_groups[0]["weight_decay"]
        return orig_epoch(self)

    orig_loss = CIM._inner_loss

    def loss_spy(self, out, y, x):
        seen["loss"].append((self.task, self.inner_loss.func.__name__))
        net = seen["net"]  # (5) expected fast weights: trainable, not a classifier head
        seen.setdefault("fast", set()).add(
            (self.task, sum(1 for n, p in net.named_parameters()  # (BiC: nor its bias layers)
                            if p.requires_grad and "fc" not in n and not n.startswith("bias_layers"))))
        return orig_loss(self, out, y, x)

    orig_batch = CIM._meta_batch

    def batch_spy(self, source, pick):
        seen["batch"].append((self.task, source, pick.clone()))
        return orig_batch(self, source, pick)

    orig_branch = CIM._ensure_branch

    def branch_spy(self, network, x):
        seen["net"] = network
        first = self.phi_optimizer is None
        branch = orig_branch(self, network, x)
        if first:
            n_bb = len(network.convnets) if hasattr(network, "convnets") else 1
            size = branch.num_sites // n_bb
            same = None
            if n_bb >= 2:
                same = all(torch.equal(a, b) for k in range(size) for a, b in zip(
                    branch.paus[(n_bb - 2) * size + k].parameters(), branch.paus[(n_bb - 1) * size + k].parameters()))
            group = self.phi_optimizer.param_groups[0]
            seen["branch"].append(dict(task=self.task, opt=id(self.phi_optimizer), wd=group["weight_decay"],
                                       n_params=len(group["params"]), sites=branch.num_sites, copied=same))
        return branch

    orig_build = CIM._build_memory
    orig_fwd = CIM._forward_chunks

    def build_spy(self, network, classes):
        self._building = True
        try:
            return orig_build(self, network, classes)
        finally:
            self._building = False

    def fwd_spy(self, network, images, labels, chunk=256):
        if getattr(self, "_building", False):
            seen["herd"].append(images.clone())
        return orig_fwd(self, network, images, labels, chunk)

    orig_means = CIM._class_means

    def means_spy(self, network):  # NME means read decoded exemplars by design: not part of herding
        self._building = False
        return orig_means(self, network)

    monkeypatch.setattr(CIMMixin, "_cim_on_epoch", epoch_spy)
    monkeypatch.setattr(CIM, "_class_means", means_spy)
    monkeypatch.setattr(CIM, "_inner_loss", loss_spy)
    monkeypatch.setattr(CIM, "_meta_batch", batch_spy)
    monkeypatch.setattr(CIM, "_ensure_branch", branch_spy)
    monkeypatch.setattr(CIM, "_build_memory", build_spy)
    monkeypatch.setattr(CIM, "_forward_chunks", fwd_spy)

    def on_phase(learner_obj, data_manager, results):
        seen["learner"] = learner_obj
        seen.setdefault("meta_log", []).append(list(learner_obj._cim.meta_log))

    torch.set_num_threads(1)
    path = run_seed(config, config["seed"][0], tmp_path, on_phase=on_phase)
    return json.loads(path.read_text()), seen, config


def _configured_lr(config, learner, task):
    if learner == "foster":
        return config["init_lr"] if task == 0 else config["lr"]
    from cim_plugin.pycil import learner_class

    module = __import__(learner_class(learner).__module__, fromlist=["x"])
    name = "init_lr" if task == 0 and hasattr(module, "init_lr") else "lrate"  # BiC: lrate in every phase
    return float(config.get(name, getattr(module, name)))


@requires_pycil
@pytest.mark.parametrize("learner,loss_name", [("icarl", "icarl_loss"), ("der", "der_loss"),
                                               ("foster", "foster_loss"), ("bic", "bic_loss")])
def test_meta_steps_follow_the_official_code(tmp_path, monkeypatch, learner, loss_name):
    results, seen, config = _spy_run(tmp_path, monkeypatch, learner)
    assert results["finished"]
    # (1, 2) the learner's own inner loss, in both phases (phase 0 of it is plain CE: unit tests above)
    tasks = {t for t, _ in seen["loss"]}
    assert tasks == {0, 1} and {name for _, name in seen["loss"]} == {loss_name}

    # (5) the inner step updates every trainable parameter but the classifier heads
    got_fast = {(t, int(s["fast_weights"])) for t, log in enumerate(seen["meta_log"]) for s in log}
    assert got_fast == seen["fast"]

    # (3) meta batches come from new data + the decoded memory, through the training transforms
    phase1 = [(src, pick) for t, src, pick in seen["batch"] if t == 1]
    source = phase1[0][0]
    assert hasattr(source, "datasets") and len(source.datasets) == 2, "phase-1 meta batches have no memory part"
    new_part, memory_part = source.datasets
    assert memory_part.trsf is new_part.trsf
    assert any("Random" in type(t).__name__ for t in new_part.trsf.transforms), "not the training transforms"
    n_new = len(new_part)
    assert sum(int((pick >= n_new).sum()) for _, pick in phase1) > 0, "no memory item was ever drawn"
    assert all(len(src.datasets) == 2 if hasattr(src, "datasets") else False for src, _ in phase1)

    # (4) inner lr = the CIL optimiser's lr of the epoch just trained x lr_ratio
    ratio = config["lr_ratio"]
    for task, log in enumerate(seen["meta_log"]):
        lrs = [round(s["inner_lr"], 12) for s in log]
        base = _configured_lr(config, learner, task) * ratio
        if learner == "foster":  # cosine schedule over 3 epochs: epochs 0, 1, 2 run at base x (1, .75, .25)
            expected = [base * (1 + math.cos(math.pi * e / 3)) / 2 for e in (0, 1, 2)]
        else:  # MultiStepLR, milestone 2: epochs 0, 1 at base, epoch 2 at base/10
            expected = [base, base, base * 0.1]
        per_round = len(lrs) // 3
        assert per_round >= 1 and len(lrs) == 3 * per_round
        got = [lrs[r * per_round] for r in range(3)]
        assert got == pytest.approx(expected, rel=1e-6), (task, got, expected)
        # φ's lr follows the same schedule, from phi_lr at the phase's first lr
        phi = [log[r * per_round]["phi_lr"] for r in range(3)]
        assert phi == pytest.approx([config["phi_lr"] * e / base for e in expected], rel=1e-6), (task, phi)

    # (7) a fresh φ optimiser each phase, with the CIL optimiser's weight decay
    branch = seen["branch"]
    assert [b["task"] for b in branch] == [0, 1]
    assert branch[0]["opt"] != branch[1]["opt"]
    for b in branch:
        assert b["wd"] == seen["cil_wd"][b["task"]] > 0 and b["n_params"] > 0
    if learner in ("der", "foster"):  # a new backbone starts from the previous backbone's PAUs
        assert branch[1]["copied"] is True and branch[1]["sites"] > branch[0]["sites"]

    # (6) herding features come from the decoded (compressed) candidates: every stored exemplar is bit-equal
    # to a row that was fed to the network for herding
    memory = seen["learner"]._cim.memory
    herded = torch.cat([h for h in seen["herd"] if h.shape[1:] == memory.decode(torch.tensor([0])).shape[1:]])
    flat = herded.flatten(1)
    decoded = memory.decode(torch.arange(len(memory))).flatten(1)
    assert all(bool((flat == row).all(1).any()) for row in decoded)
    assert (memory.boxes[:, 2] - memory.boxes[:, 0] < memory.sizes[:, 1]).any() or \
        (memory.boxes[:, 3] - memory.boxes[:, 1] < memory.sizes[:, 0]).any(), "every box is the whole image"


# ----------------------------------------------------------------------------- common random numbers
@requires_pycil
@pytest.mark.parametrize("learner", ["icarl", "der"])
def test_cim_leaves_the_hosts_random_stream_alone(tmp_path, learner):
    """With the compression augmentation off, a CIM run's phase 0 trains exactly the baseline's network:
    meta steps (random meta batches through the train transforms), box refreshes and the memory build
    run on the host's random streams without moving them, so a seed's paired difference measures CIM,
    not a different draw of shuffles and crops."""
    from cim_plugin.pycil.network import unwrap
    from cim_plugin.pycil.runner import prepare, run_seed

    torch.set_num_threads(1)
    states = {}
    for cim in (False, True):
        extra = dict(cim=True, cim_mask="cim", randombbxblur_prob_incre=0.0, cam_update_interval=1,
                     meta_batch_size=4) if cim else {}
        config = prepare(tiny_learner_config(learner, synthetic_num_classes=10, init_epoch=3,
                                             init_milestones=[2], **extra))
        seen = {}

        def on_phase(learner_obj, data_manager, results, seen=seen):
            if learner_obj._cur_task == 0:
                net = unwrap(learner_obj._network)
                seen["state"] = {k: v.clone() for k, v in net.state_dict().items()}
                seen["meta"] = len(learner_obj._cim.meta_log) if hasattr(learner_obj, "_cim") else 0

        run_seed(config, config["seed"][0], tmp_path / str(cim), on_phase=on_phase)
        states[cim] = seen
    assert states[True]["meta"] > 0, "the CIM run must have run meta steps for this test to mean anything"
    base, cim = states[False]["state"], states[True]["state"]
    assert base.keys() == cim.keys()
    for key in base:
        assert torch.equal(base[key], cim[key]), f"phase-0 {key} differs between baseline and CIM"


@requires_pycil
def test_phi_lr_schedule_constant_keeps_phi_lr_while_the_inner_lr_anneals(tmp_path, monkeypatch):
    """"phi_lr_schedule": "constant": φ's Adam keeps phi_lr through FOSTER's cosine, which still sets the inner
    step; the default "host" anneals both (test above)."""
    results, seen, config = _spy_run(tmp_path, monkeypatch, "foster", phi_lr_schedule="constant", phi_lr=0.003)
    assert results["finished"]
    for log in seen["meta_log"]:
        assert {s["phi_lr"] for s in log} == {0.003}
        inner = [s["inner_lr"] for s in log]
        assert inner[0] > inner[-1] > 0  # the cosine still sets the inner step


def test_inner_grad_through_mask_reaches_the_meta_step_of_a_der_run(tmp_path, monkeypatch):
    """"inner_grad_through_mask": true runs DER's meta steps (two backbones in phase 1, through the PyCIL view)
    with the official total derivative of the inner loss (its math: test_bilevel.py)."""
    import cim_plugin.method.cim as cim_module

    flags = []
    orig = cim_module.meta_step

    def step_spy(**kw):
        flags.append(kw["grad_through_mask"])
        return orig(**kw)

    monkeypatch.setattr(cim_module, "meta_step", step_spy)
    results, seen, _ = _spy_run(tmp_path, monkeypatch, "der", inner_grad_through_mask=True)
    assert results["finished"] and set(flags) == {True}
    assert len(seen["meta_log"]) == 2 and all(seen["meta_log"])  # meta steps in both phases
