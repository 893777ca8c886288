"""JPEG exemplars ("exemplar_codec": "jpeg") and whole-image boxes ("cim_mask": "full"): the stream split
with tables held once, real encoded bytes within budget, exact save/load, decoded quality, config errors,
and end-to-end iCaRL runs."""

import io
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import requires_pycil, tiny_config

from cim_plugin.config import ConfigError, validate_cim_keys, with_defaults
from cim_plugin.method.codec.jpeg import encode_streams, join_streams, split_streams, table_header
from cim_plugin.method.codec.raw import downsample, lowres_size, upsample
from cim_plugin.method.herding import herding_order
from cim_plugin.method.memory import CompressedMemory, load_memory, make_memory, memory_from_state
from cim_plugin.method.memory.jpeg import JpegMemory

H = W = 32


def _images(n, seed=0, size=H):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _smooth(n, size=64):
    """Smooth uint8 images (3, size, size): low-frequency gradients and sinusoids."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for k in range(n):
        chans = [0.5 + 0.4 * torch.sin(2 * math.pi * (x * (1 + k % 3) + y * c / 2 + k / 7)) for c in range(3)]
        out.append((torch.stack(chans) * 255).round().clamp(0, 255).to(torch.uint8))
    return torch.stack(out)


def _boxes(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 16, (n,), generator=g)
    y0 = torch.randint(0, 16, (n,), generator=g)
    w = torch.randint(4, 17, (n,), generator=g)
    h = torch.randint(4, 17, (n,), generator=g)
    return torch.stack([x0, y0, x0 + w, y0 + h], 1)


def _psnr(a, b):
    mse = ((a.double() - b.double()) ** 2).mean()
    return float(10 * torch.log10(255.0**2 / mse))


# ------------------------------------------------------------------------------------ streams
@pytest.mark.parametrize("quality", [1, 50, 90, 100])
def test_split_and_join_rebuild_the_exact_streams(quality):
    g = torch.Generator().manual_seed(quality)
    images = [torch.randint(0, 256, (3, int(h), int(w)), dtype=torch.uint8, generator=g)
              for h, w in torch.randint(1, 70, (12, 2), generator=g)]
    streams = encode_streams(images, quality)
    header = table_header(quality)
    scans = split_streams(streams, header)
    assert all(s.numel() == f.numel() - header.numel() - 2 for s, f in zip(scans, streams))
    rebuilt = join_streams(header, scans, [tuple(im.shape[1:]) for im in images])
    assert all(torch.equal(a, b) for a, b in zip(rebuilt, streams))


def test_a_stream_of_another_quality_is_refused():
    stream = encode_streams([_images(1)[0]], 50)
    with pytest.raises(ValueError, match="other tables"):
        split_streams(stream, table_header(75))


# ------------------------------------------------------------------------------------ the memory
def _filled(n=24, quality=75, budget=10**6, label=0):
    mem = JpegMemory(budget, 4.0, quality=quality)
    images, boxes = _images(n), _boxes(n)
    feats = torch.randn(n, 8, generator=torch.Generator().manual_seed(2))
    kept = mem.select_class(images, feats, boxes, label, budget)
    return mem, images, boxes, feats, kept


def _real_costs(images, boxes, quality):
    """Bytes of each exemplar's scans (full streams less header and EOI), encoded one by one, + its box."""
    header = table_header(quality)
    costs = []
    for im, b in zip(images, boxes.tolist()):
        x0, y0, x1, y1 = b
        low = downsample(im[None], 4.0)
        parts = encode_streams([low[0], im[:, y0:y1, x0:x1]], quality)
        costs.append(sum(p.numel() - header.numel() - 2 for p in parts) + 8)
    return torch.tensor(costs)


