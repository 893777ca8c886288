"""The benchmark: report numbers on fabricated run folders, folder refusals, resume, the CLI."""

import csv
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, requires_pycil, tiny_config, write_config

from cim_plugin import bench
from cim_plugin.bench import execute, report, sizes, stats, tables
from cim_plugin.bench import panels as bench_panels
from cim_plugin.config import ConfigError
from cim_plugin.method.memory import CompressedMemory
from cim_plugin.pycil import checks as pycil_checks

PNG = b"\x89PNG\r\n\x1a\n"


def fake_results(run_dir, *, learner="icarl", cim=False, seed=1, aia=50.0, last=40.0, wall=10.0,
                 counts=(4, 4, 4, 4), top1=(60.0, 40.0), config=None, finished=True):
    """A results.json as the runner writes it (only the fields the report reads)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(config or {"dataset": "synthetic", "model_name": learner}, cim=cim, seed=seed)
    n = len(top1)
    phases = [{"phase": i, "classes": 2 * (i + 1), "top1_cnn": t, "top1_nme": None, "exemplars": sum(counts),
               "memory_bytes": 900, "memory_budget_bytes": 1000, "image_bytes": 100, "wall_s": wall / n,
               "exemplars_per_class": {"min": min(counts), "mean": float(np.mean(counts)), "max": max(counts)},
               "exemplars_per_class_counts": list(counts)} for i, t in enumerate(top1)]
    res = {"config": cfg, "learner": learner, "dataset": cfg["dataset"], "seed": seed, "cim": cim, "phases": phases,
           "avg_incremental_accuracy_cnn": aia, "avg_incremental_accuracy_nme": None, "forgetting_cnn": 5.0,
           "last_top1_cnn": last, "wall_s": wall, "finished": finished}
    (run_dir / "results.json").write_text(json.dumps(res))
    return res


def read_csv(path):
    with open(path) as fh:
        return {(r["config"], r["variant"]): r for r in csv.DictReader(fh)}


def test_report_numbers_mean_std_gain_and_time_ratio(tmp_path):
    base = {1: (40.0, 30.0, 10.0), 2: (44.0, 34.0, 10.0)}
    cim = {1: (45.0, 33.0, 12.0), 2: (51.0, 35.0, 14.0), 3: (48.0, 34.0, 100.0)}  # seed 3 has no baseline
    for seed, (aia, last, wall) in base.items():
        fake_results(tmp_path / "icarl_x" / "baseline" / f"seed_{seed}", seed=seed, aia=aia, last=last, wall=wall)
    for seed, (aia, last, wall) in cim.items():
        fake_results(tmp_path / "icarl_x" / "cim" / f"seed_{seed}", seed=seed, aia=aia, last=last, wall=wall,
                     cim=True, counts=(8, 8, 6, 10))
    fake_results(tmp_path / "icarl_x" / "cim" / "seed_4", seed=4, aia=0.0, cim=True, finished=False)  # left out

    written = report.build_report(tmp_path, dataset_loader=lambda config: None)
    rows = read_csv(tmp_path / "summary.csv")
    b, c = rows[("icarl_x", "baseline")], rows[("icarl_x", "cim")]
    assert float(b["aia_cnn_mean"]) == pytest.approx(42.0)
    assert float(b["aia_cnn_std"]) == pytest.approx(math.sqrt(8.0))  # sample std (ddof 1)
    assert b["gain_aia_cnn_mean"] == "" and b["time_ratio"] == ""
    assert int(c["n_seeds"]) == 3 and float(c["aia_cnn_mean"]) == pytest.approx(48.0)
    assert int(c["n_paired"]) == 2
    assert float(c["gain_aia_cnn_mean"]) == pytest.approx(6.0)  # paired diffs 5 and 7
    assert float(c["gain_aia_cnn_std"]) == pytest.approx(math.sqrt(2.0))
    assert float(c["gain_aia_cnn_se"]) == pytest.approx(1.0)  # std / sqrt(2 paired seeds)
    assert float(c["gain_last_top1_cnn_mean"]) == pytest.approx(2.0)  # diffs 3 and 1
    assert float(c["time_ratio"]) == pytest.approx(26.0 / 20.0)
    assert float(c["exemplars_per_class_mean"]) == pytest.approx(8.0)
    assert float(c["memory_use"]) == pytest.approx(0.9)
    md = (tmp_path / "summary.md").read_text()
    assert "+6.00 ± 1.00" in md and "| 1.30 |" in md and "standard error" in md
    for name in ("curves.png", "memory.png"):
        data = written[name].read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    assert "exemplars.png" not in written  # no exemplars.pt in the fabricated runs


def test_report_draws_old_vs_new_and_the_accuracy_matrix(tmp_path):
    for variant, cim in (("baseline", False), ("cim", True)):
        for seed in (1, 2):
            run_dir = tmp_path / "icarl_x" / variant / f"seed_{seed}"
            res = fake_results(run_dir, seed=seed, cim=cim)
            res["accuracy_matrix_cnn"] = [[60.0, None], [20.0 + seed, 60.0 - seed]]
            (run_dir / "results.json").write_text(json.dumps(res))
    written = report.build_report(tmp_path, dataset_loader=lambda config: None)
    for name in ("old_new.png", "accuracy_matrix.png"):
        assert written[name].read_bytes().startswith(PNG)
    md = (tmp_path / "summary.md").read_text()
    assert "](old_new.png)" in md and "](accuracy_matrix.png)" in md


def test_single_seed_has_no_std_and_empty_folder_gives_a_stub(tmp_path):
    assert stats.mean_std([3.0]) == (3.0, pytest.approx(float("nan"), nan_ok=True), 1)
    assert stats.fmt(*stats.mean_std([3.0])[:2]) == "3.00"
    assert stats.fmt(float("nan")) == "—"
    written = report.build_report(tmp_path)
    assert "No finished run" in written["summary.md"].read_text()


SYN = {"dataset": "synthetic", "model_name": "icarl", "synthetic_image_size": 32, "synthetic_num_classes": 6,
       "synthetic_train_per_class": 6, "synthetic_test_per_class": 6}


def _cim_artifacts(run_dir, idata, order, boxes_fn, counts):
    """exemplars.pt, memory.pt and predictions.npz of a fabricated CIM run (first `counts[k]` train
    images of the class with incremental id k)."""
    targets = np.asarray(idata.train_targets)
    labels, sources = [], []
    memory = CompressedMemory(10 ** 7, 4.0)
    for k, n in enumerate(counts):
        src = np.where(targets == order[k])[0][:n]
        images = torch.from_numpy(idata.train_data[src]).permute(0, 3, 1, 2).contiguous()
        memory.select_class(images, torch.eye(n, 8), boxes_fn(src), k, 10 ** 6)
        labels += [k] * n
        sources += src.tolist()
    source = torch.tensor(sources)
    torch.save({"labels": torch.tensor(labels), "source_index": source, "boxes": memory.boxes.long(),
                "cam_index": torch.arange(len(labels)), "cams": torch.rand(len(labels), 32, 32).half()},
               run_dir / "exemplars.pt")
    memory.save(run_dir / "memory.pt")


def test_object_size_tables_box_iou_and_exemplar_grid(tmp_path):
    idata = sizes.load_dataset(SYN)
    info = sizes.size_info(idata)
    assert info is not None and info.thresholds[0] < info.thresholds[1]
    order = np.array([3, 0, 5, 1, 4, 2])  # incremental id -> original label
    groups = np.array([info.class_group[int(c)] for c in order])
    counts = [int(2 + 2 * g) for g in groups]  # small 2, medium 4, large 6 per class
    test_targets = np.asarray(idata.test_targets)
    inv = np.argsort(order)
    test_index = np.concatenate([np.where(test_targets == order[k])[0] for k in range(6)])
    y_true = inv[test_targets[test_index]]
    assert np.bincount(groups, minlength=3).tolist() == [2, 2, 2]  # terciles of 6 class sizes
    small = groups[y_true] == 0
    y_pred = np.where(small, y_true, (y_true + 1) % 6)  # right exactly on the small-object classes
    true_boxes = torch.as_tensor(idata.train_boxes)
    modes = {"cim-cam": lambda src: true_boxes[src],
             "cim-center": lambda src: torch.tensor([[0, 0, 32, 32]] * len(src))}
    for variant, boxes_fn in {"baseline": None, **modes}.items():
        run_dir = tmp_path / "icarl_syn" / variant / "seed_1"
        cfg = dict(SYN, cim_mask=variant[4:]) if boxes_fn else SYN
        fake_results(run_dir, cim=boxes_fn is not None, counts=counts if boxes_fn else [3] * 6, config=cfg,
                     top1=(50.0, 50.0, 50.0))
        np.savez(run_dir / "predictions.npz", y_pred=y_pred, y_true=y_true, test_index=test_index, class_order=order)
        if boxes_fn:
            _cim_artifacts(run_dir, idata, order, boxes_fn, counts)

    runs = tables.collect_runs(tmp_path)
    split = sizes.size_split(runs[("icarl_syn", "cim-cam")], info)
    assert [m for m, _ in split["exemplars"]] == pytest.approx([2.0, 4.0, 6.0])
    assert split["accuracy"][0][0] == pytest.approx(100.0)
    assert split["accuracy"][1][0] == pytest.approx(0.0) and split["accuracy"][2][0] == pytest.approx(0.0)

    iou_true = sizes.box_iou_of_run(runs[("icarl_syn", "cim-cam")][1]["_dir"], idata)
    assert iou_true.iou == pytest.approx(1.0) and iou_true.box_fraction == pytest.approx(iou_true.true_fraction)
    # true boxes moved elsewhere overlap their objects less
    assert iou_true.random_iou < 0.6 and iou_true.center_iou < 0.9
    iou_full = sizes.box_iou_of_run(runs[("icarl_syn", "cim-center")][1]["_dir"], idata)
    assert iou_full.box_fraction == pytest.approx(1.0)
    assert iou_full.iou == pytest.approx(iou_full.true_fraction, abs=1e-6)  # whole image: IoU = true area fraction
    # a whole-image box has only one place: both references equal the stored boxes' IoU
    assert iou_full.random_iou == pytest.approx(iou_full.iou) and iou_full.center_iou == pytest.approx(iou_full.iou)

    written = report.build_report(tmp_path)
    md = written["summary.md"].read_text()
    assert "## By object size" in md and "terciles" in md
    assert "| icarl_syn | cim-cam | cam | 1.000 | " + stats.fmt(iou_true.random_iou, digits=3) + " | " \
        + stats.fmt(iou_true.center_iou, digits=3) + " |" in md
    assert "same-size random IoU | same-size centred IoU" in md
    data = written["exemplars.png"].read_bytes()
    assert data.startswith(PNG) and len(data) > 10000


def test_exemplar_columns_hold_original_cam_box_and_decoded(tmp_path):
    idata = sizes.load_dataset(SYN)
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    order = np.arange(6)
    _cim_artifacts(run_dir, idata, order, lambda src: torch.as_tensor(idata.train_boxes)[src], [2] * 6)
    columns, _ = bench_panels.exemplar_columns(str(run_dir), idata, n_classes=3)
    assert len(columns) == 3
    for col in columns:
        assert col["original"].shape == (3, 32, 32) and col["original"].dtype == np.uint8
        assert col["decoded"].shape == (3, 32, 32) and col["cam"].shape == (32, 32)
        np.testing.assert_array_equal(col["box"], col["true_box"])
        x0, y0, x1, y1 = col["box"]
        # inside the box the stored exemplar is lossless
        np.testing.assert_array_equal(col["decoded"][:, y0:y1, x0:x1], col["original"][:, y0:y1, x0:x1])


def test_variants_and_mask_modes():
    assert list(bench.variants_for({})) == ["baseline", "cim"]
    assert bench.variants_for({"cim_mask": "cam"})["cim-cam"] == {"cim": True, "cim_mask": "cam"}
    v = bench.variants_for({"cim_mask": "cam"}, ["random", "center", "random"])
    assert list(v) == ["baseline", "cim-random", "cim-center"]
    with pytest.raises(ConfigError, match="unknown mask mode"):
        bench.variants_for({}, ["boxes"])


# ---------------------------------------------------------------------------- orchestration
class FakeRunner:
    """Stands in for `exps/run.py`: writes a finished results.json from the run's config.json."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, spec, resume):
        self.calls.append((spec.name, resume))
        config = json.loads((spec.dir / "config.json").read_text())
        if spec.name in self.fail:
            (spec.dir / "console.log").write_text("error: something broke\n")
            return 2
        fake_results(spec.dir, cim=config["cim"], seed=config["seed"][0], aia=50.0 + 5 * config["cim"],
                     config=config)
        return 0


