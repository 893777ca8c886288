"""The front door: `bash setup.sh` ends with `exps/demo.sh`, baseline and CIM side by side on exps/demo.json over
3 seeds, which prints the results table, the box IoU table, a reading of the numbers and the figures' paths.
The whole demo is not run here: its config is checked, its commands read, the reading tested on fixed numbers,
and the script run once on a tiny config with one seed."""

import os
import subprocess
import sys

import pytest
from conftest import REPO, requires_pycil, tiny_config, write_config

from cim_plugin.bench.reading import reading
from cim_plugin.config import load_config, validate_cim_keys, validate_run_keys, with_defaults
from cim_plugin.datasets.synthetic import SyntheticShapes

DEMO_SEEDS = "1993 1994 1995"


def test_setup_ends_with_the_side_by_side_demo():
    setup = (REPO / "setup.sh").read_text()
    demo_block = setup.split('if [ "$DEMO" = 1 ]; then', 1)[1].split("fi", 1)[0]
    assert "exps/demo.sh" in demo_block
    demo = (REPO / "exps" / "demo.sh").read_text()
    assert "exps/benchmark.py" in demo and "exps/demo.json" in demo
    assert f"SEEDS=${{DEMO_SEEDS:-{DEMO_SEEDS}}}" in demo and "--seeds $SEEDS --jobs 2" in demo
    for section in ("Results", "Old and new classes per phase", "Mask boxes vs true object boxes"):
        assert f'section "{section}"' in demo
    assert "-m cim_plugin.bench.reading" in demo


def test_demo_config_is_accepted():
    config = load_config(REPO / "exps" / "demo.json")
    assert "cim" not in config, "the benchmark runs the demo with and without CIM; a \"cim\" key would be overridden"
    assert config["model_name"] == "icarl" and config["seed"] == [int(s) for s in DEMO_SEEDS.split()]
    for cim in (False, True):  # the benchmark's two variants
        validate_run_keys(with_defaults(dict(config, cim=cim)))
        validate_cim_keys(with_defaults(dict(config, cim=cim)))
    data = SyntheticShapes.from_options(config)
    assert data.image_size == (config["synthetic_image_size"],) * 2
    assert config["synthetic_num_classes"] % config["increment"] == config["init_cls"] % config["increment"]
    assert config["memory_size"] == config["memory_per_class"] * config["synthetic_num_classes"]


def _numbers(gain_aia, gain_last, old_base=5.0, old_cim=12.0, iou=0.40):
    arm = lambda ex, old: {"exemplars_per_class": ex, "aia": 50.0, "last_top1": 30.0, "first_top1": 80.0,  # noqa: E731
                           "old_last": old}
    return {"seeds": 3, "baseline": arm(4.0, old_base), "cim": arm(8.3, old_cim), "gain_aia": gain_aia,
            "gain_last": gain_last, "chance_first": 25.0, "chance": 100 / 12,
            "iou": {"iou": iou, "random_iou": 0.10, "center_iou": 0.13}}


def test_reading_says_a_resolved_gain():
    text = reading(_numbers((4.5, 1.2), (8.0, 2.2)))
    assert "CIM holds 8.3 exemplars per class vs 4.0" in text
    assert "+4.50 ± s.e. 1.20 pts in average incremental top-1, a gain resolved from noise" in text
    assert "over 3 seeds" in text and "The baseline learns: phase-0 top-1 80.0 % (chance 25.0 %)" in text
    assert "top-1 5.0 % (baseline) vs 12.0 % (CIM), +7.0 pts" in text
    assert "cover the objects: IoU with the true object box 0.400 vs 0.100" in text and "0.130 for a same-size centred" in text


@pytest.mark.parametrize("gain, words", [((-3.0, 1.0), "-3.00 ± s.e. 1.00 pts in average incremental top-1, a loss"),
                                         ((-0.5, 1.0), "no gain (a loss within noise)"),
                                         ((0.0, 0.0), "pts in average incremental top-1, no gain"),
                                         ((0.5, 1.0), "a gain within noise")])
def test_reading_is_honest_about_no_gain_and_losses(gain, words):
    text = reading(_numbers(gain, (-1.0, 2.0), old_base=10.0, old_cim=8.0, iou=0.05))
    assert words in text and "a gain resolved from noise" not in text
    assert "-1.00 ± s.e. 2.00 pts in last top-1, no gain" in text
    assert "-2.0 pts — CIM keeps fewer of the old classes" in text
    assert "do not find the objects better than chance" in text


def test_reading_calls_a_small_old_class_difference_the_same():
    text = reading(_numbers((1.0, 2.0), (1.0, 2.0), old_base=6.5, old_cim=6.9))
    assert "+0.4 pts — about the same" in text and "keep more" not in text


def test_reading_with_one_seed_says_so():
    numbers = _numbers((1.0, 0.0), (1.0, 0.0))
    numbers["seeds"] = 1
    assert "over one seed (no s.e.)" in reading(numbers) and "over seeds" not in reading(numbers)


@requires_pycil
def test_demo_prints_the_tables_and_the_reading(tmp_path):
    cfg = write_config(tmp_path / "demo.json", tiny_config(synthetic_num_classes=10, cam_update_interval=1))
    out = tmp_path / "demo_out"
    env = dict(os.environ, DEMO_CONFIG=str(cfg), DEMO_OUT=str(out), DEMO_SEEDS="1993", PYTHON=sys.executable,
               OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", str(REPO / "exps" / "demo.sh")], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| demo |")]
    assert [line.split("|")[3].strip() for line in table][:2] == ["baseline", "cim"]
    assert "## Mask boxes vs true object boxes" in result.stdout and "same-size random IoU" in result.stdout
    assert "CIM holds" in result.stdout.split("## Reading", 1)[1] and "over one seed" in result.stdout
    for name in ("curves.png", "exemplars.png"):
        assert f"{out / name}" in result.stdout and (out / name).stat().st_size > 0