def test_the_header_is_stored_once_and_bytes_are_the_stored_streams():
    mem, images, boxes, _, kept = _filled()
    assert kept == len(images) and isinstance(mem, JpegMemory)
    header = mem.shared_nbytes
    assert header == table_header(75).numel() > 500  # ~600 bytes of tables
    per_exemplar = mem.exemplar_nbytes()
    assert mem.nbytes == int(per_exemplar.sum()) + header == mem.state_dict()["payload"].numel() + 8 * kept + header
    full_streams = sum(s.numel() for s in encode_streams(
        [im[:, y0:y1, x0:x1] for im, (x0, y0, x1, y1) in zip(images, boxes.tolist())], 75))
    assert mem.nbytes < full_streams  # the crops' full streams alone, each with its own tables, weigh more
    assert sum(mem.nbytes_per_class().values()) + header == mem.nbytes


def test_budget_fitting_uses_the_real_encoded_sizes():
    images, boxes = _images(24), _boxes(24)
    feats = torch.randn(24, 8, generator=torch.Generator().manual_seed(2))
    costs = _real_costs(images, boxes, 75)
    assert costs.unique().numel() > 5  # exemplars differ in size
    order = herding_order(feats, 24)
    cum = torch.cumsum(costs[order], 0)
    budget = int(cum[9]) + 1  # room for 10 exemplars in herding order, not 11
    mem = JpegMemory(10**6, 4.0, quality=75)
    assert mem.select_class(images, feats, boxes, 0, budget) == 10
    assert torch.equal(mem.exemplar_nbytes(), costs[order[:10]])
    assert int(mem.nbytes_per_class()[0]) <= budget < int(cum[10])
    mem.reduce(int(cum[4]))  # shrinking keeps the herding prefix that fits
    assert mem.counts() == {0: 5} and torch.equal(mem.exemplar_nbytes(), costs[order[:5]])


def test_bytes_held_never_exceed_the_budget():
    images, boxes = _images(24), _boxes(24)
    feats = torch.randn(24, 8)
    mem = JpegMemory(4000, 4.0, quality=75)
    share = (4000 - mem.shared_nbytes) // 2
    mem.select_class(images[:12], feats[:12], boxes[:12], 0, share)
    mem.select_class(images[12:], feats[12:], boxes[12:], 1, share)
    assert mem.nbytes <= 4000
    with pytest.raises(ValueError, match="budget"):
        mem.select_class(images, feats, boxes, 2, 4000)  # would bring the memory over its budget
    assert mem.nbytes <= 4000 and sorted(mem.counts()) == [0, 1]


def test_save_and_load_round_trip_the_streams_exactly(tmp_path):
    mem, images, boxes, feats, _ = _filled(quality=60)
    mem.select_class(images[:8], feats[:8], boxes[:8], 1, 10**5)
    mem.reduce({0: 3000, 1: 1500})  # compacts the payload
    state = mem.state_dict()
    mem.save(tmp_path / "memory.pt")
    for back in (load_memory(tmp_path / "memory.pt"), CompressedMemory.load(tmp_path / "memory.pt")):
        assert isinstance(back, JpegMemory) and back.quality == 60
        for key, value in back.state_dict().items():
            assert torch.equal(value, state[key]) if isinstance(value, torch.Tensor) else value == state[key], key
        assert back.nbytes == mem.nbytes and back.counts() == mem.counts()
        assert torch.equal(back.decode(range(len(back))), mem.decode(range(len(mem))))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    again = memory_from_state(torch.load(buf, weights_only=True))
    assert torch.equal(again.decode(range(len(again))), mem.decode(range(len(mem))))
    with pytest.raises(ValueError, match="jpeg"):
        CompressedMemory(0).load_state_dict(state)  # a raw memory refuses a JPEG state
    bad = dict(state, payload=state["payload"][:-1])
    with pytest.raises(ValueError, match="payload"):
        memory_from_state(bad)


def test_what_is_herded_is_what_is_stored():
    mem, images, boxes, feats, _ = _filled()
    order = herding_order(feats, len(images))
    assert torch.equal(mem.decode(range(len(mem))), mem.compressed(images, boxes)[order])


