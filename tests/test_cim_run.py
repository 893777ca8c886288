"""End-to-end CIM runs of iCaRL, DER and FOSTER on the synthetic dataset (CPU, tiny)."""

import json

import pytest
from conftest import requires_pycil, run_cli, tiny_learner_config, write_config

pytestmark = requires_pycil


@pytest.mark.parametrize("learner,mask", [("icarl", "cam"), ("der", "cim"), ("foster", "cim")])
def test_cim_holds_more_exemplars_in_the_same_bytes(tmp_path, learner, mask):
    # 4 full images per class at the end; 2 epochs so that the CAMs start to localise objects
    common = dict(synthetic_image_size=48, cim_mask=mask, cam_update_interval=1, memory_size=60)
    if learner == "foster":
        common.update(init_epochs=2, boosting_epochs=2, compression_epochs=1)
    else:
        common.update(init_epoch=2, epochs=2, init_milestones=[2], milestones=[2])
    base = write_config(tmp_path / "base.json", tiny_learner_config(learner, **common))
    cim = write_config(tmp_path / "cim.json", tiny_learner_config(learner, cim=True, **common))
    rb = run_cli([base, "--out", tmp_path / "base"])
    assert rb.returncode == 0, rb.stderr[-3000:]
    rc = run_cli([cim, "--out", tmp_path / "cim"])
    assert rc.returncode == 0, rc.stderr[-3000:]
    b = json.loads((tmp_path / "base" / "results.json").read_text())
    c = json.loads((tmp_path / "cim" / "results.json").read_text())
    assert c["finished"] and c["cim"] is True
    for pb, pc in zip(b["phases"], c["phases"]):
        assert pc["memory_budget_bytes"] == pb["memory_budget_bytes"]  # same bytes for both
        assert pc["memory_bytes"] <= pc["memory_budget_bytes"]  # real bytes held, within budget
        for key in ("exemplars_per_class", "mean_box_fraction", "mean_exemplar_cost"):
            assert key in pc
        assert 0 < pc["mean_box_fraction"] <= 1
    assert c["phases"][-1]["exemplars"] > b["phases"][-1]["exemplars"]
    if mask == "cim":  # the adaptive mask model was trained by bilevel steps in every phase
        assert all(p["meta_steps"] > 0 and 0 < p["mask_mean"] <= 1 for p in c["phases"])
    for p in c["phases"]:  # where CIM's time went: before every epoch but the first + once before the memory
        loops = 2  # epochs with CIM's hook; FOSTER's compression epochs (1 here) have none, as in the official code
        assert p["calls"]["meta_steps"] == (loops if mask == "cim" else 0)
        assert p["calls"]["box_refresh"] == loops - 1 and p["calls"]["memory_build"] == 1
        s = p["seconds"]
        parts = {k: v for k, v in s.items() if k not in ("codec", "meta_after_training")}  # both inside others
        assert 0 < s["memory_build"] and sum(parts.values()) < p["wall_s"]
        assert p["calls"]["meta_after_training"] == (1 if mask == "cim" else 0) and s["meta_after_training"] >= 0
        assert s["meta_steps"] - s["meta_after_training"] + s["box_refresh"] < p["train_s"]  # the rest is in the loop
        assert 0 < p["seconds"]["codec"] < p["wall_s"]  # the memory's encode + decode, inside the parts
        assert 0 < p["train_s"] < p["wall_s"]
    assert c["phases"][-1]["top1_cnn"] >= 0


def test_learner_without_memory_is_refused(tmp_path):
    cfg = write_config(tmp_path / "lwf.json", tiny_learner_config("lwf", cim=True))
    result = run_cli([cfg, "--out", tmp_path / "out"])
    assert result.returncode == 2
    assert "keeps no exemplar memory" in result.stderr


def test_budget_too_small_is_a_clear_error(tmp_path):
    cfg = write_config(tmp_path / "tiny.json", tiny_learner_config("icarl", cim=True, cim_mask="cam", memory_size=1))
    result = run_cli([cfg, "--out", tmp_path / "out"])
    assert result.returncode == 2
    assert "memory budget too small" in result.stderr


@pytest.mark.parametrize("learner", ["wa", "replay"])
def test_other_rehearsal_learners_run_with_cim(tmp_path, learner):
    cfg = write_config(tmp_path / "c.json", tiny_learner_config(learner, cim=True, cim_mask="cam", memory_size=45,
                                                                synthetic_num_classes=10, init_cls=5, increment=5))
    result = run_cli([cfg, "--out", tmp_path / "out"])
    assert result.returncode == 0, result.stderr[-3000:]
    phases = json.loads((tmp_path / "out" / "results.json").read_text())["phases"]
    assert len(phases) == 2 and all(p["memory_bytes"] <= p["memory_budget_bytes"] for p in phases)


def test_unsupported_rehearsal_learner_is_refused(tmp_path):
    cfg = write_config(tmp_path / "c.json", tiny_learner_config("podnet", cim=True))
    result = run_cli([cfg, "--out", tmp_path / "out"])
    assert result.returncode == 2
    assert "cannot run on learner" in result.stderr and "supported: " in result.stderr  # the reason, then the list


def test_dataparallel_network_gives_the_same_run(tmp_path):
    """PyCIL wraps the network in nn.DataParallel when "device" lists several devices. On the CPU the
    wrapper passes through, so a DER + learned-mask run must give exactly the single-device numbers:
    the meta steps, CAMs and memory see the unwrapped network either way."""
    common = dict(cim=True, cim_mask="cim", cam_update_interval=1, memory_size=60, init_epoch=2, epochs=1,
                  init_milestones=[2], milestones=[1])
    results = {}
    for name, device in (("one", ["cpu"]), ("two", ["cpu", "cpu"])):
        cfg = write_config(tmp_path / f"{name}.json", tiny_learner_config("der", device=device, **common))
        result = run_cli([cfg, "--out", tmp_path / name])
        assert result.returncode == 0, result.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    one, two = results["one"], results["two"]
    assert all(p["meta_steps"] > 0 for p in two["phases"])
    assert [p["top1_cnn"] for p in two["phases"]] == [p["top1_cnn"] for p in one["phases"]]
    assert [p["memory_bytes"] for p in two["phases"]] == [p["memory_bytes"] for p in one["phases"]]
    assert [p["mask_mean"] for p in two["phases"]] == [p["mask_mean"] for p in one["phases"]]