def _bench(paths, out, **kw):
    messages = []
    kw.setdefault("runner", FakeRunner())
    kw.setdefault("checks", pycil_checks)
    rc = bench.run_benchmark(paths, out_dir=out, echo=messages.append, warn=lambda m: messages.append("W " + m), **kw)
    return rc, messages


@requires_pycil
def test_benchmark_overrides_cim_and_refuses_foreign_folders(tmp_path):
    cfg = write_config(tmp_path / "icarl_t.json", tiny_config(cim=True))
    out = tmp_path / "bench"
    runner = FakeRunner()
    rc, messages = _bench([cfg], out, seeds=[1, 2], runner=runner)
    assert rc == 0
    assert any(m.startswith("W ") and '"cim"' in m and "overridden" in m for m in messages)
    assert len(runner.calls) == 4 and not any(r for _, r in runner.calls)
    for seed in (1, 2):
        for variant, flag in (("baseline", False), ("cim", True)):
            config = json.loads((out / "icarl_t" / variant / f"seed_{seed}" / "config.json").read_text())
            assert config["cim"] is flag and config["seed"] == [seed]
            assert {k: v for k, v in config.items() if k not in ("cim", "seed")} == \
                {k: v for k, v in tiny_config().items() if k != "seed"}
    assert any("done in" in m and "avg inc acc" in m for m in messages)
    rows = read_csv(out / "summary.csv")
    assert float(rows[("icarl_t", "cim")]["gain_aia_cnn_mean"]) == pytest.approx(5.0)

    with pytest.raises(ConfigError, match="already holds a benchmark"):
        _bench([cfg], out, seeds=[1, 2])
    (tmp_path / "other").mkdir()
    other = write_config(tmp_path / "other" / "icarl_t.json", tiny_config(epochs=3, memory_size=40))
    with pytest.raises(ConfigError, match=r"keys \['epochs', 'memory_size'\] differ"):
        _bench([other], out, seeds=[1, 2], resume=True)
    with pytest.raises(ConfigError, match="seeds"):
        _bench([cfg], out, seeds=[1, 3], resume=True)
    (tmp_path / "notbench").mkdir()
    (tmp_path / "notbench" / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds no benchmark"):
        _bench([cfg], tmp_path / "notbench", seeds=[1], overwrite=True)


@requires_pycil
def test_resume_skips_finished_runs_and_overwrite_replaces(tmp_path):
    cfg = write_config(tmp_path / "icarl_t.json", tiny_config())
    out = tmp_path / "bench"
    runner = FakeRunner(fail={"icarl_t/cim/seed_1"})
    rc, messages = _bench([cfg], out, seeds=[1], runner=runner)
    assert rc == 1 and any("FAILED (exit 2): error: something broke" in m for m in messages)
    assert "not finished" in (out / "summary.md").read_text()

    runner = FakeRunner()
    rc, messages = _bench([cfg], out, seeds=[1], runner=runner, resume=True)
    assert rc == 0 and runner.calls == [("icarl_t/cim/seed_1", True)]
    assert any("skipped" in m for m in messages)

    marker = out / "icarl_t" / "baseline" / "seed_1" / "stale.txt"
    marker.write_text("old")
    runner = FakeRunner()
    rc, _ = _bench([cfg], out, seeds=[1], runner=runner, overwrite=True)
    assert rc == 0 and len(runner.calls) == 2 and not marker.exists()


def _cli(*args, timeout=120):
    """Run exps/benchmark.py; on timeout its whole process group (the runs too) is killed."""
    proc = subprocess.Popen([sys.executable, str(REPO / "exps" / "benchmark.py"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_cli_unknown_learner_is_a_one_line_error(tmp_path):
    cfg = write_config(tmp_path / "bad.json", tiny_config(model_name="icarll"))
    result = _cli(cfg, "--out", tmp_path / "out", "--seeds", "1")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and 'unknown "model_name"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@requires_pycil
def test_tiny_end_to_end_benchmark(tmp_path):
    cfg = write_config(tmp_path / "tiny.json", tiny_config(synthetic_image_size=48, memory_size=60,
                                                           cim_mask="cam", cam_update_interval=1))
    out = tmp_path / "bench"
    result = _cli(cfg, "--out", out, "--seeds", "1993", timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = read_csv(out / "summary.csv")
    assert set(rows) == {("tiny", "baseline"), ("tiny", "cim-cam")}
    for name in ("summary.md", "curves.png", "memory.png", "exemplars.png"):
        assert (out / name).stat().st_size > 0
    text = (out / "summary.md").read_text()
    assert "## Mask boxes vs true object boxes" in text
    assert "## Where the time goes" in text
    cam_row = next(line for line in text.split("## Where the time goes")[1].splitlines()
                   if line.startswith("| tiny | cim-cam | "))  # the time table's row: one seed, 9 columns
    assert cam_row.count("|") == 10 and cam_row.split("|")[5].strip() == "0"  # mask mode "cam": no meta steps
    assert float(cam_row.split("|")[9].split()[0]) > 0 and cam_row.split("|")[9].strip().endswith("%)")  # codec
    result = _cli("--report-only", "--out", out)
    assert result.returncode == 0, result.stderr


def test_box_ious_references_match_hand_computed_values():
    true = torch.tensor([[0, 0, 2, 2]])
    ref = sizes.box_ious(true.clone(), true, (10, 10), draws=4000)
    assert ref.iou == pytest.approx(1.0) and ref.center_iou == 0.0  # centred 2x2 box misses the corner object
    # x0, y0 uniform in 0..8: IoU 1 at (0,0), 1/3 at (0,1) and (1,0), 1/7 at (1,1), else 0
    assert ref.random_iou == pytest.approx((1 + 2 / 3 + 1 / 7) / 81, rel=0.2)
    assert ref.box_fraction == pytest.approx(0.04) and ref.true_fraction == pytest.approx(0.04)
    assert sizes.box_ious(true.clone(), true, (10, 10)) == sizes.box_ious(true.clone(), true, (10, 10))  # fixed seed
    centred = torch.tensor([[3, 3, 7, 7]])
    ref = sizes.box_ious(torch.tensor([[0, 0, 4, 4]]), centred, (10, 10))
    assert ref.iou == pytest.approx(1 / 31) and ref.center_iou == pytest.approx(1.0)
    assert ref.coverage == pytest.approx(1 / 16)  # the stored box holds 1 of the object's 16 pixels
    # a whole-image stored box keeps all of the object at any place, with IoU = the object's area fraction
    whole = sizes.box_ious(torch.tensor([[0, 0, 10, 10]]), centred, (10, 10))
    assert whole.coverage == whole.random_coverage == 1.0 and whole.iou == pytest.approx(0.16)
    # an 8x8 box over a 2x2 object: IoU 4/64, object kept 1 where it sits, ~ (pixels covered) by chance
    big = sizes.box_ious(torch.tensor([[0, 0, 8, 8]]), true, (10, 10), draws=4000)
    assert big.iou == pytest.approx(4 / 64) and big.coverage == 1.0
    # x0, y0 uniform in 0..2: the object (pixels 0..1) is inside for x0 = 0, half inside for x0 = 1
    assert big.random_coverage == pytest.approx(((1 + 0.5) / 3) ** 2, rel=0.1)


def test_box_coverage_is_the_fraction_of_the_second_box_inside_the_first():
    from cim_plugin.method.masks.boxes import box_coverage
    a = torch.tensor([[0, 0, 4, 4], [0, 0, 4, 4], [5, 5, 6, 6], [0, 0, 4, 4]])
    b = torch.tensor([[2, 2, 6, 6], [1, 1, 3, 3], [0, 0, 2, 2], [2, 2, 2, 2]])
    assert box_coverage(a, b).tolist() == [0.25, 1.0, 0.0, 0.0]  # last: empty object box
    assert box_coverage(b[:1], a[:1]).item() == 0.25
    with pytest.raises(ValueError, match="box_coverage is elementwise"):
        box_coverage(a, b[:2])


# ------------------------------------------------------------------- folder dataset (tinyimagenet)
def tiny_imagenet_tree(root, n_classes=4, train_per_class=10, val_per_class=4, size=32, seed=0):
    """A small tiny-imagenet-200 folder (wnids.txt, train/<wnid>/images/ + <wnid>_boxes.txt,
    val/images/ + val_annotations.txt) whose images hold one class-coloured rectangle on noise, with its
    true (inclusive) box in the annotation files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    wnids = [f"n{1000 + k:08d}" for k in range(n_classes)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours = rng.integers(0, 256, (n_classes, 3))

    def draw(path, k):
        img = rng.integers(0, 256, (size, size, 3)).astype(np.uint8) // 2
        w, h = rng.integers(size // 4, size // 2 + 1, 2)
        x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
        img[y0:y0 + h, x0:x0 + w] = colours[k]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, format="JPEG", quality=95)
        return f"{x0}\t{y0}\t{x0 + w - 1}\t{y0 + h - 1}"

    val_lines = []
    for k, w in enumerate(wnids):
        lines = []
        for j in range(train_per_class):
            name = f"{w}_{j}.JPEG"
            lines.append(f"{name}\t{draw(root / 'train' / w / 'images' / name, k)}\n")
        (root / "train" / w / f"{w}_boxes.txt").write_text("".join(lines))
        for j in range(val_per_class):
            name = f"val_{k}_{j}.JPEG"
            val_lines.append(f"{name}\t{w}\t{draw(root / 'val' / 'images' / name, k)}\n")
    (root / "val" / "val_annotations.txt").write_text("".join(val_lines))
    return wnids


def test_class_names_is_a_list_on_every_dataset(tmp_path):
    from cim_plugin.datasets import build_idata

    syn = sizes.load_dataset(SYN)
    assert isinstance(syn.class_names, list) and len(syn.class_names) == 6
    wnids = tiny_imagenet_tree(tmp_path, n_classes=3, train_per_class=2, val_per_class=1, size=16)
    tiny = build_idata("tinyimagenet", {"data_root": str(tmp_path)})
    tiny.download_data()
    for idata, names in ((syn, syn.class_names), (tiny, wnids)):
        assert bench_panels.class_names_of(idata) == names
    assert bench_panels.class_names_of(None) is None

    class Broken:
        def class_names(self):
            return ["a"]

    with pytest.raises(TypeError, match="must be a list"):
        bench_panels.class_names_of(Broken())


@requires_pycil
def test_benchmark_report_on_a_folder_dataset_with_true_boxes(tmp_path):
    data = tmp_path / "tiny-imagenet-200"
    wnids = tiny_imagenet_tree(data)
    config = {k: v for k, v in tiny_config(dataset="tinyimagenet", data_root=str(data), init_cls=2, increment=2,
                                           memory_size=8, memory_per_class=2, cam_update_interval=1).items()
              if not k.startswith("synthetic_")}  # 1 seed, 2 phases, 1 epoch each
    cfg = write_config(tmp_path / "tiny_folder.json", config)
    out = tmp_path / "bench"
    result = _cli(cfg, "--out", out, "--seeds", "1993", timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = read_csv(out / "summary.csv")
    assert set(rows) == {("tiny_folder", "baseline"), ("tiny_folder", "cim")}
    md = (out / "summary.md").read_text()
    assert "could not be loaded" not in md and "## Results" in md
    assert "## By object size" in md and "## Mask boxes vs true object boxes" in md
    iou_rows = [line for line in md.splitlines() if line.startswith("| tiny_folder | cim | cim |")]
    assert len(iou_rows) == 1
    cells = [c.strip() for c in iou_rows[0].strip("|").split("|")]
    # IoU, its 2 references, object kept and its random reference, 2 areas
    assert len(cells) == 11 and all(0.0 <= float(c) <= 1.0 for c in cells[3:10])
    for name in ("curves.png", "memory.png", "exemplars.png"):
        data_ = (out / name).read_bytes()
        assert data_.startswith(PNG) and len(data_) > 5000, name
    assert "![stored exemplars" in md
    columns, _ = bench_panels.exemplar_columns(str(out / "tiny_folder" / "cim" / "seed_1993"),
                                               sizes.load_dataset(config))
    assert columns and all(col["title"].split("\n")[0] in wnids for col in columns)  # the wnids name the columns
    assert all(col["true_box"] is not None and col["original"].shape == (3, 32, 32) for col in columns)


def test_jobs_run_specs_side_by_side_and_report_failures_in_plan_order(tmp_path):
    """--jobs N: N runs at once (seen by a fake runner that records the overlap); failures keep plan order."""
    import threading
    import time as _time

    specs = [bench.RunSpec("c", "baseline" if k % 2 == 0 else "cim", k // 2, {"seed": [k // 2]},
                        tmp_path / f"run_{k}") for k in range(6)]
    running, peak, lock = [0], [0], threading.Lock()

    def runner(spec, resume):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        _time.sleep(0.05)
        with lock:
            running[0] -= 1
        if spec.dir.name in ("run_1", "run_4"):
            return 1
        (spec.dir / "results.json").write_text(json.dumps({"finished": True, "phases": [], "wall_s": 1.0}))
        return 0

    lines = []
    failed = bench.execute_runs(specs, False, runner, lines.append, jobs=2)
    assert peak[0] == 2
    assert [s.dir.name for s in failed] == ["run_1", "run_4"]
    assert sum("started" in ln for ln in lines) == 6
    with pytest.raises(ConfigError, match="--jobs"):
        bench.run_benchmark(["x.json"], jobs=0)


def test_interrupted_parallel_benchmark_stops_its_runs(tmp_path, monkeypatch):
    """With --jobs, an interrupt (it reaches the main thread only) cancels queued runs and terminates the
    ones in flight: no run goes on training after the benchmark is gone."""
    import subprocess
    import sys as _sys

    started = []

    def runner(spec, resume):
        proc = subprocess.Popen([_sys.executable, "-c", "import time; time.sleep(60)"])
        with execute._LIVE_LOCK:
            execute._LIVE.add(proc)
        started.append(proc)
        try:
            return proc.wait()
        finally:
            with execute._LIVE_LOCK:
                execute._LIVE.discard(proc)

    specs = [bench.RunSpec("c", "baseline", k, {"seed": [k]}, tmp_path / f"run_{k}") for k in range(5)]
    import signal
    import threading
    import time as _time

    def interrupting_echo(line, calls=[0]):
        calls[0] += 1
        if calls[0] == 2:  # both workers are starting a run: Ctrl-C while the main thread waits
            # delivered to the timer's thread, not the main one: the worst case of a process-wide Ctrl-C,
            # which the kernel may hand to any thread; the main thread must still notice it promptly
            threading.Timer(0.5, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT)).start()

    monkeypatch.setattr(execute, "_STOP", threading.Event())
    # A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored: give this process
    # the handler an interactive Ctrl-C meets (KeyboardInterrupt), whatever the suite was started from.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    # Python runs a signal's handler at the main thread's next bytecode; if a garbage collection of an
    # earlier test's objects ran a __del__ just then, the KeyboardInterrupt would be raised (and swallowed)
    # inside that __del__ rather than in execute_runs. Collect first and keep the collector off meanwhile.
    import gc
    gc.collect()
    gc.disable()
    start = _time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            bench.execute_runs(specs, False, runner, interrupting_echo, jobs=2)
    finally:
        gc.enable()
        signal.signal(signal.SIGINT, previous)
    assert _time.perf_counter() - start < 30, "the interrupt waited for the runs to end"
    assert len(started) == 2
    assert all(p.poll() is not None for p in started), "a run was left running"


def test_old_and_new_class_accuracy_per_phase():
    """The report's old/new table: old = mean of the earlier tasks' accuracies in the matrix row, new = the
    phase's own task, averaged over seeds; box fraction and exemplars per class carried along."""
    def run(matrix, box):
        phases = [{"exemplars_per_class": {"mean": 10.0 - i}, "mean_box_fraction": box} for i in range(len(matrix))]
        return {"accuracy_matrix_cnn": matrix, "phases": phases}

    groups = {("c", "cim"): {1: run([[50.0, None, None], [20.0, 60.0, None], [10.0, 30.0, 70.0]], 0.2),
                             2: run([[40.0, None, None], [30.0, 50.0, None], [20.0, 10.0, 50.0]], 0.4)}}
    rows = tables.old_new_rows(groups, [("c", "cim")])
    assert [r["phase"] for r in rows] == [0, 1, 2]
    assert math.isnan(rows[0]["old"][0]) and rows[0]["new"][0] == pytest.approx(45.0)
    assert rows[1]["old"][0] == pytest.approx(25.0) and rows[1]["new"][0] == pytest.approx(55.0)
    assert rows[2]["old"][0] == pytest.approx((20.0 + 15.0) / 2) and rows[2]["new"][0] == pytest.approx(60.0)
    assert rows[2]["exemplars_per_class"][0] == pytest.approx(8.0) and rows[2]["box_fraction"][0] == pytest.approx(0.3)
    text = "\n".join(tables.old_new_section(groups, [("c", "cim")]))
    assert "| c | cim | 2 | 17.50 ± 3.54 | 60.00 ± 14.14 | 8.0 ± 0.0 | 0.300 ± 0.141 |" in text


def test_recency_table_counts_where_old_and_new_test_images_go(tmp_path):
    """After the last phase (ids below the classes known before it are old): old top-1, old images predicted as
    a new class, new top-1, new predicted as old, in %, mean ± std over the runs that have predictions.npz."""
    from cim_plugin.bench.recency import recency_rows, recency_section, recency_split

    split = recency_split(np.array([0, 1, 2, 3, 4, 5]), np.array([0, 4, 5, 3, 1, 5]), known=4)
    assert split == {"old_top1": 50.0, "old_to_new": 50.0, "new_top1": 50.0, "new_to_old": 50.0}
    y_true = np.array([0, 0, 1, 1, 2, 2])
    for seed, y_pred in ((1, [0, 2, 1, 1, 2, 2]), (2, [2, 2, 2, 1, 2, 0])):
        res = fake_results(tmp_path / "c" / "cim" / f"seed_{seed}", seed=seed, cim=True)
        np.savez(tmp_path / "c" / "cim" / f"seed_{seed}" / "predictions.npz", y_true=y_true, y_pred=np.array(y_pred),
                 test_index=np.arange(6), class_order=np.arange(3))
        assert res["phases"][-2]["classes"] == 2  # fake_results: 2 classes per phase, two phases
    fake_results(tmp_path / "c" / "baseline" / "seed_1", seed=1)  # no predictions.npz: left out
    groups = tables.collect_runs(tmp_path)
    rows = recency_rows(groups, [("c", "baseline"), ("c", "cim")])
    assert len(rows) == 1 and rows[0]["seeds"] == 2
    # seed 1: old 3/4 right, 1/4 called new, new all right; seed 2: old 1/4 right, 3/4 called new, new 1/2 called old
    assert rows[0]["old_top1"] == pytest.approx((50.0, math.sqrt(2 * 25.0 ** 2)))
    assert rows[0]["old_to_new"][0] == pytest.approx(50.0) and rows[0]["new_top1"][0] == pytest.approx(75.0)
    assert rows[0]["new_to_old"][0] == pytest.approx(25.0)
    text = "\n".join(recency_section(groups, [("c", "baseline"), ("c", "cim")]))
    assert "| c | cim | 2 | " in text and "| c | baseline |" not in text


def test_time_table_splits_each_run_into_its_parts():
    """Per run the phases are summed: epochs = train_s - meta - refresh, rest = wall - train_s - build;
    mean ± std over seeds. The baseline (no CIM seconds) is all epochs and rest."""
    from cim_plugin.bench.time_split import time_rows, time_section

    def run(walls, trains, seconds):
        return {"phases": [{"wall_s": w, "train_s": t, "seconds": s} for w, t, s in zip(walls, trains, seconds)]}

    cim_s = {"meta_steps": 3.0, "box_refresh": 1.0, "memory_build": 2.0, "codec": 0.5}
    groups = {("c", "baseline"): {1: run([10, 20], [8, 15], [None, None]), 2: run([12, 20], [10, 15], [None, None])},
              ("c", "cim"): {1: run([20, 30], [15, 20], [cim_s, cim_s]), 2: run([22, 30], [17, 20], [cim_s, cim_s])}}
    rows = {r["variant"]: r for r in time_rows(groups, [("c", "baseline"), ("c", "cim")])}
    assert rows["baseline"]["epochs"][0] == pytest.approx(24.0) and rows["baseline"]["rest"][0] == pytest.approx(7.0)
    assert rows["baseline"]["wall"] == pytest.approx((31.0, math.sqrt(2)))
    cim = rows["cim"]
    assert cim["epochs"][0] == pytest.approx(36 - 8) and cim["meta_steps"] == pytest.approx((6.0, 0.0))
    assert cim["box_refresh"][0] == pytest.approx(2.0) and cim["memory_build"][0] == pytest.approx(4.0)
    assert cim["rest"][0] == pytest.approx(51 - 36 - 4)
    assert cim["codec"] == pytest.approx((1.0, 0.0)) and cim["codec_share"] == pytest.approx(0.5 / 20)
    text = "\n".join(time_section(groups, [("c", "baseline"), ("c", "cim")]))
    assert "| c | cim | 51 ± 1 | 28 ± 1 | 6 ± 0 | 2 ± 0 | 4 ± 0 | 11 ± 0 | 1.0 ± 0.0 (2.5 %) |" in text
    assert "| c | baseline | 31 ± 1 | 24 ± 1 | 0 ± 0 | 0 ± 0 | 0 ± 0 | 7 ± 0 |  |" in text
    # the round of meta steps after the last epoch (meta_after_training) is outside train_s: out of the rest
    after = {**cim_s, "meta_after_training": 1.0}
    split = time_rows({("c", "cim"): {1: run([20], [15], [after])}}, [("c", "cim")])[0]
    assert split["epochs"][0] == pytest.approx(15 - 2 - 1) and split["meta_steps"][0] == pytest.approx(3.0)
    assert split["rest"][0] == pytest.approx(20 - 15 - 2 - 1)
    # a training loop that was not timed (train_s 0, or less than the meta steps in it): epochs and rest unknown
    untimed = {("c", "cim"): {1: run([20, 30], [0, 0], [cim_s, cim_s]), 2: run([22, 30], [1, 1], [cim_s, cim_s])}}
    assert "| c | cim | 51 ± 1 | — | 6 ± 0 | 2 ± 0 | 4 ± 0 | — | 1.0 ± 0.0 (2.5 %) |" in "\n".join(
        time_section(untimed, [("c", "cim")]))


@requires_pycil
def test_codec_signature_reads_each_jpeg_runs_final_network(tmp_path):
    """exps/analysis/codec_signature.py on a finished JPEG benchmark: its clean-image numbers are the run's own
    last-phase top-1 (same network, transform and class order), and it covers every JPEG run."""
    cfg = write_config(tmp_path / "tiny.json", tiny_config(jpeg_quality=50, init_epoch=6, epochs=3, init_lr=0.02,
                                                           lrate=0.02, init_milestones=[5], milestones=[2]))
    out = tmp_path / "bench"
    result = _cli(cfg, "--out", out, "--seeds", "1993", "--mask-modes", "full", "--codecs", "jpeg", timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    sig = subprocess.run([sys.executable, str(REPO / "exps" / "analysis" / "codec_signature.py"), str(out / "tiny")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert sig.returncode == 0, sig.stderr[-2000:]
    rows = [[c.strip() for c in line.split("|")] for line in sig.stdout.splitlines()[1:]]
    assert [r[1] for r in rows] == ["clean", "whole-image JPEG", "low-res JPEG"]
    assert all(r[0] == "cim-full-jpeg 1993" for r in rows)
    old, new = float(rows[0][2]), float(rows[0][3])
    run = json.loads((out / "tiny" / "cim-full-jpeg" / "seed_1993" / "results.json").read_text())
    last = run["accuracy_matrix_cnn"][-1]  # per task: 5 classes of 8 test images each
    assert 0 < new < 100 and old > 0  # a network that learnt something, so a wrong transform would show
    assert old == pytest.approx((last[0] + last[1]) / 2, abs=0.1) and new == pytest.approx(last[2], abs=0.1)


def test_variant_against_variant_pairs_by_seed_within_a_config_and_across_configs(tmp_path):
    """Two CIM variants of one config, and one variant under two configs, are compared paired by seed:
    per-seed differences, mean ± s.e.; a baseline is never a side, nor a pair of different variants
    under different configs, nor a pair that shares fewer than two seeds."""
    from cim_plugin.bench import pairs

    aia = {("c", "cim-cim-jpeg"): {1: 60.0, 2: 64.0, 3: 59.0}, ("c", "cim-full-jpeg"): {1: 62.0, 2: 61.0, 3: 60.0},
           ("c_aug", "cim-cim-jpeg"): {1: 66.0, 2: 65.0, 3: 61.0}, ("d", "cim-cim-jpeg"): {1: 1.0}}
    for stem in ("c", "c_aug"):
        for seed in (1, 2, 3):
            fake_results(tmp_path / stem / "baseline" / f"seed_{seed}", seed=seed, aia=40.0)
    for (stem, variant), by_seed in aia.items():
        for seed, value in by_seed.items():
            fake_results(tmp_path / stem / variant / f"seed_{seed}", seed=seed, aia=value, last=value - 10, cim=True)
    groups = tables.collect_runs(tmp_path)
    order = tables.run_order(groups, None)
    rows = {(r["a"], r["b"]): r for r in pairs.pair_rows(groups, order)}
    assert set(rows) == {(("c", "cim-cim-jpeg"), ("c", "cim-full-jpeg")),
                         (("c", "cim-cim-jpeg"), ("c_aug", "cim-cim-jpeg"))}
    within = rows[(("c", "cim-cim-jpeg"), ("c", "cim-full-jpeg"))]["avg_incremental_accuracy_cnn"]
    assert within["diffs"] == [-2.0, 3.0, -1.0] and within["mean"] == pytest.approx(0.0)
    assert within["se"] == pytest.approx(math.sqrt(7.0) / math.sqrt(3.0))  # std of (-2, 3, -1) is sqrt(7)
    across = rows[(("c", "cim-cim-jpeg"), ("c_aug", "cim-cim-jpeg"))]["avg_incremental_accuracy_cnn"]
    assert across["diffs"] == [-6.0, -1.0, -2.0]
    report.build_report(tmp_path, dataset_loader=lambda config: None)
    md = (tmp_path / "summary.md").read_text()
    assert "## Variant against variant" in md
    assert "| cim-cim-jpeg (c) | cim-full-jpeg | 3 | +0.00 ± 1.53 | −2.00, +3.00, −1.00 |" in md
    assert "| c / cim-cim-jpeg | c_aug / cim-cim-jpeg | 3 | −3.00 ± 1.53 |" in md


def test_report_says_where_the_runs_ran_and_which_pairs_mix_platforms(tmp_path):
    """Each run's platform (software, processor and instruction set, threads) is counted in the report, and a
    CIM run whose baseline of the same seed ran elsewhere is named: its paired gain mixes two platforms."""
    from cim_plugin.bench.platforms import mixed_pairs, run_platform
    from cim_plugin.platform_info import numerics_key, platform_info

    here = platform_info()
    json.dumps(here)  # JSON-able as written into results.json
    other = dict(here, cpu="Other CPU", cpu_capability="AVX512")
    assert numerics_key(here) != numerics_key(other) and numerics_key(None) == "unknown"
    for seed, (base_host, cim_host) in {1: (here, here), 2: (here, other), 3: (None, None)}.items():
        for variant, host, aia in (("baseline", base_host, 40.0), ("cim", cim_host, 45.0)):
            path = tmp_path / "icarl_x" / variant / f"seed_{seed}"
            res = fake_results(path, seed=seed, aia=aia, cim=variant == "cim")
            if host is not None:
                res["platform"] = host
            (path / "results.json").write_text(json.dumps(res))
    report.build_report(tmp_path, dataset_loader=lambda config: None)
    md = (tmp_path / "summary.md").read_text()
    section = md[md.index("## Where the runs ran"):]
    assert f"| {numerics_key(here)} | 3 |" in section and f"| {numerics_key(other)} | 1 |" in section
    assert "| unknown | 2 |" in section
    assert "Runs from 3 platforms" in section and "icarl_x/cim/seed_2" in section
    assert "seed_1" not in section and "seed_3" not in section
    groups = {("icarl_x", "baseline"): {1: {"platform": here}}, ("icarl_x", "cim"): {1: {"platform": here}}}
    order = list(groups)
    assert mixed_pairs(groups, order) == []
    groups[("icarl_x", "cim")][1]["resumed_on"] = [other]  # phases from two platforms
    assert run_platform(groups[("icarl_x", "cim")][1]).endswith("resumed on 1 other(s)")
    assert mixed_pairs(groups, order) == ["icarl_x/cim/seed_1"]