def test_a_memory_on_another_device_encodes_on_the_cpu(monkeypatch):
    """Candidates are JPEG-encoded on the CPU whatever the memory's device: torchvision's GPU encoder writes
    4:4:4 streams with other tables, which the memory's shared header would refuse. ``"meta"`` stands in for
    a GPU here: the streams of a memory on it are byte for byte those of a CPU memory, and libjpeg saw only
    CPU images."""
    from cim_plugin.method.codec import jpeg

    seen = []
    real = jpeg.encode_jpeg

    def spy(images, quality):
        seen.extend(im.device.type for im in images)
        return real(images, quality=quality)

    monkeypatch.setattr(jpeg, "encode_jpeg", spy)
    images, boxes = _images(6), _boxes(6)
    boxes[0] = torch.tensor([0, 0, H, W])  # a whole-image box: no frame
    on_cpu = JpegMemory(10**6, 4.0, quality=60)._encode_parts(images, boxes)
    other = JpegMemory(10**6, 4.0, quality=60, device="meta")
    on_other = other._encode_parts(images, boxes)
    assert seen and set(seen) == {"cpu"}
    for a, b in zip(on_cpu, on_other):
        assert [x is None for x in a] == [x is None for x in b]
        assert all(torch.equal(x, y) for x, y in zip(a, b) if x is not None)
    streams = [s for s in on_other[0] + on_other[1] if s is not None]
    assert len(split_streams(streams, other._header)) == len(streams) == 11  # they share the CPU header


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU decode)")
def test_a_memory_on_the_gpu_stores_the_cpu_bytes_and_decodes_on_the_gpu():
    images, boxes = _images(12), _boxes(12)
    feats = torch.randn(12, 8, generator=torch.Generator().manual_seed(2))
    cpu, gpu = JpegMemory(10**6, 4.0, quality=60), JpegMemory(10**6, 4.0, quality=60, device="cuda")
    cpu.select_class(images, feats, boxes, 0, 8000)
    gpu.select_class(images.cuda(), feats, boxes, 0, 8000)
    assert gpu.nbytes == cpu.nbytes and gpu.counts() == cpu.counts()
    assert torch.equal(gpu.state_dict()["payload"], cpu.state_dict()["payload"])
    a, b = cpu.decode(range(len(cpu))), gpu.decode(range(len(gpu)))
    assert a.shape == b.shape and (a.float() - b.float()).abs().mean() < 2.0  # nvJPEG vs libjpeg IDCT/upsampling


def test_decoded_quality_at_90_on_smooth_images():
    images = _smooth(6)
    full = torch.tensor([[0, 0, 64, 64]]).repeat(6, 1)
    mem = make_memory(10**6, {"exemplar_codec": "jpeg", "jpeg_quality": 90, "cim_mask": "full"})
    feats = torch.randn(6, 4, generator=torch.Generator().manual_seed(4))
    mem.select_class(images, feats, full, 0, 10**6)
    decoded, sources = mem.decode(range(6)), images[herding_order(feats, 6)]
    assert mem.exemplar_nbytes().max() < 3 * 64 * 64 / 4  # whole images at well under a quarter of raw bytes
    psnr = [_psnr(d, im) for d, im in zip(decoded, sources)]
    assert min(psnr) > 33, psnr  # 36-42 dB measured (4:2:0 chroma on coloured sinusoids)
    # a box: the crop is a JPEG at full resolution, the rest its low-res frame (PSNR vs up(down(x)))
    mem = JpegMemory(10**6, 4.0, quality=90)
    box = torch.tensor([[16, 8, 48, 40]]).repeat(6, 1)
    out = mem.compressed(images, box)
    inside = out[:, :, 8:40, 16:48]
    assert _psnr(inside, images[:, :, 8:40, 16:48]) > 33
    ref = upsample(downsample(images, 4.0), (64, 64))
    outside = torch.ones(64, 64, dtype=torch.bool)
    outside[8:40, 16:48] = False
    assert _psnr(out[:, :, outside], ref[:, :, outside]) > 27  # 30.3 measured: a 32x32 JPEG of the low-res copy
    assert lowres_size(64, 64, 4.0) == (32, 32)


def test_full_boxes_are_implicit_and_raw_full_holds_whole_images():
    images = _images(10)
    full = torch.tensor([[0, 0, W, H]]).repeat(10, 1)
    feats = torch.randn(10, 4, generator=torch.Generator().manual_seed(3))
    mem = make_memory(10**6, {"cim_mask": "full"})
    assert type(mem) is CompressedMemory and mem.implicit_boxes
    assert mem.select_class(images, feats, full, 0, 4 * 3 * H * W) == 4  # 4 images' bytes: 4 exemplars
    assert mem.nbytes == 4 * 3 * H * W
    assert torch.equal(mem.decode(range(4)), images[herding_order(feats, 4)])  # the images themselves
    with pytest.raises(ValueError, match="whole-image"):
        mem.select_class(images, torch.randn(10, 4), _boxes(10), 1, 10**5, replace=True)
    back = memory_from_state(mem.state_dict())
    assert back.implicit_boxes and back.nbytes == mem.nbytes


# ------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("key,value,message", [
    ("exemplar_codec", "png", '"exemplar_codec" must be one of'),
    ("exemplar_codec", None, '"exemplar_codec" must be one of'),
    ("jpeg_quality", 0, '"jpeg_quality" must be an integer in [1, 100]'),
    ("jpeg_quality", 101, '"jpeg_quality" must be an integer in [1, 100]'),
    ("jpeg_quality", 75.0, '"jpeg_quality" must be an integer in [1, 100]'),
    ("jpeg_quality", "high", '"jpeg_quality" must be an integer in [1, 100]'),
    ("jpeg_quality", True, '"jpeg_quality" must be an integer in [1, 100]'),
    ("cim_mask", "whole", '"cim_mask" must be one of'),
])
def test_bad_values_of_the_new_keys_are_clear_errors(key, value, message):
    with pytest.raises(ConfigError) as err:
        validate_cim_keys(with_defaults({key: value}))
    assert message in str(err.value) and repr(value) in str(err.value)


def test_good_values_of_the_new_keys_pass():
    for extra in ({"exemplar_codec": "jpeg", "jpeg_quality": 1}, {"jpeg_quality": 100}, {"cim_mask": "full"}):
        validate_cim_keys(with_defaults(extra))
    assert with_defaults({})["exemplar_codec"] == "raw" and with_defaults({})["jpeg_quality"] == 75


# ------------------------------------------------------------------------------------ end to end
def _run(tmp_path, name, **overrides):
    """iCaRL, 10 synthetic classes in 2 phases, in-process; (results, [(memory type, bytes, budget)])."""
    from cim_plugin.pycil.runner import prepare, run_seed

    config = prepare(tiny_config(synthetic_num_classes=10, **overrides))
    seen = []

    def on_phase(learner, data_manager, results):
        memory = getattr(getattr(learner, "_cim", None), "memory", None)
        if memory is not None:
            seen.append((memory, memory.nbytes, memory.budget_bytes))

    torch.set_num_threads(1)
    path = run_seed(config, config["seed"][0], tmp_path / name, on_phase=on_phase)
    return json.loads(path.read_text()), seen


def _spy_on_herding(monkeypatch):
    """Record the images CIM feeds to the network to herd (not those of the NME class means)."""
    from cim_plugin.method.cim import CIM

    fed = []
    orig_build, orig_fwd, orig_means = CIM._build_memory, CIM._forward_chunks, CIM._class_means

    def build_spy(self, network, classes):
        self._herding = True
        try:
            return orig_build(self, network, classes)
        finally:
            self._herding = False

    def fwd_spy(self, network, images, labels, chunk=256):
        if getattr(self, "_herding", False):
            fed.append(images.clone())
        return orig_fwd(self, network, images, labels, chunk)

    def means_spy(self, network):
        self._herding = False
        return orig_means(self, network)

    monkeypatch.setattr(CIM, "_build_memory", build_spy)
    monkeypatch.setattr(CIM, "_forward_chunks", fwd_spy)
    monkeypatch.setattr(CIM, "_class_means", means_spy)
    return fed


def test_class_shares_leave_room_for_the_shared_header():
    from cim_plugin.method.cim import CIM

    cim = CIM({"exemplar_codec": "jpeg", "jpeg_quality": 75})
    cim.start_phase(0, 0, 10, budget_images=10)
    cim.image_bytes = 3 * H * W
    cim.memory = make_memory(cim.budget_bytes(), cim.config)
    assert cim.class_budget_bytes() * 10 + cim.memory.shared_nbytes <= cim.budget_bytes()
    assert cim.class_budget_bytes() >= (cim.budget_bytes() - cim.memory.shared_nbytes) // 10 - 1


@requires_pycil
def test_icarl_with_jpeg_exemplars_stays_within_budget(tmp_path, monkeypatch):
    fed = _spy_on_herding(monkeypatch)
    results, seen = _run(tmp_path, "jpeg", cim=True, cim_mask="cam", exemplar_codec="jpeg", jpeg_quality=75,
                         memory_size=10)
    monkeypatch.undo()
    base, _ = _run(tmp_path, "base", memory_size=10)
    assert results["finished"] and len(results["phases"]) == 2 and len(seen) == 2
    for (memory, nbytes, budget), phase in zip(seen, results["phases"]):
        assert isinstance(memory, JpegMemory)
        assert nbytes <= budget and phase["memory_bytes"] == nbytes <= phase["memory_budget_bytes"] == budget
        assert phase["exemplar_codec"] == "jpeg"
    # far more exemplars than the baseline's in the same bytes, and fewer than all candidates (budget binds)
    last, last_base = results["phases"][-1], base["phases"][-1]
    assert last["memory_budget_bytes"] == last_base["memory_budget_bytes"]
    assert last_base["exemplars"] < last["exemplars"] < 10 * 16
    # herding ranked the decoded JPEG candidates: every stored exemplar, decoded, is a row that was herded
    memory = seen[-1][0]
    herded = torch.cat(fed).flatten(1)
    assert all(bool((herded == row).all(1).any()) for row in memory.decode(torch.arange(len(memory))).flatten(1))
    saved = load_memory(tmp_path / "jpeg" / "memory.pt")
    assert isinstance(saved, JpegMemory) and saved.nbytes == seen[-1][1]
    assert torch.equal(saved.state_dict()["payload"], seen[-1][0].state_dict()["payload"])


@requires_pycil
def test_full_raw_holds_what_the_baseline_holds(tmp_path):
    full, seen = _run(tmp_path, "full", cim=True, cim_mask="full")
    base, _ = _run(tmp_path, "base")
    for pf, pb in zip(full["phases"], base["phases"]):
        assert pf["exemplars_per_class_counts"] == pb["exemplars_per_class_counts"]
        assert pf["memory_bytes"] == pb["memory_bytes"] == pf["memory_budget_bytes"]
        assert pf["meta_steps"] == 0 and pf["mean_box_fraction"] == 1.0
    assert all(type(m) is CompressedMemory for m, _, _ in seen)


# ------------------------------------------------------------------------------------ benchmark
def test_benchmark_gives_one_variant_per_mask_mode_and_codec():
    from cim_plugin import bench

    v = bench.variants_for({}, ["cim", "full"], ["raw", "jpeg"])
    assert list(v) == ["baseline", "cim-cim", "cim-cim-jpeg", "cim-full", "cim-full-jpeg"]
    assert v["cim-full-jpeg"] == {"cim": True, "cim_mask": "full", "exemplar_codec": "jpeg"}
    assert v["cim-cim"] == {"cim": True, "cim_mask": "cim", "exemplar_codec": "raw"}
    assert bench.variants_for({}, None, ["jpeg"]) == {"baseline": {"cim": False},
                                                       "cim-jpeg": {"cim": True, "exemplar_codec": "jpeg"}}
    assert bench.variants_for({"cim_mask": "cam"}) == {"baseline": {"cim": False},
                                                        "cim-cam": {"cim": True, "cim_mask": "cam"}}  # as before
    with pytest.raises(ConfigError, match="unknown exemplar codec 'png'"):
        bench.variants_for({}, None, ["png"])
    tmp = Path("/t")
    plan = bench.plan_runs({"x": {"path": "x.json", "config": {}}}, [1, 2], tmp, ["full"], ["raw", "jpeg"])
    assert [(r.variant, r.seed) for r in plan] == [(n, s) for s in (1, 2) for n in ("baseline", "cim-full",
                                                                                   "cim-full-jpeg")]
    assert plan[2].config["exemplar_codec"] == "jpeg" and plan[2].dir == tmp / "x" / "cim-full-jpeg" / "seed_1"


def test_the_summary_table_shows_the_codec(tmp_path):
    from test_bench_command import fake_results, read_csv

    from cim_plugin.bench import report

    fake_results(tmp_path / "x" / "baseline" / "seed_1", seed=1)
    fake_results(tmp_path / "x" / "cim-full" / "seed_1", seed=1, cim=True,
                 config={"dataset": "synthetic", "model_name": "icarl", "cim_mask": "full", "exemplar_codec": "raw"})
    fake_results(tmp_path / "x" / "cim-full-jpeg" / "seed_1", seed=1, cim=True,
                 config={"dataset": "synthetic", "model_name": "icarl", "cim_mask": "full", "exemplar_codec": "jpeg",
                         "jpeg_quality": 50})
    report.build_report(tmp_path, dataset_loader=lambda config: None)
    rows = read_csv(tmp_path / "summary.csv")
    assert [rows[("x", v)]["codec"] for v in ("baseline", "cim-full", "cim-full-jpeg")] == ["raw", "raw", "jpeg"]
    table = (tmp_path / "summary.md").read_text()
    assert "| variant | codec |" in table and "| cim-full-jpeg | jpeg q50 |" in table and "| cim-full | raw |" in table


def test_the_benchmark_command_takes_codecs():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_cli", REPO / "exps" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = cli.parser().parse_args(["c.json", "--mask-modes", "cim", "full", "--codecs", "raw", "jpeg"])
    assert args.codecs == ["raw", "jpeg"] and args.mask_modes == ["cim", "full"]
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["c.json", "--codecs", "png"])


# ------------------------------------------------------------------------------------ "auto" quality
def test_log_volume_measures_the_spread_of_the_features():
    from cim_plugin.method.memory.jpeg import log_volume

    assert log_volume(torch.eye(4) * 3) == pytest.approx(0.0, abs=1e-3)  # orthogonal rows: the largest volume
    spread = log_volume(torch.eye(4) + 0.5)
    assert log_volume(torch.ones(4, 4) + 0.01 * torch.eye(4)) < spread < 0  # near-equal rows: almost no volume


def _pixel_features(images, labels):
    """A "model" that sees 8x8 pixels: JPEG's losses show up in its features."""
    return torch.nn.functional.adaptive_avg_pool2d(images.double(), 8).flatten(1) - 128


@pytest.mark.parametrize("tolerance", [0.0, 0.05, 0.2, 1e9, -1e9])
def test_auto_quality_takes_the_lowest_quality_within_the_tolerance(tolerance):
    from cim_plugin.method.memory.jpeg import choose_quality

    images = _smooth(12, size=32)
    classes = [(c, images[6 * c:6 * c + 6], _boxes(6, seed=c)) for c in range(2)]
    grid = (10, 30, 60, 90)
    out = choose_quality(classes, 2500, 2, {"compress_ratio": 4.0, "cim_mask": "cam"}, _pixel_features,
                         grid=grid, tolerance=tolerance)
    assert sorted(out["scores"]) == sorted(out["reference"]) == list(grid)
    ok = [q for q in grid if abs(out["scores"][q] - out["reference"][q]) <= tolerance * abs(out["reference"][q])]
    assert out["quality"] == (ok[0] if ok else 90)
    if tolerance == 1e9:
        assert out["quality"] == 10
    if tolerance == -1e9:
        assert out["quality"] == 90
    assert out["exemplars"][10] >= out["exemplars"][90]  # lower quality, more exemplars in the same shares
    if tolerance == 0.05:  # JPEG q10 spreads these features far more than q90 does: q90 is the one close enough
        assert out["quality"] == 90


def test_auto_is_a_valid_quality_and_other_words_are_not():
    validate_cim_keys(with_defaults({"exemplar_codec": "jpeg", "jpeg_quality": "auto"}))
    with pytest.raises(ConfigError, match='or "auto"'):
        validate_cim_keys(with_defaults({"exemplar_codec": "jpeg", "jpeg_quality": "best"}))


@requires_pycil
def test_icarl_with_auto_quality_chooses_once_and_logs_the_scores(tmp_path):
    from cim_plugin.method.memory.jpeg import QUALITY_GRID

    results, seen = _run(tmp_path, "auto", cim=True, cim_mask="cam", exemplar_codec="jpeg", jpeg_quality="auto",
                         memory_size=10)
    first, last = results["phases"]
    auto = first["jpeg_auto"]
    assert auto["quality"] in QUALITY_GRID and sorted(map(int, auto["scores"])) == list(QUALITY_GRID)
    assert first["jpeg_quality"] == last["jpeg_quality"] == auto["quality"]  # chosen on phase 0, kept
    assert seen[0][0] is seen[1][0] and seen[1][0].quality == auto["quality"]
    assert all(nbytes <= budget for _, nbytes, budget in seen)
    assert "jpeg_quality auto" in (tmp_path / "auto" / "run.log").read_text()


@pytest.mark.parametrize("mask,quality,jpeg", [("cim", 30, True), ("cam", 90, True), ("full", 30, False),
                                               ("cim", "auto", False)])
def test_compression_augmentation_trains_on_what_the_jpeg_memory_replays(mask, quality, jpeg):
    """With "exemplar_codec": "jpeg" a compression-augmented new-class image is the image as the JPEG memory
    would replay it (box crop and low-res frame through JPEG at the run's quality), not the raw codec's;
    mask mode "full" (MRDC) and "auto" before its first memory keep the raw codec's (an identity for "full")."""
    import numpy as np

    from cim_plugin.method.cim import CIM
    from cim_plugin.method.codec.raw import compress
    from cim_plugin.method.data import StoredImages

    images = _smooth(4, size=32)

    class Base:
        def __init__(self):
            self.images, self.labels, self.trsf = images, np.zeros(4, dtype=np.int64), lambda pil: pil

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return i, images[i], 0

    cim = CIM({"exemplar_codec": "jpeg", "jpeg_quality": quality, "cim_mask": mask})
    data = cim.augmented(Base(), StoredImages())
    data.boxes = torch.tensor([[8, 8, 24, 24]] * 4) if mask != "full" else torch.tensor([[0, 0, 32, 32]] * 4)
    data.prob = 1.0
    got = torch.stack([torch.from_numpy(np.asarray(data[i][1])).permute(2, 0, 1) for i in range(4)])
    raw = compress(images, data.boxes, 4.0)
    if jpeg:
        expected = JpegMemory(0, 4.0, quality=quality).compressed(images, data.boxes)
        assert torch.equal(got, expected) and not torch.equal(got, raw)
    else:
        assert torch.equal(got, raw)


@pytest.mark.parametrize("mask", ["cim", "full"])
def test_codec_augment_prob_compresses_new_images_from_the_first_epoch_with_the_memorys_codec(mask):
    """"codec_augment_prob" p: before any box refresh (boxes None, prob 0 in the official schedule) a new-class
    image is already passed through the memory's JPEG with probability p, with a whole-image box; for mask mode
    "full" (MRDC) too. The default 0 leaves the official schedule: nothing is compressed before the first refresh."""
    import numpy as np

    from cim_plugin.method.cim import CIM
    from cim_plugin.method.data import StoredImages, to_pil

    n = 64
    images = _smooth(n, size=32)

    class Base:
        def __init__(self):
            self.images, self.labels, self.trsf = images, np.zeros(n, dtype=np.int64), lambda pil: pil

        def __len__(self):
            return n

        def __getitem__(self, i):
            return i, to_pil(images[i]), 0

    def compressed_items(data):
        got = torch.stack([torch.from_numpy(np.asarray(data[i][1])).permute(2, 0, 1) for i in range(n)])
        return got, (got != images).flatten(1).any(1)

    config = {"exemplar_codec": "jpeg", "jpeg_quality": 30, "cim_mask": mask}
    official = CIM(config).augmented(Base(), StoredImages())
    assert official.boxes is None and not compressed_items(official)[1].any()
    data = CIM({**config, "codec_augment_prob": 0.5}).augmented(Base(), StoredImages())
    assert data.boxes is None and data.prob == 0.0
    got, changed = compressed_items(data)
    assert 0.25 < changed.float().mean() < 0.75  # about half, by the coins
    whole = JpegMemory(0, 4.0, quality=30).compressed(images, torch.tensor([[0, 0, 32, 32]] * n))
    assert torch.equal(got[changed], whole[changed])
    data = CIM({**config, "codec_augment_prob": 1.0}).augmented(Base(), StoredImages())
    assert compressed_items(data)[1].all()


def test_codec_augment_prob_must_be_a_probability():
    validate_cim_keys(with_defaults({"codec_augment_prob": 0.5}))
    with pytest.raises(ConfigError, match="codec_augment_prob"):
        validate_cim_keys(with_defaults({"codec_augment_prob": 1.5}))


@requires_pycil
@pytest.mark.parametrize("mask", ["full", "cim"])
def test_codec_augment_prob_end_to_end_trains_on_jpeg_coded_new_images_from_phase_0(tmp_path, monkeypatch, mask):
    """A PyCIL iCaRL run with "codec_augment_prob": 1 passes new-class training images through the memory's JPEG
    in phase 0 already (where the official schedule has compressed none: one epoch, no refresh), for MRDC
    ("full") and CIM+JPEG alike, and keeps bytes held <= budget."""
    from cim_plugin.method import cim as cim_module

    calls = []
    original = cim_module.augment_compressor

    def counting(config, memory=None):
        fn = original(config, memory)
        if fn is None:
            return None

        def wrapped(images, boxes):
            calls.append(len(images))
            return fn(images, boxes)
        return wrapped

    monkeypatch.setattr(cim_module, "augment_compressor", counting)
    results, seen = _run(tmp_path, "aug", cim=True, cim_mask=mask, exemplar_codec="jpeg", jpeg_quality=50,
                         codec_augment_prob=1.0, memory_size=10)
    assert results["finished"] and len(results["phases"]) == 2
    assert all(nbytes <= budget for _, nbytes, budget in seen)
    per_phase = results["phases"]
    assert len(calls) >= 2 * 5 * 16  # every new-class training image of both phases (5 classes x 16, 1 epoch)
    calls.clear()
    _run(tmp_path, "official", cim=True, cim_mask=mask, exemplar_codec="jpeg", jpeg_quality=50, memory_size=10)
    assert calls == [] and per_phase[0]["exemplar_codec"] == "jpeg"
